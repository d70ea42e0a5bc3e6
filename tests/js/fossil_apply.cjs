// centrifuge-js's own Fossil decoder (`applyDelta`, bundled in npm `centrifuge` but not exported)
// applied to deltas hubbub made: an independent check of hubbub.fossil.create.
// Usage: node fossil_apply.cjs < cases.jsonl
//   each input line: {"source": base64, "delta": base64}
//   each output line: {"target": base64} or {"error": message}
// The decoder is taken from the installed bundle at run time: the text from its Fossil header
// comment to the JSON codec that follows it (nothing of it is copied into hubbub).
const fs = require("fs");
const path = require("path");
const readline = require("readline");

const bundle = fs.readFileSync(path.join(path.dirname(require.resolve("centrifuge")), "index.js"), "utf8");
const start = bundle.indexOf("const zValue");
const end = bundle.indexOf("class JsonCodec", start);
if (start < 0 || end < 0 || !bundle.slice(start, end).includes("function applyDelta(")) {
  console.error("applyDelta not found in the centrifuge bundle");
  process.exit(2);
}
const applyDelta = new Function(bundle.slice(start, end) + "\nreturn applyDelta;")();

const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
rl.on("line", (line) => {
  if (!line.trim()) return;
  const { source, delta } = JSON.parse(line);
  try {
    const out = applyDelta(new Uint8Array(Buffer.from(source, "base64")), new Uint8Array(Buffer.from(delta, "base64")));
    console.log(JSON.stringify({ target: Buffer.from(out).toString("base64") }));
  } catch (err) {
    console.log(JSON.stringify({ error: String(err && err.message ? err.message : err) }));
  }
});
