"""The operator's dashboard at ``/admin``: a live view of the hub and its cluster.

The session cookie lives :data:`SESSION_TTL` seconds; :data:`LOGIN_FAILURES`
wrong secrets from one address within :data:`LOGIN_WINDOW` seconds lock it
out (429); the page's actions are :data:`ACTIONS`. Whether the dashboard is
on: :attr:`hubbub.config.Config.admin_enabled` (``docs/security.md``).

See ``docs/design.md``, "The operator's dashboard".
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import html
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl

from ._version import __version__
from .codes import DISCONNECT_REASONS
from .config import Config
from .errors import BrokerError
from .http import HTTPRequest, HTTPResponse
from .strictjson import loads

if TYPE_CHECKING:
    from .api import ServerAPI
    from .cluster import Cluster
    from .hub import Hub

log = logging.getLogger("hubbub.admin")

#: Seconds between samples.
INTERVAL = 1.0
#: Samples kept: 15 minutes at one per second.
CAPACITY = 900
#: Seconds an admin session lasts.
SESSION_TTL = 12 * 3600.0
#: Name of the session cookie.
COOKIE = "hubbub_admin"
#: Server API methods the dashboard may call.
ACTIONS = frozenset({"publish", "history", "presence", "presence_stats", "unsubscribe", "disconnect",
                     "info", "channels"})
#: Most channels one ``/admin/api/channels`` answer lists.
MAX_CHANNELS = 500
#: Seconds the broker's round trip may take before the sample says "no answer".
RTT_TIMEOUT = 0.9
#: Failed logins one address may make per :data:`LOGIN_WINDOW` seconds; then 429 until it ends.
LOGIN_FAILURES = 10
LOGIN_WINDOW = 60.0
#: Addresses whose failed logins are remembered at most (the oldest are forgotten first).
LOGIN_ADDRESSES = 4096


# -- counters and samples (no I/O: tested with an injected clock) -------------------------------


class Ring:
    """The last ``capacity`` samples, oldest first (each a dict with ``t``, unix seconds)."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self._samples: collections.deque[dict[str, Any]] = collections.deque(maxlen=capacity)

    def __len__(self) -> int:
        return len(self._samples)

    def append(self, sample: dict[str, Any]) -> None:
        self._samples.append(sample)

    def since(self, t: float) -> list[dict[str, Any]]:
        """The samples newer than ``t`` (all of them for ``t <= 0``)."""
        out: list[dict[str, Any]] = []
        for sample in reversed(self._samples):
            if sample["t"] <= t:
                break
            out.append(sample)
        out.reverse()
        return out


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _items(node: dict[str, Any]) -> dict[str, float]:
    metrics = node.get("metrics")
    raw = metrics.get("items") if isinstance(metrics, dict) else None
    if not isinstance(raw, dict):
        return {}
    return {k: v for k, v in ((str(k), _number(v)) for k, v in raw.items()) if v is not None}


def _broker(node: dict[str, Any], items: dict[str, float]) -> tuple[int | None, float | None]:
    """(up 1/0/None, round trip in ms or None) from a node's ``broker`` field or its items."""
    broker = node.get("broker")
    if isinstance(broker, dict):
        up = broker.get("up")
        return (None if up is None else int(bool(up))), _number(broker.get("rtt_ms"))
    up_item = items.get("broker_up")
    return (None if up_item is None else int(up_item > 0)), items.get("broker_rtt_ms")


class Sampler:
    """Records, once a second, every node's snapshot into a :class:`Ring`.

    Args:
        source: ``async () -> [node, ...]``, each node the shape of one entry
            of the server API's ``info`` (``uid``, ``name``, ``version``,
            ``num_clients``, ``num_users``, ``num_subs``, ``num_channels``,
            ``uptime``, optionally ``metrics: {"interval", "items"}`` of
            cumulative counters and ``broker: {"name", "up", "rtt_ms"}``).
        clock: unix seconds (injected by tests).
        capacity: samples kept (900: 15 minutes).

    A sample is ``{"t": unix s, "nodes": {uid: point}, "cluster": point}``, a
    point being ``clients``, ``subs``, ``pubs`` (publications/s),
    ``deliveries`` (frames out/s), ``bytes_out`` (bytes/s), ``disconnects``
    (``{code: per second}``), ``broker_up`` (1, 0 or ``None``) and
    ``rtt_ms``. Rates are ``None`` for a node's first sample and for a node
    without ``metrics``; a counter that went down (a restart) counts from 0.
    A node that leaves ``info`` moves to :attr:`gone` with the time it was
    last seen (kept for as long as the ring lasts).
    """

    def __init__(self, source: Callable[[], Awaitable[list[dict[str, Any]]]], *,
                 clock: Callable[[], float] = time.time, capacity: int = CAPACITY) -> None:
        self.source = source
        self.clock = clock
        self.capacity = capacity
        self.ring = Ring(capacity)
        #: the nodes of the last sample, by uid, each with ``last_seen``
        self.nodes: dict[str, dict[str, Any]] = {}
        #: nodes that left, by uid, each with ``last_seen``
        self.gone: dict[str, dict[str, Any]] = {}
        self._previous: dict[str, tuple[float, dict[str, float]]] = {}

    async def tick(self) -> dict[str, Any]:
        """Take one sample now (asks ``source``); returns it."""
        nodes = await self.source()
        return self.record(nodes, self.clock())

    def record(self, nodes: Iterable[dict[str, Any]], now: float) -> dict[str, Any]:
        """Add the sample of ``nodes`` taken at ``now`` (unix seconds); returns it."""
        points: dict[str, dict[str, Any]] = {}
        seen: dict[str, dict[str, Any]] = {}
        previous = self._previous
        current: dict[str, tuple[float, dict[str, float]]] = {}
        for node in nodes:
            uid = node.get("uid")
            if not isinstance(uid, str) or uid in seen:
                continue
            items = _items(node)
            up, rtt = _broker(node, items)
            point: dict[str, Any] = {
                "clients": _number(node.get("num_clients")), "subs": _number(node.get("num_subs")),
                "pubs": None, "deliveries": None, "bytes_out": None, "disconnects": {},
                "broker_up": up, "rtt_ms": rtt,
            }
            before = previous.get(uid)
            if items and before is not None and now > before[0]:
                dt, old = now - before[0], before[1]
                point["pubs"] = _rate(items, old, "publications", dt)
                point["deliveries"] = _rate(items, old, "deliveries" if "deliveries" in items else "messages_out", dt)
                point["bytes_out"] = _rate(items, old, "bytes_out", dt)
                point["disconnects"] = {name[12:]: r for name in items if name.startswith("disconnects.")
                                        if (r := _rate(items, old, name, dt)) > 0}
            if items:
                current[uid] = (now, items)
            points[uid] = point
            seen[uid] = {**{k: v for k, v in node.items() if k != "metrics"}, "last_seen": now}
        for uid, node in self.nodes.items():
            if uid not in seen:
                self.gone[uid] = node
        for uid in seen:
            self.gone.pop(uid, None)
        horizon = now - self.capacity * INTERVAL
        self.gone = {uid: n for uid, n in self.gone.items() if n["last_seen"] >= horizon}
        self.nodes = seen
        self._previous = current
        sample = {"t": now, "nodes": points, "cluster": _cluster(points.values())}
        self.ring.append(sample)
        return sample


def _rate(items: dict[str, float], old: dict[str, float], name: str, dt: float) -> float:
    """Per second over ``dt`` seconds; a counter that went down (a restart) counts from 0."""
    new, was = items.get(name, 0.0), old.get(name, 0.0)
    return (new - was if new >= was else new) / dt


def _cluster(points: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The whole cluster's point: sums, the worst broker state and round trip."""
    total: dict[str, Any] = {"clients": None, "subs": None, "pubs": None, "deliveries": None,
                             "bytes_out": None, "disconnects": {}, "broker_up": None, "rtt_ms": None}
    for point in points:
        for key in ("clients", "subs", "pubs", "deliveries", "bytes_out"):
            if point[key] is not None:
                total[key] = (total[key] or 0.0) + point[key]
        for code, r in point["disconnects"].items():
            total["disconnects"][code] = total["disconnects"].get(code, 0.0) + r
        if point["broker_up"] is not None:
            total["broker_up"] = point["broker_up"] if total["broker_up"] is None else min(
                total["broker_up"], point["broker_up"])
        if point["rtt_ms"] is not None:
            total["rtt_ms"] = max(total["rtt_ms"] or 0.0, point["rtt_ms"])
    return total


# -- sessions -------------------------------------------------------------------------------------


def _session_key(secret: str) -> bytes:
    return hmac.new(b"hubbub admin session", secret.encode(), hashlib.sha256).digest()


def make_session(secret: str, now: float, ttl: float = SESSION_TTL) -> str:
    """A signed session value: ``<expires>.<nonce>.<signature>`` (HMAC-SHA256
    with a key derived from ``secret``, so changing the secret ends every session)."""
    body = f"{int(now + ttl)}.{secrets.token_urlsafe(12)}"
    signature = hmac.new(_session_key(secret), body.encode(), hashlib.sha256).hexdigest()
    return f"{body}.{signature}"


def check_session(secret: str, value: str, now: float) -> bool:
    """Whether ``value`` was made by :func:`make_session` with ``secret`` and has not expired."""
    body, _, signature = value.rpartition(".")
    expected = hmac.new(_session_key(secret), body.encode(), hashlib.sha256).hexdigest()
    if not body or not hmac.compare_digest(signature.encode(), expected.encode()):
        return False
    expires, _, _ = body.partition(".")
    return expires.isdigit() and int(expires) > now


class LoginThrottle:
    """Wrong admin secrets per client address: after :data:`LOGIN_FAILURES`
    within :data:`LOGIN_WINDOW` seconds the address is locked out until the
    window ends. At most :data:`LOGIN_ADDRESSES` addresses are remembered (the
    oldest first forgotten). Times are the caller's clock (seconds)."""

    def __init__(self) -> None:
        self._failures: dict[str, list[float]] = {}

    def _recent(self, address: str, now: float) -> list[float]:
        return [t for t in self._failures.get(address, ()) if t > now - LOGIN_WINDOW]

    def locked(self, address: str, now: float) -> bool:
        """Whether ``address`` is locked out at ``now``."""
        return len(self._recent(address, now)) >= LOGIN_FAILURES

    def failed(self, address: str, now: float) -> None:
        """Count one wrong secret from ``address`` at ``now``."""
        recent = self._recent(address, now)
        self._failures.pop(address, None)
        if len(self._failures) >= LOGIN_ADDRESSES:
            del self._failures[next(iter(self._failures))]
        self._failures[address] = [*recent, now]

    def clear(self, address: str) -> None:
        """Forget the failures of ``address`` (it gave the right secret)."""
        self._failures.pop(address, None)


def _address(request: HTTPRequest) -> str:
    """The client address a request came from (``"?"`` when unknown)."""
    return str(request.client[0]) if request.client else "?"


def _unauthorized() -> HTTPResponse:
    return HTTPResponse.json({"error": "unauthorized: log in at /admin/login"}, 401)


def _cookies(header: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep:
            out[name] = value
    return out


# -- the dashboard ------------------------------------------------------------------------------


class Node(Protocol):
    """What the dashboard reads from a serving node (:class:`hubbub.server.Server`)."""

    config: Config
    hub: Hub
    api: ServerAPI
    cluster: Cluster


def _static(name: str) -> bytes:
    from importlib.resources import files

    return files("hubbub").joinpath("static", name).read_bytes()


LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>hubbub admin: log in</title><link rel="stylesheet" href="/static/admin.css"></head>
<body class="login"><form method="post" action="/admin/login" id="login">
<h1>hubbub admin</h1>
<p>Enter the admin secret (setting <code>admin_secret</code>; on a loopback address without one, the secret
is in the server's log).</p>
{error}<input type="password" name="secret" id="secret" autocomplete="current-password" autofocus required>
<button id="login-button">Log in</button></form></body></html>
"""


class Admin:
    """The dashboard of one node: its routes, its sessions and its sampler.

    Args:
        node: the server (config, hub, api, stats).
        clock: unix seconds (injected by tests).

    ``install(add_http)`` registers the routes; ``start()`` starts the sampler
    task (owned here); ``await close()`` cancels it.
    """

    def __init__(self, node: Node, *, clock: Callable[[], float] = time.time) -> None:
        self.node = node
        self.clock = clock
        self._generated = secrets.token_urlsafe(24)
        self.sampler = Sampler(self.snapshot, clock=clock)
        #: wrong secrets per client address (login form and Bearer alike)
        self.throttle = LoginThrottle()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def enabled(self) -> bool:
        """Whether the dashboard answers now (``Config.admin_enabled``, read
        per request: the host may change before the server starts)."""
        return self.node.config.admin_enabled

    def enabled_for(self, request: HTTPRequest) -> bool:
        """Whether the dashboard answers ``request``: :attr:`enabled`, and on a
        non-loopback address of a node set up for loopback (an ASGI server listening on
        several) only with ``admin_secret`` (``Config.admin_enabled_at``)."""
        return self.node.config.admin_enabled_at(request.local)

    @property
    def uid(self) -> str:
        """This node's ``uid`` in the server API's ``info`` (its cluster's)."""
        return self.node.cluster.uid

    @property
    def secret(self) -> str:
        """The secret that opens a session: ``admin_secret``, or one made for this process."""
        return self.node.config.admin_secret or self._generated

    def install(self, add_http: Callable[[str, Any, str], None]) -> None:
        add_http("/admin", self._page, "the admin dashboard")
        add_http("/admin/login", self._login, "the admin dashboard")
        add_http("/admin/logout", self._logout, "the admin dashboard")
        add_http("/admin/api/{method}", self._api, "the admin dashboard")

    # -- the sampler ------------------------------------------------------------------------

    def start(self) -> None:
        """Start sampling once a second (idempotent); logs the secret if it was made here."""
        if self._task is None and self.enabled:
            if not self.node.config.admin_secret:
                log.info("admin dashboard at /admin; its secret for this process is %s "
                         "(set admin_secret to choose one)", self.secret)
            self._task = asyncio.get_running_loop().create_task(self._run(), name="hubbub admin sampler")

    async def close(self) -> None:
        """Stop sampling (cancels the task and waits for it)."""
        task, self._task = self._task, None
        if task is not None:
            self._closing = True
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while not self._closing:
            try:
                await self.sampler.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("admin sampler failed; next sample in %s s", INTERVAL)
            due = max(due + INTERVAL, loop.time())
            await asyncio.sleep(due - loop.time())

    async def snapshot(self) -> list[dict[str, Any]]:
        """Every live node from the server API's ``info`` (each with its
        counters in ``metrics.items``: :meth:`hubbub.stats.Stats.items`), this
        node's entry with its broker's state and round trip (``broker``)."""
        node = self.node
        broker = node.hub.broker
        rtt_ms: float | None = None
        up = broker.healthy
        if up:
            try:
                async with asyncio.timeout(RTT_TIMEOUT):  # not wait_for: in 3.11 it can swallow a cancel
                    seconds = await broker.round_trip()
            except (BrokerError, TimeoutError):
                up = False
            else:
                rtt_ms = None if seconds is None else seconds * 1000.0
        status, reply = await node.api.call("info", {})
        nodes = reply.get("result", {}).get("nodes", []) if status == 200 else []
        local_uid = self.uid
        out = []
        for entry in nodes:
            if not isinstance(entry, dict):
                continue
            if entry.get("uid") == local_uid:
                entry = {**entry, "broker": {"name": broker.name, "up": up, "rtt_ms": rtt_ms}}
            out.append(entry)
        return out

    # -- authorization -------------------------------------------------------------------------

    def authorized(self, request: HTTPRequest) -> bool:
        """A valid session cookie, or ``Authorization: Bearer <admin secret>``
        from an address that is not locked out (see :meth:`authorize`)."""
        return self.authorize(request) is None

    def authorize(self, request: HTTPRequest) -> HTTPResponse | None:
        """``None`` when ``request`` carries a valid session cookie or the
        admin secret as ``Authorization: Bearer``; else the refusal: 401, or
        429 while its address is locked out.

        A Bearer secret is a guess like the login form's: wrong ones count
        against the address's :data:`LOGIN_FAILURES` and are logged (without
        the secret), and a locked-out address gets 429 even with the right one.
        """
        auth = request.headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            address, now = _address(request), self.clock()
            if self.throttle.locked(address, now):
                return HTTPResponse.json({"error": "too many wrong secrets from this address: wait a minute"}, 429)
            if hmac.compare_digest(auth[7:].strip().encode(), self.secret.encode()):
                return None
            log.warning("admin Bearer secret refused from %r", address)
            self.throttle.failed(address, now)
            return _unauthorized()
        value = _cookies(request.headers.get("cookie", "")).get(COOKIE)
        if value is not None and check_session(self.secret, value, self.clock()):
            return None
        return _unauthorized()

    @staticmethod
    def _same_origin(request: HTTPRequest) -> bool:
        """A browser's POST must come from this host's pages (``Origin``, when sent)."""
        origin = request.headers.get("origin")
        if origin is None:
            return True
        _, _, host = origin.partition("://")
        return host.lower() == request.headers.get("host", "").lower()

    def _cookie(self, request: HTTPRequest, value: str, max_age: int) -> tuple[str, str]:
        secure = "; Secure" if request.headers.get("x-forwarded-proto", "").lower() == "https" else ""
        return ("set-cookie", f"{COOKIE}={value}; Path=/admin; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}")

    # -- handlers ----------------------------------------------------------------------------------

    @staticmethod
    def _off() -> HTTPResponse:
        return HTTPResponse.json({"error": "the admin dashboard is off on a non-loopback address "
                                           "without admin_secret"}, 404)

    async def _page(self, request: HTTPRequest) -> HTTPResponse:
        if not self.enabled_for(request):
            return self._off()
        if not self.authorized(request):
            return HTTPResponse(303, b"log in at /admin/login\n", headers=[("location", "/admin/login")])
        return HTTPResponse(200, _static("admin.html"), "text/html; charset=utf-8",
                            [("cache-control", "no-store"), ("x-frame-options", "DENY")])

    def _login_page(self, status: int, error: str = "") -> HTTPResponse:
        html = LOGIN_PAGE.replace("{error}", f'<p class="error" id="error">{error}</p>' if error else "")
        return HTTPResponse(status, html.encode(), "text/html; charset=utf-8",
                            [("cache-control", "no-store"), ("x-frame-options", "DENY")])

    async def _login(self, request: HTTPRequest) -> HTTPResponse:
        if not self.enabled_for(request):
            return self._off()
        if request.method == "GET":
            if self.authorized(request):
                return HTTPResponse(303, b"logged in\n", headers=[("location", "/admin")])
            return self._login_page(200)
        if request.method != "POST":
            return HTTPResponse.json({"error": "use GET or POST"}, 405)
        if not self._same_origin(request):
            return HTTPResponse.json({"error": "cross-origin request refused"}, 403)
        address, now = _address(request), self.clock()
        if self.throttle.locked(address, now):
            return self._login_page(429, f"Too many wrong secrets from {html.escape(address)}: wait a minute.")
        given = ""
        if request.headers.get("content-type", "").startswith("application/json"):
            try:
                body = loads(request.body or b"{}")
            except ValueError:
                body = None
            if isinstance(body, dict) and isinstance(body.get("secret"), str):
                given = body["secret"]
        else:
            given = dict(parse_qsl(request.body.decode("utf-8", "replace"))).get("secret", "")
        if not given or not hmac.compare_digest(given.encode(), self.secret.encode()):
            log.warning("admin login refused from %r", address)
            self.throttle.failed(address, now)
            return self._login_page(401, "Wrong secret.")
        self.throttle.clear(address)
        session = make_session(self.secret, self.clock())
        return HTTPResponse(303, b"logged in\n", headers=[
            ("location", "/admin"), self._cookie(request, session, int(SESSION_TTL))])

    async def _logout(self, request: HTTPRequest) -> HTTPResponse:
        if request.method != "POST":
            return HTTPResponse.json({"error": "use POST"}, 405)
        return HTTPResponse(303, b"logged out\n", headers=[
            ("location", "/admin/login"), self._cookie(request, "", 0)])

    async def _api(self, request: HTTPRequest) -> HTTPResponse:
        if not self.enabled_for(request):
            return self._off()
        refused = self.authorize(request)
        if refused is not None:
            return refused
        method = request.params.get("method", "")
        if method == "stats":
            return self._stats(request)
        if method not in ACTIONS:
            return HTTPResponse.json({"error": f"unknown method {method!r}"}, 404)
        if method == "channels" and request.method == "GET":
            return await self._channels(request)
        if request.method != "POST":
            return HTTPResponse.json({"error": "use POST"}, 405)
        if not self._same_origin(request):
            return HTTPResponse.json({"error": "cross-origin request refused"}, 403)
        try:
            body = loads(request.body or b"{}")
        except ValueError as exc:
            return HTTPResponse.json({"error": f"malformed JSON body: {exc}"}, 400)
        log.info("admin action %s", method)
        status, reply = await self.node.api.call(method, body)
        return HTTPResponse.json(reply, status)

    def _stats(self, request: HTTPRequest) -> HTTPResponse:
        try:
            since = float(request.query.get("since", "0") or 0)
        except ValueError:
            return HTTPResponse.json({"error": "since must be a number (unix seconds)"}, 400)
        sampler = self.sampler
        return HTTPResponse.json({
            "now": self.clock(), "interval": INTERVAL, "window": sampler.capacity * INTERVAL,
            "node": self.uid, "version": __version__,
            "broker": self.node.hub.broker.name,
            "codes": {str(int(code)): reason for code, reason in DISCONNECT_REASONS.items() if reason},
            "nodes": list(sampler.nodes.values()), "gone": list(sampler.gone.values()),
            "samples": sampler.ring.since(since if math.isfinite(since) else 0.0),
        })

    async def _channels(self, request: HTTPRequest) -> HTTPResponse:
        query = request.query.get("q", "")
        try:
            limit = min(max(int(request.query.get("limit", "100")), 1), MAX_CHANNELS)
        except ValueError:
            return HTTPResponse.json({"error": "limit must be an integer"}, 400)
        status, reply = await self.node.api.call("channels", {})
        if status != 200 or "result" not in reply:
            return HTTPResponse.json(reply, status if status != 200 else 503)
        found = [(name, info.get("num_clients", 0)) for name, info in reply["result"]["channels"].items()
                 if query in name]
        found.sort(key=lambda item: (-item[1], item[0]))
        return HTTPResponse.json({
            "total": len(found),
            "channels": [{"channel": name, "num_clients": n} for name, n in found[:limit]],
        })
