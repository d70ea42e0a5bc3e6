"""What every async consumer shares: its contract, the command dispatcher, the backoff.

A consumer (:class:`Consumer`) owns its tasks: ``start()`` starts them and never
fails because its source is down (it retries), ``close()`` stops them. It hands
each message to a :class:`CommandDispatcher`, whose :class:`Result` says what to
do with the message: drop it as done, skip it as malformed or refused, or try it
again later. :class:`APIDispatcher` is the dispatcher over the server
API (:meth:`hubbub.api.ServerAPI.call`); the outcomes follow Centrifugo's
consuming dispatcher: an internal (temporary) error is retried, any other
command error is logged and the message dropped. A message still failing after
its attempts is skipped (``failed``); every skip is logged and counted in
``Stats.consumer_rows``.
"""

from __future__ import annotations

import enum
import logging
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..codes import ErrorCode
from ..strictjson import loads

if TYPE_CHECKING:
    from ..api import ServerAPI
    from ..stats import Stats

log = logging.getLogger("hubbub.consumers")

#: The server API methods a consumer runs: those that change state (as Centrifugo's consumers).
METHODS = frozenset({"publish", "broadcast", "subscribe", "unsubscribe", "disconnect", "refresh",
                     "history_remove"})
#: Methods whose publications carry an ``idempotency_key``.
PUBLISHING = frozenset({"publish", "broadcast"})

#: Backoff bounds (seconds) between retries of a failing source or command.
MIN_BACKOFF = 0.01
MAX_BACKOFF = 5.0


def backoff(failures: int) -> float:
    """Seconds to wait after ``failures`` failures in a row (1, 2, ...): doubling from
    :data:`MIN_BACKOFF` with jitter, at most :data:`MAX_BACKOFF`."""
    return min(MAX_BACKOFF, (MIN_BACKOFF + random.uniform(0, MIN_BACKOFF)) * float(1 << min(failures, 20)))


class Outcome(enum.Enum):
    """What becomes of a message once dispatched."""

    #: the command ran: the message is removed
    DONE = "processed"
    #: the command ran and got an error that a retry would get again (102 unknown
    #: namespace, ...): the message is removed, logged and counted, as Centrifugo drops it
    REFUSED = "refused"
    #: not a command (unknown method, a payload that is not a JSON object, invalid
    #: parameters): the message is removed, logged and counted
    MALFORMED = "malformed"
    #: failed for a temporary reason (the broker unavailable): the message stays, and is
    #: tried again after a backoff
    RETRY = "retry"


@dataclass(frozen=True, slots=True)
class Result:
    """A dispatch's outcome and, when it is not DONE, why (for the log)."""

    outcome: Outcome
    reason: str = ""


DONE = Result(Outcome.DONE)


class CommandDispatcher(Protocol):
    """Runs one command that a consumer read."""

    @property
    def stats(self) -> Stats:
        """The node's counters (``consumer_rows``, ``consumer_errors``)."""
        ...

    async def dispatch(self, method: Any, payload: Any, *, idempotency_key: str | None = None) -> Result:
        """Run ``method`` (a server API method name) with ``payload`` (its parameters as
        JSON text or bytes). ``idempotency_key`` is the publication's key when the
        payload has none (``publish``, ``broadcast``). Never raises for bad input."""
        ...


class Consumer(Protocol):
    """An async consumer: a task (or several) owned by the node."""

    #: names it in logs and metrics (``consumer`` label)
    name: str

    async def start(self) -> None:
        """Start consuming; returns at once (a source that is down is retried)."""
        ...

    async def close(self) -> None:
        """Stop consuming: the message at hand is finished, nothing new is taken. Idempotent."""
        ...


class APIDispatcher:
    """A :class:`CommandDispatcher` running commands through the server API.

    Args:
        api: the node's server API: a command gets the validation, the errors and
            the metrics (``publications_total{source="api"}``) of ``POST /api/{method}``.
    """

    def __init__(self, api: ServerAPI) -> None:
        self.api = api

    @property
    def stats(self) -> Stats:
        return self.api.hub.stats

    async def dispatch(self, method: Any, payload: Any, *, idempotency_key: str | None = None) -> Result:
        if not isinstance(method, str) or method not in METHODS:
            return Result(Outcome.MALFORMED, f"method {method!r} is not one of {', '.join(sorted(METHODS))}")
        if not isinstance(payload, (str, bytes)):
            return Result(Outcome.MALFORMED, "no payload")
        try:
            body = loads(payload)
        except ValueError as exc:
            return Result(Outcome.MALFORMED, f"the payload is not JSON: {exc}")
        if not isinstance(body, dict):
            hint = " (a JSON string: was the payload encoded twice?)" if isinstance(body, str) else ""
            return Result(Outcome.MALFORMED, f"the payload is not a JSON object{hint}")
        if idempotency_key and method in PUBLISHING and not body.get("idempotency_key"):
            body["idempotency_key"] = idempotency_key
        status, reply = await self.api.call(method, body)
        if status in (400, 404):
            return Result(Outcome.MALFORMED, str(reply.get("error")))
        if status == 503:
            return Result(Outcome.RETRY, str(reply.get("error")))
        errors = [reply["error"]] if "error" in reply else []
        if method == "broadcast":  # an error per channel
            errors += [r["error"] for r in reply.get("result", {}).get("responses", ()) if "error" in r]
        for error in errors:
            if error.get("temporary") or error.get("code") == ErrorCode.INTERNAL:
                return Result(Outcome.RETRY, str(error))
        if errors:
            return Result(Outcome.REFUSED, str(errors if len(errors) > 1 else errors[0]))
        return DONE
