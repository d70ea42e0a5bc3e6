"""The Redis broker's Lua scripts, read from the ``lua/`` files of this package
(package data: an installed wheel carries them). What each does is said at the
top of its file and in :mod:`hubbub.brokers.redis.broker`."""

from __future__ import annotations

import string
from importlib import resources

#: Expired presence entries removed per presence call (bounds a script's work).
PRESENCE_SWEEP = 1000


def _read(name: str) -> str:
    return (resources.files(__package__) / "lua" / f"{name}.lua").read_text(encoding="utf-8")


_PRESENCE_PRELUDE = string.Template(_read("presence_prelude")).substitute(sweep=PRESENCE_SWEEP)

#: Store (with history) and publish one publication, with its idempotency key.
PUBLISH = _read("publish")
#: Read a stream's position and publications; create its epoch when missing.
HISTORY = _read("history")
#: Add or refresh a presence entry.
PRESENCE_ADD = _PRESENCE_PRELUDE + _read("presence_add")
#: The unexpired presence entries.
PRESENCE_GET = _PRESENCE_PRELUDE + _read("presence_get")
#: Counts of unexpired presence entries and of their distinct users.
PRESENCE_STATS = _PRESENCE_PRELUDE + _read("presence_stats")
