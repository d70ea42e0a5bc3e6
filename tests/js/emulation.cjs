// centrifuge-js (npm `centrifuge`) over its HTTP transports against hubbub, under Node.
// Usage: node emulation.cjs BASE_URL MODE CHANNEL TOKEN_SECRET API_KEY
//   MODE: http_stream | sse (that transport alone) | fallback (websocket first, then
//   http_stream, then sse; the server has its websocket endpoint turned off) | protobuf
//   (http_stream alone with the Protobuf build, `centrifuge/build/protobuf`: payloads are
//   bytes, JSON-encoded here).
// Prints one JSON summary line; exits non-zero on failure. The server must have the rpc
// methods "kick" (closes the caller with 3011) and "echo" (returns its data).
const crypto = require("crypto");
const [base, mode, channel, secret, apiKey] = process.argv.slice(2);
const protobuf = mode === "protobuf";
const { Centrifuge } = require(protobuf ? "centrifuge/build/protobuf" : "centrifuge");
const enc = (value) => (protobuf ? new TextEncoder().encode(JSON.stringify(value)) : value);
const dec = (data) => (protobuf ? JSON.parse(new TextDecoder().decode(data)) : data);
const { EventSource } = require("eventsource");
const WebSocket = require("ws");

const wait = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function until(predicate, what, timeout = 15000) {
  const deadline = Date.now() + timeout;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await wait(10);
  }
}

function jwt(sub, ttlSeconds, claims = {}) {
  const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString("base64url");
  const payload = { sub, exp: Math.floor(Date.now() / 1000) + ttlSeconds, ...claims };
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(payload)}`;
  return `${body}.${crypto.createHmac("sha256", secret).update(body).digest("base64url")}`;
}

const http = (transport) => ({ transport, endpoint: `${base}/connection/${transport}` });
const endpoints = {
  http_stream: [http("http_stream")],
  sse: [http("sse")],
  protobuf: [http("http_stream")],
  fallback: [{ transport: "websocket", endpoint: base.replace(/^http/, "ws") + "/connection/websocket" },
             http("http_stream"), http("sse")],
}[mode];

(async () => {
  let tokenCalls = 0;
  const common = {
    websocket: WebSocket, eventsource: EventSource, emulationEndpoint: `${base}/emulation`,
    minReconnectDelay: 100, maxReconnectDelay: 300, timeout: 5000,
  };
  // a's token lives 3 s: the client refreshes it over the transport (refresh command)
  const a = new Centrifuge(endpoints, { ...common, getToken: async () => { tokenCalls++; return jwt("alice", 3); } });
  const b = new Centrifuge(endpoints, { ...common, token: jwt("bob", 600) });
  const got = [];
  const subscribed = [];
  const codes = [];
  let transportName = null;
  a.on("connected", (ctx) => { transportName = ctx.transport; });
  a.on("connecting", (ctx) => { if (ctx.code !== 0) codes.push(ctx.code); });
  a.on("disconnected", (ctx) => codes.push(ctx.code));
  const sub = a.newSubscription(channel);
  sub.on("publication", (ctx) => got.push({ offset: ctx.offset, data: dec(ctx.data) }));
  sub.on("subscribed", (ctx) => subscribed.push({ recovered: ctx.recovered, wasRecovering: ctx.wasRecovering }));
  sub.subscribe();
  // a private channel: each subscription token lives 3 s, refreshed with sub_refresh
  const privateChannel = `private:${mode}`;
  let subTokenCalls = 0;
  const privateGot = [];
  const psub = a.newSubscription(privateChannel, {
    getToken: async () => { subTokenCalls++; return jwt("alice", 3, { channel: privateChannel }); },
  });
  psub.on("publication", (ctx) => privateGot.push(dec(ctx.data)));
  psub.subscribe();
  a.connect();
  b.connect();
  await sub.ready(10000);
  await b.ready(10000);

  await b.publish(channel, enc({ n: 1 }));  // from a client
  const api = await fetch(`${base}/api/publish`, {
    method: "POST", headers: { "X-API-Key": apiKey, "Content-Type": "application/json" },
    body: JSON.stringify({ channel, data: { n: 2 } }),
  });
  if (api.status !== 200) throw new Error(`API publish: ${api.status}`);
  await until(() => got.length === 2, "the first publications");

  const presence = await sub.presence();
  const stats = await sub.presenceStats();
  const history = await sub.history({ limit: 10 });
  const echo = await a.rpc("echo", enc({ hello: "rpc" }));

  // the token expires 3 s after each connect/refresh: wait past two lifetimes
  await until(() => tokenCalls >= 3, "two token refreshes", 20000);
  await until(() => subTokenCalls >= 3, "two subscription token refreshes", 20000);
  const privateApi = await fetch(`${base}/api/publish`, {
    method: "POST", headers: { "X-API-Key": apiKey, "Content-Type": "application/json" },
    body: JSON.stringify({ channel: privateChannel, data: { private: true } }),
  });
  if (privateApi.status !== 200) throw new Error(`API publish to the private channel: ${privateApi.status}`);
  await until(() => privateGot.length === 1, "the private publication after the refreshes");

  a.rpc("kick", enc({})).catch(() => {});
  await until(() => codes.includes(3011), "the kick");
  for (const n of [3, 4, 5]) await b.publish(channel, enc({ n }));
  await until(() => got.length === 5, "the recovered publications");
  await until(() => subscribed.length === 2, "the resubscription");

  console.log(JSON.stringify({
    transport: transportName,
    got,
    subscribed,
    codes,
    tokenCalls,
    subTokenCalls,
    privateGot,
    presenceClients: Object.keys(presence.clients).length,
    numClients: stats.numClients,
    history: history.publications.map((p) => dec(p.data)),
    echo: dec(echo.data),
  }));
  a.disconnect();
  b.disconnect();
  process.exit(0);
})().catch((err) => {
  console.error("emulation interop failed:", err && err.message ? err.message : err);
  process.exit(1);
});
