"""The Redis broker: many processes and machines share channels through Redis.

:class:`RedisBroker` (in :mod:`.broker`) is built from :mod:`.wire` (names and
messages), :mod:`.scripts` (the Lua scripts, ``lua/*.lua``), :mod:`.pubsub` (the
pub/sub connection and subscriptions) and :mod:`.pipeline` (publications in
pipelines); :mod:`.connections` holds what they share about redis-py. See
``docs/design.md``.
"""

from __future__ import annotations

from .broker import RedisBroker

__all__ = ["RedisBroker"]
