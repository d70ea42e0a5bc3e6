// centrifuge-js (npm `centrifuge`) against hubbub, under Node.
// Usage: node interop.cjs ws://127.0.0.1:PORT/connection/websocket CHANNEL
// Prints one JSON summary line; exits non-zero on failure. The server must have an rpc
// method "kick" that closes the caller with a reconnect code (3011).
const { Centrifuge } = require("centrifuge");
const WebSocket = require("ws");

const [url, channel] = process.argv.slice(2);
const wait = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function until(predicate, what, timeout = 10000) {
  const deadline = Date.now() + timeout;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await wait(10);
  }
}

(async () => {
  const opts = { websocket: WebSocket, minReconnectDelay: 100, maxReconnectDelay: 300 };
  const a = new Centrifuge(url, opts);
  const b = new Centrifuge(url, opts);
  const got = [];
  const subscribed = [];
  const joins = [];
  let reconnectCode = null;
  a.on("connecting", (ctx) => { if (ctx.code !== 0) reconnectCode = ctx.code; });
  const sub = a.newSubscription(channel);
  sub.on("publication", (ctx) => got.push({ offset: ctx.offset, data: ctx.data }));
  sub.on("subscribed", (ctx) => subscribed.push({ recovered: ctx.recovered, wasRecovering: ctx.wasRecovering }));
  sub.on("join", (ctx) => joins.push(ctx.info.client));
  sub.subscribe();
  a.connect();
  b.connect();
  await sub.ready(5000);
  await b.ready(5000);

  await b.publish(channel, { n: 1 });
  await until(() => got.length === 1, "the first publication");

  const presence = await sub.presence();
  const stats = await sub.presenceStats();
  const history = await sub.history({ limit: 10 });

  a.rpc("kick", {}).catch(() => {});
  await until(() => reconnectCode !== null, "the kick");
  for (const n of [2, 3, 4]) await b.publish(channel, { n });
  await until(() => got.length === 4, "the recovered publications");
  await until(() => subscribed.length === 2, "the resubscription");

  console.log(JSON.stringify({
    got,
    subscribed,
    reconnectCode,
    presenceClients: Object.keys(presence.clients).length,
    numClients: stats.numClients,
    history: history.publications.map((p) => p.data),
    joins: joins.length,
  }));
  a.disconnect();
  b.disconnect();
  process.exit(0);
})().catch((err) => {
  console.error("interop failed:", err && err.message ? err.message : err);
  process.exit(1);
});
