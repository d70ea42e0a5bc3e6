"""The exceptions of a framework endpoint whose connection is closed.

They subclass ``websockets``' own, so that handlers written for ``websockets`` work unchanged
(see :mod:`hubbub.endpoint`). They live apart from :mod:`hubbub.errors` because they import
``websockets``: :mod:`hubbub.endpoint` loads this module on first use, so importing the
sans-I/O layers does not load the network layer (``docs/design.md``, layers).
"""

from __future__ import annotations

import websockets.exceptions
from websockets.frames import Close

#: Close codes of a normal closure (``websockets.frames.OK_CLOSE_CODES``).
OK_CLOSE_CODES = frozenset((1000, 1001, 1005))

#: A close frame as ``(code, reason)``.
CloseFrame = tuple[int, str]


class ConnectionClosedOK(websockets.exceptions.ConnectionClosedOK, ConnectionError):
    """The endpoint's connection is closed normally (close code 1000, 1001 or 1005):
    ``websockets.exceptions.ConnectionClosedOK``, and a ``ConnectionError``. ``rcvd`` and
    ``sent`` are the close frames received and sent (``websockets.frames.Close``, or
    ``None``)."""


class ConnectionClosedError(websockets.exceptions.ConnectionClosedError, ConnectionError):
    """The endpoint's connection is closed with another close code, or dropped without a
    close frame (1006): ``websockets.exceptions.ConnectionClosedError``, and a
    ``ConnectionError``."""


def closed_error(rcvd: CloseFrame | None, sent: CloseFrame | None,
                 rcvd_then_sent: bool | None) -> ConnectionClosedOK | ConnectionClosedError:
    """The exception for a closed connection, from the close frames received and sent
    (``(code, reason)`` or ``None``) and their order (``None`` unless both exist): OK when
    every close frame known has a normal code, Error otherwise (and when there was none,
    which is 1006)."""
    codes = [frame[0] for frame in (rcvd, sent) if frame is not None]
    cls = ConnectionClosedOK if codes and all(code in OK_CLOSE_CODES for code in codes) else ConnectionClosedError
    if rcvd is None or sent is None:
        rcvd_then_sent = None
    elif rcvd_then_sent is None:
        rcvd_then_sent = False
    return cls(None if rcvd is None else Close(*rcvd), None if sent is None else Close(*sent), rcvd_then_sent)
