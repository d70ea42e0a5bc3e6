"""Socket.IO's wire on hubbub (sans-I/O protocol and transports): Engine.IO v4 (:mod:`.engineio`),
Socket.IO v5 packets (:mod:`.packets`), the client session on the client core (:mod:`.session`) and
the node's transports at ``socketio_path`` (:mod:`.service`). The python-socketio-compatible API
is :mod:`hubbub.socketio`. See docs/design.md, "Socket.IO"."""
