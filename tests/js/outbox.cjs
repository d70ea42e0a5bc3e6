// centrifuge-js (npm `centrifuge`) under Node, subscribed to one channel over the WebSocket:
// prints "subscribed" once the subscription is active, then one JSON line per publication's
// data, and exits after COUNT of them (non-zero after 20 s without them).
// Usage: node outbox.cjs WS_URL CHANNEL COUNT
const [url, channel, count] = process.argv.slice(2);
const { Centrifuge } = require("centrifuge");
const WebSocket = require("ws");

let got = 0;
const client = new Centrifuge(url, { websocket: WebSocket, timeout: 5000 });
const sub = client.newSubscription(channel);
sub.on("subscribed", () => console.log("subscribed"));
sub.on("publication", (ctx) => {
  console.log(JSON.stringify(ctx.data));
  got += 1;
  if (got === Number(count)) {
    client.disconnect();
    process.exit(0);
  }
});
sub.subscribe();
client.connect();
setTimeout(() => {
  console.error(`timed out with ${got} of ${count} publications`);
  process.exit(1);
}, 20000);
