// hubbub's operator dashboard: polls /admin/api/stats once a second and draws
// its own SVG charts of the last 15 minutes. No libraries.
"use strict";

const $ = (id) => document.getElementById(id);
const COLORS = ["#1f6feb", "#d9480f", "#2f9e44", "#9c36b5", "#e8590c", "#0c8599", "#c2255c", "#5c940d"];
const state = {samples: [], since: 0, window: 900, nodes: [], gone: [], codes: {}, scope: "cluster", now: 0};

const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));

function human(v, unit = "") {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  const a = Math.abs(v);
  const [d, s] = a >= 1e9 ? [1e9, "G"] : a >= 1e6 ? [1e6, "M"] : a >= 1e4 ? [1e3, "k"] : [1, ""];
  const x = v / d;
  const text = d === 1 && Number.isInteger(x) ? String(x) : x.toFixed(x >= 100 ? 0 : x >= 10 ? 1 : 2);
  return text + s + unit;
}

function duration(seconds) {
  const s = Math.floor(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

function niceCeil(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

// -- charts ------------------------------------------------------------------------------------

// series: [{name, color, points: [[t, v|null], ...]}]; opts: {band: [[t0, t1], ...] drawn red}
function drawChart(el, series, opts = {}) {
  const W = 600, H = 170, L = 50, R = 10, T = 8, B = 22;
  const end = state.now, start = end - state.window;
  let max = 0;
  for (const s of series) for (const [, v] of s.points) if (v !== null && v > max) max = v;
  const top = niceCeil(max);
  const x = (t) => L + ((t - start) / state.window) * (W - L - R);
  const y = (v) => T + (1 - v / top) * (H - T - B);
  const parts = [`<svg viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(opts.label || "chart")}">`];
  for (const [t0, t1] of opts.band || []) {
    parts.push(`<rect class="down" x="${x(t0).toFixed(1)}" y="${T}" width="${Math.max(3, x(t1) - x(t0)).toFixed(1)}" height="${H - T - B}"></rect>`);
  }
  for (const f of [0, 0.5, 1]) {
    const yy = y(top * f).toFixed(1);
    parts.push(`<line class="grid" x1="${L}" x2="${W - R}" y1="${yy}" y2="${yy}"></line>`);
    parts.push(`<text class="axis" x="${L - 4}" y="${(+yy + 4).toFixed(1)}" text-anchor="end">${esc(human(top * f))}</text>`);
  }
  for (const m of [15, 10, 5, 0]) {
    const xx = x(end - m * 60).toFixed(1);
    parts.push(`<text class="axis" x="${xx}" y="${H - 6}" text-anchor="${m === 0 ? "end" : m === 15 ? "start" : "middle"}">${m ? `-${m}m` : "now"}</text>`);
  }
  for (const s of series) {
    let d = "", pen = false;
    for (const [t, v] of s.points) {
      if (v === null || t < start) { pen = false; continue; }
      d += `${pen ? "L" : "M"}${x(t).toFixed(1)} ${y(v).toFixed(1)}`;
      pen = true;
    }
    parts.push(`<path class="line" stroke="${s.color}" d="${d}"></path>`);
    const last = [...s.points].reverse().find(([t, v]) => v !== null && t >= start);
    if (last) parts.push(`<circle cx="${x(last[0]).toFixed(1)}" cy="${y(last[1]).toFixed(1)}" r="2.5" fill="${s.color}"></circle>`);
  }
  parts.push("</svg>");
  const legend = series.map((s) => {
    const last = [...s.points].reverse().find(([, v]) => v !== null);
    return `<span><i style="background:${s.color}"></i>${esc(s.name)} ${esc(human(last ? last[1] : null, opts.unit || ""))}</span>`;
  });
  el.innerHTML = parts.join("") + `<div class="legend">${legend.join("") || "<span>no data yet</span>"}</div>`;
}

function point(sample) {
  return state.scope === "cluster" ? sample.cluster : sample.nodes[state.scope] || null;
}

function seriesOf(key, name, color) {
  return {name, color, points: state.samples.map((s) => { const p = point(s); return [s.t, p ? p[key] : null]; })};
}

function render() {
  const last = state.samples.length ? point(state.samples[state.samples.length - 1]) : null;
  const tile = (id, v, unit) => { const el = $(id); el.textContent = human(v, unit); el.dataset.value = v === null || v === undefined ? "" : String(v); };
  tile("value-clients", last && last.clients);
  tile("value-subs", last && last.subs);
  tile("value-pubs", last && last.pubs);
  tile("value-deliveries", last && last.deliveries);
  tile("value-bytes", last && last.bytes_out, "B");
  const broker = $("value-broker");
  const up = last ? last.broker_up : null;
  broker.textContent = up === null ? "–" : up ? (last.rtt_ms !== null ? `up, ${last.rtt_ms.toFixed(2)} ms` : "up") : "DOWN";
  broker.className = "value " + (up === null ? "" : up ? "ok" : "bad");
  broker.dataset.value = up === null ? "" : String(up);

  drawChart($("chart-connections"), [seriesOf("clients", "connections", COLORS[0]), seriesOf("subs", "subscriptions", COLORS[1])],
            {label: "connections and subscriptions"});
  drawChart($("chart-flow"), [seriesOf("pubs", "publications/s", COLORS[2]), seriesOf("deliveries", "deliveries/s", COLORS[0])],
            {label: "publications and deliveries per second"});
  drawChart($("chart-bytes"), [seriesOf("bytes_out", "bytes out/s", COLORS[3])], {label: "bytes out per second", unit: "B"});

  const codes = new Set();
  for (const s of state.samples) { const p = point(s); if (p) for (const c of Object.keys(p.disconnects || {})) codes.add(c); }
  const discSeries = [...codes].sort().map((code, i) => ({
    name: `${code} ${state.codes[code] || ""}`.trim(), color: COLORS[(i + 1) % COLORS.length],
    points: state.samples.map((s) => { const p = point(s); return [s.t, p ? (p.disconnects[code] || 0) : null]; }),
  }));
  drawChart($("chart-disconnects"), discSeries, {label: "disconnects per second by code"});

  const band = [];
  for (let i = 0; i < state.samples.length; i++) {
    const p = point(state.samples[i]);
    if (p && p.broker_up === 0) band.push([state.samples[i].t - 1, state.samples[i].t]);
  }
  const rtt = seriesOf("rtt_ms", "round trip (ms)", COLORS[5]);
  const hasRtt = rtt.points.some(([, v]) => v !== null);
  drawChart($("chart-broker"), hasRtt ? [rtt] : [], {label: "broker state and round trip", band, unit: " ms"});
  const legend = $("chart-broker").querySelector(".legend");
  if (!hasRtt) legend.innerHTML = `<span>${esc(state.broker || "")} broker: state only (no round trip to measure)</span>`;
  legend.insertAdjacentHTML("beforeend", `<span><i style="background:#f4c7c3"></i>broker down${band.length ? ` ${band.length} s` : ""}</span>`);
  renderNodes();
}

function renderNodes() {
  const rows = state.nodes.map((n) => {
    const b = n.broker || {};
    const broker = b.up === undefined ? "–" : b.up ? `up${b.rtt_ms != null ? ` ${b.rtt_ms.toFixed(2)} ms` : ""}` : "DOWN";
    const ago = state.now - n.last_seen;
    return `<tr data-uid="${esc(n.uid)}" class="${state.scope === n.uid ? "selected" : ""}">
      <td>${esc(n.name)}${n.uid === state.self ? " (this node)" : ""}</td><td>${esc(n.version)}</td><td>${esc(duration(n.uptime || 0))}</td>
      <td>${esc(n.num_clients)}</td><td>${esc(n.num_users)}</td><td>${esc(n.num_subs)}</td><td>${esc(n.num_channels)}</td>
      <td>${esc(broker)}</td><td>${ago < 2 ? "now" : esc(duration(ago)) + " ago"}</td></tr>`;
  });
  $("nodes").tBodies[0].innerHTML = rows.join("");
  $("gone-box").hidden = !state.gone.length;
  $("gone").textContent = state.gone.map((n) => `${n.name} (last seen ${duration(state.now - n.last_seen)} ago)`).join(", ");
  const scope = $("scope");
  const wanted = ["cluster", ...state.nodes.map((n) => n.uid)];
  const have = [...scope.options].map((o) => o.value);
  if (wanted.join() !== have.join()) {
    scope.innerHTML = `<option value="cluster">whole cluster (${state.nodes.length} node${state.nodes.length === 1 ? "" : "s"})</option>` +
      state.nodes.map((n) => `<option value="${esc(n.uid)}">node ${esc(n.name)}</option>`).join("");
    if (!wanted.includes(state.scope)) state.scope = "cluster";
    scope.value = state.scope;
  }
}

// -- data ----------------------------------------------------------------------------------------

async function call(url, body) {
  const init = body === undefined ? {} : {method: "POST", headers: {"content-type": "application/json"}, body: JSON.stringify(body)};
  const res = await fetch(url, {credentials: "same-origin", ...init});
  if (res.status === 401) { location.href = "/admin/login"; throw new Error("logged out"); }
  const reply = await res.json();
  return {status: res.status, reply};
}

async function poll() {
  try {
    const {status, reply} = await call(`/admin/api/stats?since=${state.since}`);
    if (status !== 200) throw new Error(reply.error || `HTTP ${status}`);
    state.now = reply.now; state.window = reply.window; state.nodes = reply.nodes; state.gone = reply.gone;
    state.codes = reply.codes; state.self = reply.node; state.broker = reply.broker;
    state.samples.push(...reply.samples);
    if (reply.samples.length) state.since = reply.samples[reply.samples.length - 1].t;
    const horizon = state.now - state.window;
    while (state.samples.length && state.samples[0].t < horizon) state.samples.shift();
    $("about").textContent = `hubbub ${reply.version}, ${reply.broker} broker`;
    $("status").textContent = "live"; $("status").className = "status live";
    render();
  } catch (e) {
    $("status").textContent = `no data: ${e.message}`; $("status").className = "status error";
  }
}

let channelsTimer = null;
async function loadChannels() {
  const q = $("channel-search").value;
  try {
    const {status, reply} = await call(`/admin/api/channels?limit=200&q=${encodeURIComponent(q)}`);
    if (status !== 200) throw new Error(JSON.stringify(reply));
    $("channels-total").textContent = `(${reply.total}${q ? " matching" : ""})`;
    $("channels").tBodies[0].innerHTML = reply.channels.map((c) =>
      `<tr data-channel="${esc(c.channel)}"><td>${esc(c.channel)}</td><td>${esc(c.num_clients)}</td></tr>`).join("");
  } catch (e) {
    $("channels-total").textContent = `(error: ${e.message})`;
  }
}

// -- actions ---------------------------------------------------------------------------------------

function show(id, res) {
  const el = $(id);
  el.textContent = `HTTP ${res.status}\n` + JSON.stringify(res.reply, null, 2);
  el.className = "result" + (res.status !== 200 || res.reply.error ? " error" : "");
}

function parseData(text) {
  try { return JSON.parse(text); } catch { return text; }
}

$("publish-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const res = await call("/admin/api/publish", {channel: $("pub-channel").value.trim(), data: parseData($("pub-data").value)});
  show("pub-result", res);
  loadChannels();
});

$("look-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const method = (e.submitter && e.submitter.dataset.method) || "history";
  const body = {channel: $("look-channel").value.trim()};
  if (method === "history") Object.assign(body, {limit: 20, reverse: true});
  show("look-result", await call(`/admin/api/${method}`, body));
});

$("user-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const method = (e.submitter && e.submitter.dataset.method) || "disconnect";
  const body = {user: $("user-id").value.trim()};
  if (method === "unsubscribe") body.channel = $("user-channel").value.trim();
  show("user-result", await call(`/admin/api/${method}`, body));
});

$("scope").addEventListener("change", () => { state.scope = $("scope").value; render(); });
$("nodes").addEventListener("click", (e) => {
  const row = e.target.closest("tr[data-uid]");
  if (row) { state.scope = row.dataset.uid; $("scope").value = state.scope; render(); }
});
$("channels").addEventListener("click", (e) => {
  const row = e.target.closest("tr[data-channel]");
  if (row) { $("pub-channel").value = row.dataset.channel; $("look-channel").value = row.dataset.channel; }
});
$("channel-search").addEventListener("input", () => { clearTimeout(channelsTimer); channelsTimer = setTimeout(loadChannels, 200); });

poll();
loadChannels();
setInterval(poll, 1000);
setInterval(loadChannels, 3000);
