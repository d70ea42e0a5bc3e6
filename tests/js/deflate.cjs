// centrifuge-js (npm `centrifuge`) under Node over `ws`, which offers permessage-deflate: the
// extensions the server agreed to, and the publications as the SDK hands them.
// Usage: node deflate.cjs WS_URL CHANNEL CODEC DELTA COUNT
//   CODEC: json | protobuf; DELTA: fossil | none (the subscription's `delta` option).
// The server publishes COUNT documents on the rpc "publish" {from, to}. Prints one JSON line
// {extensions, got: [data...], stats}; exits non-zero on failure.
const [url, channel, codec, delta, countText] = process.argv.slice(2);
const count = Number(countText);
const protobuf = codec === "protobuf";
const { Centrifuge } = require(protobuf ? "centrifuge/build/protobuf" : "centrifuge");
const WebSocket = require("ws");

const dec = (data) => (protobuf ? JSON.parse(new TextDecoder().decode(data)) : data);
const enc = (value) => (protobuf ? new TextEncoder().encode(JSON.stringify(value)) : value);
const wait = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const extensions = [];

// ws's client offers permessage-deflate by default; record what the server answered
class RecordingWebSocket extends WebSocket {
  constructor(address, protocols) {
    super(address, protocols);
    this.on("open", () => extensions.push(this.extensions));  // the names of the agreed extensions
  }
}

(async () => {
  const got = [];
  const client = new Centrifuge(url, { websocket: RecordingWebSocket, timeout: 5000 });
  const sub = client.newSubscription(channel, delta === "fossil" ? { delta: "fossil" } : {});
  sub.on("publication", (ctx) => got.push(dec(ctx.data)));
  sub.subscribe();
  client.connect();
  await sub.ready(5000);
  await client.rpc("publish", enc({ from: 0, to: count }));
  const deadline = Date.now() + 15000;
  while (got.length < count) {
    if (Date.now() > deadline) throw new Error(`timed out: got ${got.length} of ${count}`);
    await wait(10);
  }
  const stats = sub.deltaStats();
  client.disconnect();
  process.stdout.write(JSON.stringify({ extensions, got, stats }) + "\n", () => process.exit(0));
})().catch((err) => {
  console.error(err && err.stack ? err.stack : String(err));
  process.exit(1);
});
