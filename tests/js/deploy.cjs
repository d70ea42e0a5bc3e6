// centrifuge-js (npm `centrifuge`) under Node through nginx with TLS (tests/test_deploy.py):
// three clients on one channel, one per transport: websocket (wss://), http_stream and sse.
// The later commands of the http_stream and sse clients are POST /emulation requests, which
// nginx spreads over both hubbub nodes (no sticky sessions).
// Usage: NODE_EXTRA_CA_CERTS=ca.pem node deploy.cjs BASE_URL CHANNEL   (BASE_URL: https://HOST:PORT)
// Prints one JSON summary line ({"got": {transport: [n, ...]}, "transports": {...}}); exits
// non-zero on failure.
const { Centrifuge } = require("centrifuge");
const { EventSource } = require("eventsource");
const WebSocket = require("ws");

const [base, channel] = process.argv.slice(2);
const wait = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function until(predicate, what, timeout = 15000) {
  const deadline = Date.now() + timeout;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await wait(10);
  }
}

(async () => {
  const common = {
    websocket: WebSocket, eventsource: EventSource, emulationEndpoint: `${base}/emulation`, timeout: 5000,
  };
  const clients = {
    websocket: new Centrifuge(`${base.replace(/^https/, "wss")}/connection/websocket`, common),
    http_stream: new Centrifuge([{ transport: "http_stream", endpoint: `${base}/connection/http_stream` }], common),
    sse: new Centrifuge([{ transport: "sse", endpoint: `${base}/connection/sse` }], common),
  };
  const got = {};
  const transports = {};
  for (const [name, client] of Object.entries(clients)) {
    got[name] = [];
    client.on("connected", (ctx) => { transports[name] = ctx.transport; });
    const sub = client.newSubscription(channel);
    sub.on("publication", (ctx) => got[name].push(ctx.data.n));
    sub.subscribe();
    client.connect();
    await sub.ready(10000);
  }
  // each client publishes twice, one after another: all three receive all six, in order
  let n = 0;
  for (const client of Object.values(clients)) {
    for (let i = 0; i < 2; i++) await client.publish(channel, { n: ++n });
  }
  await until(() => Object.values(got).every((g) => g.length >= n), "every publication on every client");
  for (const client of Object.values(clients)) client.disconnect();
  console.log(JSON.stringify({ got, transports }));
  process.exit(0);
})().catch((err) => {
  console.error((err && err.stack) || JSON.stringify(err));
  process.exit(1);
});
