// centrifuge-js (npm `centrifuge`) against hubbub, under Node.
// Usage: node interop.cjs ws://127.0.0.1:PORT/connection/websocket CHANNEL
//        node interop.cjs URL CHANNEL protobuf API_URL API_KEY SHORT_TOKEN LONG_TOKEN \
//             PRIVATE_CHANNEL SHORT_SUB_TOKEN LONG_SUB_TOKEN
// Prints one JSON summary line; exits non-zero on failure. The server must have an rpc
// method "kick" that closes the caller with a reconnect code (3011).
// In protobuf mode the Protobuf build (`centrifuge/build/protobuf`) is used: payloads are
// bytes (JSON text encoded here); the server must also have an rpc "echo" answering
// {"echo": data}, a server API at API_URL, and accept the tokens (SHORT_TOKEN expires soon,
// so the client refreshes it with getToken, which then returns LONG_TOKEN; the subscription
// tokens of PRIVATE_CHANNEL likewise, refreshed with sub_refresh).
const [url, channel, mode, apiUrl, apiKey, shortToken, longToken, privateChannel, shortSubToken, longSubToken] =
  process.argv.slice(2);
const protobuf = mode === "protobuf";
const { Centrifuge } = require(protobuf ? "centrifuge/build/protobuf" : "centrifuge");
const WebSocket = require("ws");

const wait = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const encode = (value) => (protobuf ? new TextEncoder().encode(JSON.stringify(value)) : value);
const decode = (data) => (protobuf ? JSON.parse(new TextDecoder().decode(data)) : data);

async function until(predicate, what, timeout = 10000) {
  const deadline = Date.now() + timeout;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await wait(10);
  }
}

async function apiPublish(data, to = channel) {
  const response = await fetch(`${apiUrl}/publish`, {
    method: "POST",
    headers: { "X-API-Key": apiKey, "Content-Type": "application/json" },
    body: JSON.stringify({ channel: to, data }),
  });
  if (response.status !== 200) throw new Error(`API publish: ${response.status}`);
}

(async () => {
  const opts = { websocket: WebSocket, minReconnectDelay: 100, maxReconnectDelay: 300 };
  let refreshed = 0;
  let subRefreshed = 0;
  let privateData = null;
  let privateSubscribed = 0; // 1: refreshed in place, never resubscribed
  const aOpts = { ...opts };
  if (protobuf) {
    aOpts.getToken = async () => {
      refreshed += 1;
      return refreshed === 1 ? shortToken : longToken;
    };
  }
  const a = new Centrifuge(url, aOpts);
  const b = new Centrifuge(url, opts);
  const got = [];
  const subscribed = [];
  const joins = [];
  let reconnectCode = null;
  a.on("connecting", (ctx) => { if (ctx.code !== 0) reconnectCode = ctx.code; });
  const sub = a.newSubscription(channel);
  sub.on("publication", (ctx) => got.push({ offset: ctx.offset, data: decode(ctx.data) }));
  sub.on("subscribed", (ctx) => subscribed.push({ recovered: ctx.recovered, wasRecovering: ctx.wasRecovering }));
  sub.on("join", (ctx) => joins.push(ctx.info.client));
  sub.subscribe();
  a.connect();
  b.connect();
  await sub.ready(5000);
  await b.ready(5000);

  await b.publish(channel, encode({ n: 1 }));
  await until(() => got.length === 1, "the first publication");
  let rpc = null;
  if (protobuf) {
    await apiPublish({ n: "api" });
    await until(() => got.length === 2, "the API's publication");
    rpc = decode((await a.rpc("echo", encode({ q: 1 }))).data);
    // the short token expires: the client refreshes it with getToken
    await until(() => refreshed >= 2, "the token refresh");
    // a private subscription's short token: refreshed with sub_refresh, then still subscribed
    const privateGot = [];
    const ps = a.newSubscription(privateChannel, {
      getToken: async () => {
        subRefreshed += 1;
        return subRefreshed === 1 ? shortSubToken : longSubToken;
      },
    });
    ps.on("publication", (ctx) => privateGot.push(decode(ctx.data)));
    ps.on("subscribed", () => { privateSubscribed += 1; });
    ps.subscribe();
    await ps.ready(5000);
    await until(() => subRefreshed >= 2, "the subscription token refresh");
    await wait(2500); // past the first subscription token's exp (and the server's sweep)
    await apiPublish({ private: true }, privateChannel);
    await until(() => privateGot.length === 1, "the private publication after the refresh");
    privateData = privateGot[0];
    ps.unsubscribe();
  }

  const presence = await sub.presence();
  const stats = await sub.presenceStats();
  const history = await sub.history({ limit: 10 });

  const before = got.length;
  a.rpc("kick", encode({})).catch(() => {});
  await until(() => reconnectCode !== null, "the kick");
  for (const n of [2, 3, 4]) await b.publish(channel, encode({ n }));
  await until(() => got.length === before + 3, "the recovered publications");
  await until(() => subscribed.length === 2, "the resubscription");

  console.log(JSON.stringify({
    got,
    subscribed,
    reconnectCode,
    presenceClients: Object.keys(presence.clients).length,
    numClients: stats.numClients,
    history: history.publications.map((p) => decode(p.data)),
    joins: joins.length,
    rpc,
    refreshed,
    subRefreshed,
    privateData,
    privateSubscribed,
  }));
  a.disconnect();
  b.disconnect();
  process.exit(0);
})().catch((err) => {
  console.error("interop failed:", err && err.message ? err.message : err);
  process.exit(1);
});
