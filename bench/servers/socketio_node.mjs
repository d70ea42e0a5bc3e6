// Peer: the reference Node.js `socket.io` server (npm), the anchor of the Socket.IO rows.
// The same application as socketio_server.py: every client joins the room `bench` when it
// connects; `pub` (data) or `pub` (room, data) emits "msg" to the room; `sub` ([room, ...])
// joins rooms, then emits "subok". Library defaults otherwise.
//
// socket.io is installed from npm into tests/js/node_modules (tests/js/package.json).
//
//   node bench/servers/socketio_node.mjs --host 127.0.0.1 --port 8000
import { createServer } from "node:http";
import { createRequire } from "node:module";

const require = createRequire(new URL("../../tests/js/package.json", import.meta.url));
const { Server } = require("socket.io");

const argv = process.argv.slice(2);
const option = (name, fallback) => (argv.includes(name) ? argv[argv.indexOf(name) + 1] : fallback);
const host = option("--host", "127.0.0.1");
const port = Number(option("--port", "8000"));

const httpServer = createServer();
const io = new Server(httpServer, { cors: { origin: "*" } });
io.on("connection", (socket) => {
  socket.join("bench");
  socket.on("sub", (rooms) => {
    for (const room of rooms) socket.join(room);
    socket.emit("subok");
  });
  socket.on("pub", (...args) => {
    const [room, data] = args.length === 2 ? args : ["bench", args[0]];
    io.to(room).emit("msg", data);
  });
});
httpServer.listen(port, host, () => console.log(`listening on http://${host}:${port}`));
