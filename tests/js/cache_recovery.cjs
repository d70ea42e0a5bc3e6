// centrifuge-js (npm `centrifuge`) with a channel in cache recovery mode (the namespace's
// force_recovery_mode = "cache"), under Node over the WebSocket.
// Usage: node cache_recovery.cjs WS_URL CHANNEL CODEC
//   CODEC: json | protobuf (the Protobuf build, `centrifuge/build/protobuf`: data is bytes).
// The subscription asks for recovery from its first subscribe (`since: {}`, as Centrifugo's
// docs say), so it gets the channel's latest publication on subscribe; then the rpc "kick"
// (which closes the connection with 3011, a reconnect code) makes it reconnect and resubscribe,
// and it gets the latest publication again. Prints one JSON summary line; exits non-zero on
// failure (a timeout prints what arrived).
const [url, channel, codec] = process.argv.slice(2);
const protobuf = codec === "protobuf";
const { Centrifuge } = require(protobuf ? "centrifuge/build/protobuf" : "centrifuge");
const dec = (data) => (protobuf ? JSON.parse(new TextDecoder().decode(data)) : data);
const WebSocket = require("ws");

const wait = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const got = [];
const subscribed = [];
const codes = [];

async function until(predicate, what, timeout = 15000) {
  const deadline = Date.now() + timeout;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; got ${JSON.stringify({ got, subscribed, codes })}`);
    await wait(10);
  }
}

(async () => {
  const client = new Centrifuge(url, { websocket: WebSocket, minReconnectDelay: 100, maxReconnectDelay: 300, timeout: 5000 });
  client.on("disconnected", (ctx) => codes.push(ctx.code));
  client.on("connecting", (ctx) => { if (ctx.code !== 0) codes.push(ctx.code); });
  const sub = client.newSubscription(channel, { since: {} });
  sub.on("subscribed", (ctx) => subscribed.push({ recovered: ctx.recovered, wasRecovering: ctx.wasRecovering }));
  sub.on("publication", (ctx) => got.push({ data: dec(ctx.data), offset: Number(ctx.offset) }));
  sub.subscribe();
  client.connect();
  await until(() => got.length === 1, "the latest publication on subscribe");
  await client.rpc("kick", {}).catch(() => {});  // the connection closes before any reply
  await until(() => subscribed.length === 2 && got.length === 2, "the latest publication on resubscribe");
  client.disconnect();
  console.log(JSON.stringify({ got, subscribed, codes }));
  process.exit(0);
})().catch((err) => {
  console.error(err && err.stack ? err.stack : String(err));
  process.exit(1);
});
