// socket.io-client (npm) driven by tests/test_socketio_js.py: one JSON command per stdin line,
// one JSON event per stdout line. Binary values travel as {"$bin": base64} both ways.
import { io } from "socket.io-client";
import { createInterface } from "node:readline";

const sockets = new Map();
const out = (value) => process.stdout.write(JSON.stringify(value, (k, v) => v) + "\n");

function toWire(value) {
  if (value && typeof value === "object" && typeof value.$bin === "string") return Buffer.from(value.$bin, "base64");
  if (Array.isArray(value)) return value.map(toWire);
  if (value && typeof value === "object") return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, toWire(v)]));
  return value;
}

function fromWire(value) {
  if (value instanceof ArrayBuffer) value = Buffer.from(value);
  if (Buffer.isBuffer(value) || value instanceof Uint8Array) return { $bin: Buffer.from(value).toString("base64") };
  if (Array.isArray(value)) return value.map(fromWire);
  if (value && typeof value === "object") return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, fromWire(v)]));
  return value;
}

function connect({ name, url, opts }) {
  const socket = io(url, { forceNew: true, reconnectionDelay: 100, reconnectionDelayMax: 200, ...opts });
  sockets.set(name, socket);
  socket.on("connect", () => out({ ev: "connect", name, id: socket.id, recovered: socket.recovered,
    transport: socket.io.engine.transport.name }));
  socket.on("connect_error", (err) => out({ ev: "connect_error", name, message: err.message, data: err.data ?? null }));
  socket.on("disconnect", (reason) => out({ ev: "disconnect", name, reason }));
  socket.on("question", (q, ack) => ack(`answer to ${q}`));
  socket.onAny((event, ...args) => { if (event !== "question") out({ ev: "event", name, event, args: fromWire(args) }); });
  socket.io.on("open", () => socket.io.engine.on("upgrade", (t) => out({ ev: "upgrade", name, transport: t.name })));
}

const ops = {
  connect,
  emit({ name, event, args, id }) {
    const socket = sockets.get(name);
    if (id === undefined) socket.emit(event, ...toWire(args));
    else socket.timeout(10000).emit(event, ...toWire(args), (err, ...reply) =>
      out({ ev: "ack", name, id, error: err ? String(err) : null, args: fromWire(reply) }));
  },
  engineClose({ name }) { sockets.get(name).io.engine.close(); },
  close({ name }) { sockets.get(name).close(); },
  transport({ name }) { out({ ev: "transport", name, transport: sockets.get(name).io.engine.transport.name }); },
  exit() { for (const s of sockets.values()) s.close(); setTimeout(() => process.exit(0), 50); },
};

createInterface({ input: process.stdin }).on("line", (line) => {
  if (!line.trim()) return;
  const command = JSON.parse(line);
  try { ops[command.op](command); } catch (err) { out({ ev: "error", op: command.op, message: String(err) }); }
});
out({ ev: "ready" });
