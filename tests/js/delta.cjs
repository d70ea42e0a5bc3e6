// centrifuge-js (npm `centrifuge`) subscribing with delta compression (`delta: "fossil"`), under
// Node over the WebSocket. Usage: node delta.cjs WS_URL CHANNEL CODEC COUNT
//   CODEC: json | protobuf (the Protobuf build, `centrifuge/build/protobuf`: data is bytes).
// The server (tests/test_delta_js.py) publishes on the rpc "publish" {from, to}; the rpc "kick"
// {from, to} closes the connection with 3011 (a reconnect code) and publishes while the client is
// away, so it recovers those on resubscribe. The subscription is recoverable (the namespace
// forces recovery). Prints one JSON line: every publication's data and offset as the SDK handed
// them (after applying deltas), the subscribed contexts, close codes and the SDK's deltaStats().
const [url, channel, codec, countText] = process.argv.slice(2);
const count = Number(countText);
const protobuf = codec === "protobuf";
const { Centrifuge } = require(protobuf ? "centrifuge/build/protobuf" : "centrifuge");
const dec = (data) => (protobuf ? JSON.parse(new TextDecoder().decode(data)) : data);
const enc = (value) => (protobuf ? new TextEncoder().encode(JSON.stringify(value)) : value);
const WebSocket = require("ws");

const wait = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const got = [];
const subscribed = [];
const codes = [];

async function until(predicate, what, timeout = 20000) {
  const deadline = Date.now() + timeout;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; got offsets ${JSON.stringify(got.map((g) => g.offset))} ${JSON.stringify({ subscribed, codes })}`);
    await wait(10);
  }
}

(async () => {
  const client = new Centrifuge(url, { websocket: WebSocket, minReconnectDelay: 100, maxReconnectDelay: 300, timeout: 5000 });
  client.on("disconnected", (ctx) => codes.push(ctx.code));
  client.on("connecting", (ctx) => { if (ctx.code !== 0) codes.push(ctx.code); });
  const sub = client.newSubscription(channel, { delta: "fossil" });
  sub.on("subscribed", (ctx) => subscribed.push({ recovered: ctx.recovered, wasRecovering: ctx.wasRecovering }));
  sub.on("publication", (ctx) => got.push({ data: dec(ctx.data), offset: Number(ctx.offset) }));
  sub.on("error", (ctx) => codes.push(String(ctx.error && ctx.error.message)));
  client.on("error", (ctx) => codes.push(String(ctx.error && ctx.error.message)));
  sub.subscribe();
  client.connect();
  await until(() => subscribed.length === 1, "subscribed");
  const third = Math.floor(count / 3);
  await client.rpc("publish", enc({ from: 0, to: third }));
  await until(() => got.length === third, "the first publications");
  await client.rpc("kick", enc({ from: third, to: 2 * third })).catch(() => {});  // closes before any reply
  await until(() => subscribed.length === 2 && got.length === 2 * third, "the publications recovered");
  await client.rpc("publish", enc({ from: 2 * third, to: count }));
  await until(() => got.length === count, "the last publications");
  const stats = sub.deltaStats();
  client.disconnect();
  // a large line: exit once it is written (process.exit would cut a pipe's write short)
  process.stdout.write(JSON.stringify({ got, subscribed, codes, stats }) + "\n", () => process.exit(0));
})().catch((err) => {
  console.error(err && err.stack ? err.stack : String(err));
  process.exit(1);
});
