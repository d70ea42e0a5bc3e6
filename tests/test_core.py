"""The client core (hubbub.core) without sockets: a fake outbox, a fake wire,
an injected clock, the memory broker.

Every rule of :class:`~hubbub.core.ClientCore` (authentication, channel
permissions, limits, validation) is checked here on a minimal subclass that
records its close codes; :class:`~hubbub.core.CommandRate` is driven by hand
with explicit times.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import jwt
import pytest

from hubbub.brokers.base import ClientInfo, Publication
from hubbub.brokers.memory import MemoryBroker
from hubbub.codes import DisconnectCode, ErrorCode
from hubbub.config import Config, NamespaceOptions
from hubbub.core import ClientContext, ClientCore, CommandRate, SessionHooks
from hubbub.errors import BadRequest, Disconnect, ProtocolError
from hubbub.hub import Hub
from hubbub.strictjson import MAX_DEPTH

SECRET = "core-secret-" + "k" * 64  # long enough for HS512 (no PyJWT key-length warning)
#: a wall time safely in the future of the real clock (PyJWT checks ``exp`` against it)
FUTURE = int(time.time()) + 3600


# -- fakes ---------------------------------------------------------------------------------


class FakeClock:
    """A settable clock: ``clock()`` returns ``clock.now``."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeOutbox:
    """Records what the core queues (the Outbox interface)."""

    def __init__(self) -> None:
        self.open = True
        self.frames: list[Any] = []
        self.closes: list[tuple[int, str]] = []

    def send_text(self, payload: bytes) -> None:
        self.frames.append(("text", payload))

    def send_binary(self, payload: bytes) -> None:
        self.frames.append(("binary", payload))

    def deliver(self, frame: Any) -> None:
        self.frames.append(("frame", frame))

    def send_ping(self) -> None:
        self.frames.append(("ping", b""))

    def close(self, code: int, reason: str = "") -> None:
        self.closes.append((code, reason))
        self.open = False


class FakeWire:
    """Encodes a push as ``channel|data`` (and no join/leave pushes)."""

    joinable = True

    def __init__(self) -> None:
        self.publications = 0

    def encode_publication(self, channel: str, pub: Publication) -> bytes:
        self.publications += 1
        return channel.encode() + b"|" + pub.data

    def encode_join(self, channel: str, info: ClientInfo) -> None:
        return None

    def encode_leave(self, channel: str, info: ClientInfo) -> None:
        return None


class Core(ClientCore):
    """The smallest client: records its close codes."""

    __slots__ = ("codes",)

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.codes: list[int] = []

    def disconnect(self, code: int, reason: str | None = None) -> None:
        self.codes.append(int(code))
        self.closed = True
        self.out.close(code, reason or "")


class PublishHook(SessionHooks):
    async def on_publish(self, client: ClientCore, channel: str, data: Any) -> Any:
        return data


class RPCHook(SessionHooks):
    async def on_rpc(self, client: ClientCore, method: str, data: Any) -> Any:
        return data


def token(user: str = "alice", **claims: Any) -> str:
    claims.setdefault("exp", FUTURE)
    return jwt.encode({"sub": user, **claims}, SECRET, algorithm="HS256")


def flat(frames: list[Any]) -> list[bytes]:
    """The bytes a fake outbox got (shared batches joined, as a flush would)."""
    out = []
    for _, frame in frames:
        out.append(frame if isinstance(frame, bytes) else frame.join())
    return out


NAMESPACES = {
    "members": NamespaceOptions(allow_anonymous=False),
    "ro": NamespaceOptions(allow_subscribe_for_client=False, allow_publish_for_client=False),
    "priv": NamespaceOptions(require_subscription_token=True),
    "chat": NamespaceOptions(presence=True, join_leave=True),
    "hist": NamespaceOptions(history_size=10, history_ttl=60),
}


class Env:
    """One hub with the memory broker, its context, and clients on it."""

    def __init__(self, hub: Hub, context: ClientContext, clock: FakeClock, wall: FakeClock) -> None:
        self.hub = hub
        self.context = context
        self.clock = clock
        self.wall = wall
        self.wire = FakeWire()

    def client(self, client_id: str | None = None) -> Core:
        return Core(self.context, FakeOutbox(), self.wire, client_id=client_id)

    async def connected(self, user: str = "", client_id: str | None = None) -> Core:
        core = self.client(client_id)
        await core.authenticate(token(user) if user else "")
        return core


@pytest.fixture
async def make_env() -> AsyncIterator[Callable[..., Awaitable[Env]]]:
    hubs: list[Hub] = []

    async def make(hooks: SessionHooks | None = None, **kw: Any) -> Env:
        kw.setdefault("token_hmac_secret", SECRET)
        kw.setdefault("allow_anonymous", True)
        kw.setdefault("namespaces", dict(NAMESPACES))
        hub = Hub(Config(**kw), MemoryBroker())
        await hub.start()
        hubs.append(hub)
        clock, wall = FakeClock(), FakeClock(time.time())
        return Env(hub, ClientContext(hub, hooks=hooks, clock=clock, wall=wall), clock, wall)

    yield make
    for hub in hubs:
        await hub.close()


@pytest.fixture
async def env(make_env: Callable[..., Awaitable[Env]]) -> Env:
    return await make_env()


@pytest.fixture(params=[False, True], ids=["await", "nowait"])
def nowait(request: pytest.FixtureRequest) -> bool:
    """Run a check through the awaited method and through its ``_nowait`` twin."""
    return request.param


async def authenticate(core: ClientCore, tok: str, nowait: bool) -> Any:
    if nowait:
        result = core.authenticate_nowait(tok)
        assert result is not None, "no hook and no key lookup: the nowait path decides"
        return result
    return await core.authenticate(tok)


async def authorize(core: ClientCore, channel: Any, tok: str, nowait: bool) -> tuple[NamespaceOptions, Any]:
    if nowait:
        result = core.authorize_subscribe_nowait(channel, tok)
        assert result is not None, "no hook and no key lookup: the nowait path decides"
        return result
    return await core.authorize_subscribe(channel, tok)


async def settle() -> None:
    """Let the hub's background broker calls (presence, join/leave) run: the
    memory broker finishes each in one step, so a few loop turns are enough."""
    for _ in range(5):
        await asyncio.sleep(0)


# -- layering ------------------------------------------------------------------------------


def test_core_modules_import_no_network_layer() -> None:
    """The sans-I/O layers import neither websockets nor h11 nor the server."""
    code = (
        "import hubbub.core, hubbub.session, hubbub.relay, hubbub.codec, hubbub.hub, hubbub.endpoint, "
        "hubbub.strictjson, hubbub.validation, hubbub.brokers.memory, sys; "
        "print(sorted(m for m in ('websockets','h11','hubbub.connection','hubbub.server') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# -- CommandRate -------------------------------------------------------------------------------


def test_command_rate_burst_then_refusals() -> None:
    rate = CommandRate(10.0, 5, now=0.0)
    assert [rate.allow(0.0) for _ in range(5)] == [True] * 5
    assert rate.allow(0.0) is False
    assert rate.allow(0.0) is False


def test_command_rate_refills_at_rate() -> None:
    rate = CommandRate(10.0, 5, now=0.0)
    for _ in range(5):
        assert rate.allow(0.0)
    assert not rate.allow(0.0)
    assert rate.allow(0.1)  # one token back after 1/rate seconds
    assert not rate.allow(0.1)
    # a long pause refills to burst, not beyond
    assert [rate.allow(100.0) for _ in range(6)] == [True] * 5 + [False]


def test_command_rate_burst_at_least_one() -> None:
    rate = CommandRate(1.0, 0, now=0.0)
    assert rate.allow(0.0) is True
    assert rate.allow(0.0) is False


def test_command_rate_flood_at_once_disconnects_3013() -> None:
    burst = 5
    rate = CommandRate(10.0, burst, now=0.0)
    refusals = 0
    with pytest.raises(Disconnect) as exc:
        for _ in range(10 * burst):
            if not rate.allow(0.0):
                refusals += 1
    assert exc.value.code == DisconnectCode.TOO_MANY_REQUESTS == 3013
    assert burst <= refusals + 1 <= 2 * burst  # the raising command is the last refusal


def _flood(factor: float, rate: float = 10.0, burst: int = 5, commands: int = 20_000) -> int | None:
    """Commands sent steadily at ``factor`` times the rate: the number of refusals
    (the raising one included) when 3013 came, or None if it never came."""
    limiter = CommandRate(rate, burst, now=0.0)
    refusals = 0
    for i in range(commands):
        try:
            if not limiter.allow(i / (factor * rate)):
                refusals += 1
        except Disconnect as exc:
            assert exc.code == DisconnectCode.TOO_MANY_REQUESTS
            return refusals + 1
    return None


# CommandRate's docstring: a sustained flood at any speed over the rate ends
# within burst + 1 refused commands, however the allowed ones interleave.
@pytest.mark.parametrize("factor", [
    1.5, 2.0, 2.5, 3.0, 5.0, 100.0,
])
def test_command_rate_sustained_flood_ends_within_a_burst(factor: float) -> None:
    burst = 5
    refusals = _flood(factor, burst=burst)
    assert refusals is not None, f"a flood at {factor}x the rate was never closed"
    assert refusals <= burst + 1


def test_command_rate_exactly_at_rate_never_disconnects() -> None:
    # commands every 1/rate seconds for a long while, from a full bucket and
    # from an empty one (the burst spent first)
    assert _flood(1.0, commands=20_000) is None
    limiter = CommandRate(10.0, 5, now=0.0)
    for _ in range(5):
        assert limiter.allow(0.0)
    for i in range(1, 20_000):
        limiter.allow(i / 10.0)  # never raises


def test_command_rate_occasional_refusals_drain_away() -> None:
    burst = 5
    limiter = CommandRate(10.0, burst, now=0.0)
    t = 0.0
    for _ in range(50):  # fifty times: a burst, refusals up to the edge, then a quiet spell
        assert [limiter.allow(t) for _ in range(burst)] == [True] * burst
        assert [limiter.allow(t) for _ in range(burst)] == [False] * burst  # burst refusals: no 3013 yet
        t += 2.0  # 20 tokens' worth: the bucket refills, the refusals drain
    # then the same client at exactly the rate after a spent burst keeps going
    for _ in range(burst):
        limiter.allow(t)
    for i in range(1, 1000):
        limiter.allow(t + i / 10.0)


def test_command_rate_refusals_pile_up_without_drain() -> None:
    """Without the drain of time, burst + 1 refusals close (checks the bound itself)."""
    burst = 3
    limiter = CommandRate(10.0, burst, now=0.0)
    for _ in range(burst):
        limiter.allow(0.0)
    for _ in range(burst):
        assert limiter.allow(0.0) is False
    with pytest.raises(Disconnect):
        limiter.allow(0.0)


def test_command_rate_clock_going_backwards_is_not_a_refill() -> None:
    limiter = CommandRate(10.0, 2, now=100.0)
    assert limiter.allow(100.0) and limiter.allow(100.0)
    assert limiter.allow(50.0) is False


async def test_allow_command_uses_injected_clock(make_env: Callable[..., Awaitable[Env]]) -> None:
    env = await make_env(client_command_rate=2.0, client_command_burst=2)
    core = await env.connected()
    assert core.allow_command() and core.allow_command()
    assert core.allow_command() is False
    env.clock.advance(0.5)  # one token at 2/s
    assert core.allow_command() is True
    assert core.allow_command() is False


async def test_allow_command_without_rate_always_true(env: Env) -> None:
    core = await env.connected()
    assert all(core.allow_command() for _ in range(10_000))


# -- authentication ---------------------------------------------------------------------------


async def test_anonymous_allowed(env: Env, nowait: bool) -> None:
    core = env.client()
    result = await authenticate(core, "", nowait)
    assert result.user == "" and core.user == ""
    assert core.connected and core.expire_at is None and core.conn_info is None
    assert env.hub.user_connections("") == 1


async def test_anonymous_refused_3500(make_env: Callable[..., Awaitable[Env]], nowait: bool) -> None:
    env = await make_env(allow_anonymous=False)
    core = env.client()
    with pytest.raises(Disconnect) as exc:
        await authenticate(core, "", nowait)
    assert exc.value.code == DisconnectCode.INVALID_TOKEN == 3500
    assert exc.value.reason == "connection token required"
    assert not core.connected and env.hub.sessions == {}


async def test_valid_token_sets_user_info_expire_at(env: Env, nowait: bool) -> None:
    core = env.client()
    result = await authenticate(core, token("alice", info={"name": "Alice"}), nowait)
    assert result.user == core.user == "alice"
    assert core.conn_info == b'{"name":"Alice"}'
    assert core.info == ClientInfo(core.client_id, "alice", b'{"name":"Alice"}')
    assert core.expire_at == FUTURE
    assert core.connected and env.hub.user_connections("alice") == 1


async def test_token_channels_claim_in_result(env: Env, nowait: bool) -> None:
    result = await authenticate(env.client(), token("bob", channels=["news", "chat:a"]), nowait)
    assert result.channels == ("news", "chat:a")


async def test_expired_token_109(env: Env, nowait: bool) -> None:
    core = env.client()
    with pytest.raises(ProtocolError) as exc:
        await authenticate(core, token("alice", exp=int(time.time()) - 60), nowait)
    assert exc.value.code == ErrorCode.TOKEN_EXPIRED == 109
    assert not core.connected


async def test_token_expired_by_injected_wall_109(env: Env) -> None:
    """A token PyJWT still accepts, but already past on the context's wall clock."""
    env.wall.now = FUTURE + 1
    with pytest.raises(ProtocolError) as exc:
        await env.client().authenticate(token("alice"))
    assert exc.value.code == ErrorCode.TOKEN_EXPIRED


async def test_subscription_token_as_connection_token_3500(env: Env, nowait: bool) -> None:
    core = env.client()
    with pytest.raises(Disconnect) as exc:
        await authenticate(core, token("alice", channel="priv:a"), nowait)
    assert exc.value.code == DisconnectCode.INVALID_TOKEN
    assert not core.connected and core.user == ""


@pytest.mark.parametrize("bad", ["not-a-jwt", jwt.encode({"sub": "alice"}, "other-secret-" + "x" * 64,
                                                          algorithm="HS256")])
async def test_invalid_token_3500(env: Env, nowait: bool, bad: str) -> None:
    with pytest.raises(Disconnect) as exc:
        await authenticate(env.client(), bad, nowait)
    assert exc.value.code == DisconnectCode.INVALID_TOKEN


async def test_user_connection_limit_3504(make_env: Callable[..., Awaitable[Env]], nowait: bool) -> None:
    env = await make_env(client_user_connection_limit=2)
    first, second, third = env.client(), env.client(), env.client()
    await authenticate(first, token("alice"), nowait)
    await authenticate(second, token("alice"), nowait)
    with pytest.raises(Disconnect) as exc:
        await authenticate(third, token("alice"), nowait)
    assert exc.value.code == DisconnectCode.CONNECTION_LIMIT == 3504
    assert not third.connected and env.hub.user_connections("alice") == 2
    await authenticate(env.client(), token("bob"), nowait)  # per user
    first.on_closed()
    await authenticate(env.client(), token("alice"), nowait)  # a slot is free again
    assert env.hub.user_connections("alice") == 2


async def test_user_connection_limit_ignores_anonymous(make_env: Callable[..., Awaitable[Env]]) -> None:
    env = await make_env(client_user_connection_limit=1)
    for _ in range(3):
        await env.connected()
    assert env.hub.user_connections("") == 3


async def test_authenticate_twice_3501(env: Env) -> None:
    core = await env.connected("alice")
    with pytest.raises(Disconnect) as exc:
        await core.authenticate(token("alice"))
    assert exc.value.code == DisconnectCode.BAD_REQUEST


async def test_nowait_defers_to_active_hooks(make_env: Callable[..., Awaitable[Env]]) -> None:
    env = await make_env(hooks=PublishHook())
    core = env.client()
    assert core.authenticate_nowait("") is None
    assert not core.connected
    await core.authenticate("")
    assert core.authorize_subscribe_nowait("news") is None


async def test_refresh_extends_expiry(env: Env) -> None:
    core = await env.connected("alice")
    await core.refresh(token("alice", exp=FUTURE + 600))
    assert core.expire_at == FUTURE + 600
    with pytest.raises(Disconnect) as exc:
        await core.refresh(token("mallory", exp=FUTURE + 900))
    assert exc.value.code == DisconnectCode.INVALID_TOKEN
    assert core.expire_at == FUTURE + 600
    with pytest.raises(ProtocolError) as perr:
        await core.refresh("")
    assert perr.value.code == ErrorCode.BAD_REQUEST


# -- hooks ------------------------------------------------------------------------------------------


def test_hooks_active() -> None:
    assert SessionHooks().active is False
    assert PublishHook().active is True
    assert RPCHook().active is False  # on_rpc does not change what the core decides


# -- authorize_subscribe ------------------------------------------------------------------------


@pytest.mark.parametrize("channel", [
    "\ud800", "", "a\x00b", "room\n", "tab\there", "\x7f", "x" * 256, "é" * 128, 42, None, ["news"],
], ids=["surrogate", "empty", "nul", "newline", "tab", "del", "256-bytes", "256-bytes-utf8", "int", "none",
        "list"])
async def test_subscribe_invalid_name_107(env: Env, nowait: bool, channel: Any) -> None:
    core = await env.connected()
    with pytest.raises(BadRequest) as exc:
        await authorize(core, channel, "", nowait)
    assert exc.value.code == ErrorCode.BAD_REQUEST == 107
    assert exc.value.temporary is False


async def test_subscribe_longest_name_allowed(env: Env, nowait: bool) -> None:
    core = await env.connected()
    await authorize(core, "x" * 255, "", nowait)
    await authorize(core, "é" * 127, "", nowait)


async def test_subscribe_unknown_namespace_102(env: Env, nowait: bool) -> None:
    core = await env.connected()
    with pytest.raises(ProtocolError) as exc:
        await authorize(core, "nope:room", "", nowait)
    assert exc.value.code == ErrorCode.UNKNOWN_CHANNEL == 102


async def test_subscribe_anonymous_where_not_allowed_103(env: Env, nowait: bool) -> None:
    anonymous = await env.connected()
    with pytest.raises(ProtocolError) as exc:
        await authorize(anonymous, "members:lobby", "", nowait)
    assert exc.value.code == ErrorCode.PERMISSION_DENIED == 103
    await authorize(anonymous, "news", "", nowait)  # the default namespace inherits allow_anonymous=True
    member = await env.connected("alice")
    await authorize(member, "members:lobby", "", nowait)


async def test_subscribe_not_allowed_for_client_103(env: Env, nowait: bool) -> None:
    core = await env.connected("alice")
    with pytest.raises(ProtocolError) as exc:
        await authorize(core, "ro:feed", "", nowait)
    assert exc.value.code == ErrorCode.PERMISSION_DENIED


async def test_subscription_token_missing_103(env: Env, nowait: bool) -> None:
    core = await env.connected("alice")
    with pytest.raises(ProtocolError) as exc:
        await authorize(core, "priv:a", "", nowait)
    assert exc.value.code == ErrorCode.PERMISSION_DENIED


@pytest.mark.parametrize("claims", [
    {"sub": "alice", "channel": "priv:b"},
    {"sub": "bob", "channel": "priv:a"},
    {"sub": "alice"},  # a connection token
], ids=["other-channel", "other-user", "no-channel-claim"])
async def test_subscription_token_wrong_103(env: Env, nowait: bool, claims: dict[str, Any]) -> None:
    core = await env.connected("alice")
    claims = dict(claims)
    sub = claims.pop("sub")
    with pytest.raises(ProtocolError) as exc:
        await authorize(core, "priv:a", token(sub, **claims), nowait)
    assert exc.value.code == ErrorCode.PERMISSION_DENIED


async def test_subscription_token_expired_109(env: Env, nowait: bool) -> None:
    core = await env.connected("alice")
    with pytest.raises(ProtocolError) as exc:
        await authorize(core, "priv:a", token("alice", channel="priv:a", exp=int(time.time()) - 5), nowait)
    assert exc.value.code == ErrorCode.TOKEN_EXPIRED


async def test_subscription_token_valid_gives_chan_info(env: Env, nowait: bool) -> None:
    core = await env.connected("alice")
    ns, chan_info = await authorize(core, "priv:a", token("alice", channel="priv:a", info={"role": "mod"}), nowait)
    assert ns is env.hub.config.namespaces["priv"]
    assert chan_info == {"role": "mod"}
    await core.join("priv:a", ns, chan_info)
    assert core.channels["priv:a"].chan_info == b'{"role":"mod"}'


async def test_subscription_token_without_keys_103(make_env: Callable[..., Awaitable[Env]]) -> None:
    env = await make_env(token_hmac_secret="")
    core = await env.connected()
    with pytest.raises(ProtocolError) as exc:
        await core.authorize_subscribe("priv:a", token("", channel="priv:a"))
    assert exc.value.code == ErrorCode.PERMISSION_DENIED


async def test_already_subscribed_105(env: Env) -> None:
    core = await env.connected()
    ns, _ = await core.authorize_subscribe("news")
    await core.join("news", ns)
    with pytest.raises(ProtocolError) as exc:
        await core.authorize_subscribe("news")
    assert exc.value.code == ErrorCode.ALREADY_SUBSCRIBED


async def test_channel_limit_106(make_env: Callable[..., Awaitable[Env]], nowait: bool) -> None:
    env = await make_env(client_channel_limit=3)
    core = await env.connected()
    for i in range(3):
        ns, info = await authorize(core, f"room{i}", "", nowait)
        await core.join(f"room{i}", ns, info)
    with pytest.raises(ProtocolError) as exc:
        await authorize(core, "room3", "", nowait)
    assert exc.value.code == ErrorCode.LIMIT_EXCEEDED == 106
    core.leave("room0")
    await authorize(core, "room3", "", nowait)


async def test_channel_limit_zero_means_no_limit(make_env: Callable[..., Awaitable[Env]]) -> None:
    env = await make_env(client_channel_limit=0)
    core = await env.connected()
    for i in range(200):  # more than the default limit (128)
        ns, _ = await core.authorize_subscribe(f"room{i}")
        await core.join(f"room{i}", ns)
    assert len(core.channels) == 200


async def test_server_side_skips_permissions(env: Env) -> None:
    anonymous = await env.connected()
    for channel in ("ro:feed", "members:lobby", "priv:a"):
        ns, info = await anonymous.authorize_subscribe(channel, server_side=True)
        assert info is None
        await anonymous.join(channel, ns)
    assert set(anonymous.channels) == {"ro:feed", "members:lobby", "priv:a"}


async def test_server_side_still_validates(env: Env) -> None:
    core = await env.connected()
    with pytest.raises(BadRequest):
        await core.authorize_subscribe("bad\x00", server_side=True)
    with pytest.raises(ProtocolError) as exc:
        await core.authorize_subscribe("nope:x", server_side=True)
    assert exc.value.code == ErrorCode.UNKNOWN_CHANNEL


async def test_server_side_channel_limit_3505(make_env: Callable[..., Awaitable[Env]]) -> None:
    env = await make_env(client_channel_limit=1)
    core = await env.connected()
    await core.server_subscribe("a")
    with pytest.raises(Disconnect) as exc:
        await core.server_subscribe("b")
    assert exc.value.code == DisconnectCode.CHANNEL_LIMIT == 3505


# -- subscriptions and fan-out --------------------------------------------------------------------


async def test_join_delivers_publications_once_per_client(env: Env) -> None:
    a, b = await env.connected(), await env.connected()
    for core in (a, b):
        ns, _ = await core.authorize_subscribe("news")
        await core.join("news", ns)
    await env.hub.publish("news", {"n": 1})
    assert flat(a.out.frames) == flat(b.out.frames) == [b'news|{"n":1}']
    assert env.wire.publications == 1  # encoded once for both
    assert a.leave("news") is True and a.leave("news") is False
    await env.hub.publish("news", {"n": 2})
    assert flat(a.out.frames) == [b'news|{"n":1}']
    assert flat(b.out.frames)[-1] == b'news|{"n":2}'


# -- publish ------------------------------------------------------------------------------------------


async def test_publish_not_allowed_103(env: Env) -> None:
    core = await env.connected("alice")
    with pytest.raises(ProtocolError) as exc:
        await core.publish("ro:feed", {"x": 1})
    assert exc.value.code == ErrorCode.PERMISSION_DENIED
    assert sum(env.hub.stats.publications.values()) == 0


async def test_publish_anonymous_where_not_allowed_103(env: Env) -> None:
    with pytest.raises(ProtocolError) as exc:
        await (await env.connected()).publish("members:lobby", 1)
    assert exc.value.code == ErrorCode.PERMISSION_DENIED


@pytest.mark.parametrize("data", [float("nan"), float("inf"), {"x": [float("-inf")]}, "\ud800", {"\udfff": 1}],
                         ids=["nan", "inf", "nested-inf", "surrogate", "surrogate-key"])
async def test_publish_invalid_data_107_nothing_delivered(env: Env, data: Any) -> None:
    subscriber = await env.connected()
    ns, _ = await subscriber.authorize_subscribe("news")
    await subscriber.join("news", ns)
    publisher = await env.connected("alice")
    with pytest.raises(BadRequest) as exc:
        await publisher.publish("news", data)
    assert exc.value.code == ErrorCode.BAD_REQUEST and not exc.value.temporary
    assert subscriber.out.frames == []
    assert sum(env.hub.stats.publications.values()) == 0


async def test_publish_carries_publisher_info(env: Env) -> None:
    subscriber = await env.connected()
    ns, _ = await subscriber.authorize_subscribe("hist:a")
    await subscriber.join("hist:a", ns)
    publisher = await env.connected("alice")
    position = await publisher.publish("hist:a", {"x": 1})
    assert position.offset == 1
    history = await subscriber.history("hist:a", limit=10)
    assert history["publications"] == [{"data": {"x": 1}, "offset": 1,
                                         "info": {"user": "alice", "client": publisher.client_id}}]


async def test_publish_exclude_publisher(make_env: Callable[..., Awaitable[Env]]) -> None:
    env = await make_env(namespaces={"quiet": NamespaceOptions(exclude_publisher=True)})
    a, b = await env.connected(), await env.connected()
    for core in (a, b):
        ns, _ = await core.authorize_subscribe("quiet:x")
        await core.join("quiet:x", ns)
    await a.publish("quiet:x", "hi")
    assert a.out.frames == []
    assert flat(b.out.frames) == [b'quiet:x|"hi"']


async def test_history_and_presence_permissions(env: Env) -> None:
    core = await env.connected()
    with pytest.raises(ProtocolError) as exc:
        await core.history("news")  # no history in the default namespace
    assert exc.value.code == ErrorCode.NOT_AVAILABLE
    with pytest.raises(ProtocolError) as exc:
        await core.presence("news")
    assert exc.value.code == ErrorCode.NOT_AVAILABLE
    ns, _ = await core.authorize_subscribe("chat:a")
    await core.join("chat:a", ns)
    await settle()  # the hub adds presence in the background
    presence = await core.presence("chat:a")
    assert list(presence["presence"]) == [core.client_id]


async def test_history_of_deep_value_is_a_protocol_error(env: Env) -> None:
    """What Hub.publish accepts, ClientCore.history must be able to answer: a value nested
    deeper than ``MAX_DEPTH`` (which ``loads`` refuses) is refused at publish with 107."""
    deep: Any = 0
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    core = await env.connected()
    with pytest.raises(BadRequest):
        await env.hub.publish("hist:deep", deep)  # refused at publish: history can always answer
    assert (await core.history("hist:deep", limit=10))["publications"] == []


# -- expiry and the end -------------------------------------------------------------------------------


async def test_check_expiry_with_injected_wall_3005(env: Env) -> None:
    core = await env.connected("alice")
    assert core.expire_at == FUTURE
    env.wall.now = FUTURE - 1
    core.check_expiry(env.context.wall())
    assert core.codes == []
    env.wall.now = FUTURE
    core.check_expiry(env.context.wall())
    assert core.codes == [DisconnectCode.EXPIRED] and core.out.closes[0][0] == 3005
    env.wall.advance(10)
    core.check_expiry(env.context.wall())
    assert core.codes == [DisconnectCode.EXPIRED]  # once


async def test_check_expiry_without_exp_never(env: Env) -> None:
    core = await env.connected()
    core.check_expiry(float("inf"))
    assert core.codes == []


async def test_on_closed_leaves_every_channel(env: Env) -> None:
    core = await env.connected("alice")
    other = await env.connected("bob")
    for channel in ("news", "chat:a", "hist:b", "members:c"):
        ns, _ = await core.authorize_subscribe(channel)
        await core.join(channel, ns)
    ns, _ = await other.authorize_subscribe("news")
    await other.join("news", ns)
    assert env.hub.channels() == {"news": 2, "chat:a": 1, "hist:b": 1, "members:c": 1}
    core.on_closed()
    assert env.hub.channels() == {"news": 1}
    assert core.channels == {} and not core.connected and core.closed
    assert env.hub.user_connections("alice") == 0
    core.on_closed()  # idempotent
    other.on_closed()
    assert env.hub.channels() == {}
    assert env.hub.sessions == {}


async def test_join_after_close_leaves_again(env: Env) -> None:
    core = await env.connected()
    ns, _ = await core.authorize_subscribe("hist:x")
    core.on_closed()
    await core.join("hist:x", ns)  # a join that was under way when the connection went
    assert core.channels == {} and env.hub.channels() == {}


async def test_ping_pong_no_pong_closes(env: Env) -> None:
    core = await env.connected()
    core.ping()
    assert core.out.frames == [("ping", b"")]
    core.pong()
    core.check_pong()
    assert core.codes == []
    core.ping()
    core.check_pong()
    assert core.codes == [DisconnectCode.NO_PONG]


async def test_context_at_a_public_address_refuses_anonymous_and_follows_the_hooks() -> None:
    hub = Hub(Config(), MemoryBroker())
    context = ClientContext(hub)
    assert context.anonymous  # loopback settings, no token key
    assert context.at("") is context and context.at("127.0.0.1") is context
    exposed = context.at("192.0.2.7")
    assert exposed is not context and not exposed.anonymous
    assert exposed.hub is hub and exposed.verifier is context.verifier
    hooks = SessionHooks()
    context.hooks = hooks  # set after the first public connection
    assert context.at("192.0.2.7") is exposed and exposed.hooks is hooks
    core = ClientCore(exposed, FakeOutbox(), FakeWire())
    with pytest.raises(Disconnect) as info:
        core.authenticate_nowait("")
    assert info.value.code == DisconnectCode.INVALID_TOKEN
