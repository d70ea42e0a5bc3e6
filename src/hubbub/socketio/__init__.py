"""Socket.IO on hubbub: the protocol (Engine.IO v4, Socket.IO v5) and a python-socketio-compatible
server API (``import hubbub.socketio as socketio``: :class:`AsyncServer`, :class:`AsyncNamespace`,
:class:`ASGIApp`, :class:`ConnectionRefusedError`). See docs/howto/socketio.md.

The API's names load on first use (PEP 562), so the protocol modules import without it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ASGIApp", "AsyncNamespace", "AsyncServer", "ConnectionRefusedError", "exceptions"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import server

        return getattr(server, name)
    raise AttributeError(f"module 'hubbub.socketio' has no attribute {name!r}")
