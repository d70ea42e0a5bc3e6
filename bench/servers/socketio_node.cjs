// Peer: the reference Node socket.io server (npm `socket.io`, v4), the anchor beside
// python-socketio (socketio_server.py) and hubbub.socketio (hubbub_socketio.py).
//
// The same application as socketio_server.py: every client joins the room `bench` when it
// connects (join is synchronous and happens in the tick that sends the connect
// acknowledgement `40{...}`, so a client that has it is subscribed). Events:
//
//   pub (data) or pub (room, data)   io.to(room).emit("msg", data); room defaults to `bench`
//   sub ([room, ...])                joins each room, then emits `subok` to the client
//
// Library defaults are kept (Engine.IO ping interval 25 s, no per-message deflate, the `ws`
// WebSocket engine); one Node process (a single event loop, as the Python peers have).
//
// Usage:
//   node bench/servers/socketio_node.cjs --host 127.0.0.1 --port 8000
// socket.io comes from bench/node_modules (`npm install` in bench/, see bench/package.json).
"use strict";

const http = require("node:http");
const { Server } = require("socket.io");

function option(name, fallback) {
  const at = process.argv.indexOf(name);
  return at >= 0 && at + 1 < process.argv.length ? process.argv[at + 1] : fallback;
}

const host = option("--host", "127.0.0.1");
const port = Number(option("--port", "8000"));

const server = http.createServer();
const io = new Server(server, { cors: { origin: "*" } });

io.on("connection", (socket) => {
  socket.join("bench");
  socket.on("sub", (rooms) => {
    socket.join(rooms);
    socket.emit("subok");
  });
  socket.on("pub", (...args) => {
    const [room, data] = args.length === 2 ? args : ["bench", args[0]];
    io.to(room).emit("msg", data);
  });
});

server.listen(port, host);
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => process.exit(0));
}
