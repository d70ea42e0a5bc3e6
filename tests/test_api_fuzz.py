"""Server API fuzzing: arbitrary bodies for every method over a real socket.

A real server runs in-process on the test's event loop, with an API key, the
namespaces ``h`` (history and presence) and ``plain``, and two anonymous
protocol clients kept connected (so the user-targeted methods act on real
sessions: an absent ``user`` means ``""``, the anonymous user). Hypothesis
runs in a worker thread and POSTs to ``/api/{method}`` with a small blocking
HTTP/1.1 client. Bodies: mostly objects with the method's own parameters,
each usually of the right type (so requests get past validation and reach the
hub and the sessions) and now and then any JSON value; objects whose keys are
mostly real parameter names with arbitrary values; other JSON values; raw
bytes that are not JSON or not UTF-8. Strings include lone surrogates
(written as ``\ud800`` escapes: valid JSON, valid UTF-8).

Property: every answer is a complete HTTP response with a status below 500
and a strict JSON body. Invalid input is the client's fault: 400, or a 200
with an error reply where Centrifugo answers per command (batch, broadcast).

``HUBBUB_FUZZ_EXAMPLES`` sets the example count per method (default 120,
derandomized for CI). The tests at the end pin inputs that got HTTP 500
before the API read its parameters with :mod:`hubbub.validation`.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from hubbub.config import NamespaceOptions
from hubbub.server import Server

from .conftest import TIMEOUT, proto_client

KEY = "k"
METHODS = ["publish", "broadcast", "subscribe", "unsubscribe", "disconnect", "refresh", "presence",
           "presence_stats", "history", "history_remove", "channels", "info", "batch"]
PARAMS = ["channel", "channels", "data", "b64data", "user", "client", "whitelist", "disconnect", "code",
          "reason", "limit", "since", "offset", "epoch", "reverse", "tags", "idempotency_key",
          "exclude_client", "expired", "expire_at", "pattern", "commands"]
EXAMPLES = int(os.environ.get("HUBBUB_FUZZ_EXAMPLES", "0")) or None
#: How many anonymous protocol clients the fuzzing keeps connected.
CLIENTS = 2

SURROGATES = ["\ud800", "\udfff", "a\udc80b", "h:\ud800", "\ud83d"]
SPECIAL_TEXT = [
    "", "h", "h:", "h:1", "h:x", "h:*", "plain", "nope:x", ":", "u", "*", "[", "[!", "h:[", "\\",
    "\x00", "h:\x7f", "\u2028", "x" * 300, "h:" + "é" * 200, "AAAA", "AAA", "not base64!", "eyJ9",
    "3000", "true", "null", "{}",
]
SPECIAL_INTS = [0, 1, -1, 2, 3000, 3500, 4999, 5000, 2999, 10**6, 2**31, 2**63, -(2**63), 10**30, -(10**30)]

# every character category, lone surrogates (Cs) included
texts = st.one_of(
    st.text(st.characters(blacklist_categories=()), max_size=12),
    st.sampled_from(SPECIAL_TEXT),
    st.sampled_from(SURROGATES),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(SPECIAL_INTS),
    st.floats(allow_nan=False, allow_infinity=False),
    texts,
)
keys = st.one_of(st.sampled_from(PARAMS), st.sampled_from(PARAMS), texts)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=12,
)
#: any object, keys mostly real parameter names
params = st.dictionaries(keys, values, max_size=6)

#: plausible values per parameter (mostly valid, so requests get past validation
#: and reach the hub and the sessions), now and then an arbitrary value instead
GOOD_CHANNELS = ["h:1", "h:2", "h:x", "plain:x"]
BAD_CHANNELS = ["nope:x", "h", "", "h:\ud800", "h:\x00", "h:" + "x" * 300]


def mostly(common: st.SearchStrategy[Any], rare: st.SearchStrategy[Any], odds: int = 5) -> st.SearchStrategy[Any]:
    """``common``, or one time in ``odds + 1`` ``rare`` (``st.one_of`` draws its branches evenly)."""
    return st.integers(0, odds).flatmap(lambda i: rare if i == 0 else common)


def loose(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``strategy``, or now and then any JSON value."""
    return mostly(strategy, values)


channel_names = mostly(st.sampled_from(GOOD_CHANNELS), st.one_of(st.sampled_from(BAD_CHANNELS), texts), 3)
ints = st.one_of(st.sampled_from(SPECIAL_INTS), st.integers())


TYPED: dict[str, st.SearchStrategy[Any]] = {
    "channel": loose(channel_names),
    "channels": loose(st.lists(loose(channel_names), max_size=4)),
    "data": values,
    "b64data": loose(st.one_of(st.sampled_from(["", "AAAA", "eyJ9", "AAA", "=="]), texts)),
    "user": loose(st.sampled_from(["", "", "u"])),
    "client": loose(texts),
    "whitelist": loose(st.lists(loose(texts), max_size=3)),
    "disconnect": loose(st.fixed_dictionaries({}, optional={"code": loose(ints), "reason": loose(texts)})),
    "limit": loose(ints),
    "since": loose(st.fixed_dictionaries({}, optional={"offset": loose(ints), "epoch": loose(texts)})),
    "reverse": loose(st.booleans()),
    "tags": loose(st.dictionaries(texts, loose(texts), max_size=3)),
    "idempotency_key": loose(texts),
    "exclude_client": loose(texts),
    "expired": loose(st.booleans()),
    "expire_at": loose(st.one_of(ints, st.floats(allow_nan=False, allow_infinity=False))),
    "pattern": loose(st.one_of(st.sampled_from(["h:*", "*", "[", "h:[!1]", "?"]), texts)),
}
#: each method's parameters, the required ones first (``required`` of them)
METHOD_PARAMS: dict[str, tuple[int, list[str]]] = {
    "publish": (2, ["channel", "data", "b64data", "tags", "idempotency_key", "exclude_client"]),
    "broadcast": (2, ["channels", "data", "b64data", "tags", "idempotency_key", "exclude_client"]),
    "subscribe": (1, ["channel", "user", "client"]),
    "unsubscribe": (1, ["channel", "user", "client"]),
    "disconnect": (0, ["user", "client", "whitelist", "disconnect"]),
    "refresh": (0, ["user", "client", "expired", "expire_at"]),
    "presence": (1, ["channel"]),
    "presence_stats": (1, ["channel"]),
    "history": (1, ["channel", "limit", "since", "reverse"]),
    "history_remove": (1, ["channel"]),
    "channels": (0, ["pattern"]),
    "info": (0, []),
}


def typed_params(method: str) -> st.SearchStrategy[dict[str, Any]]:
    """An object with the method's own parameters (the required ones always), plus some arbitrary keys."""
    required, names = METHOD_PARAMS[method]
    own = st.fixed_dictionaries({k: TYPED[k] for k in names[:required]},
                                optional={k: TYPED[k] for k in names[required:]})
    extra = st.one_of(st.just({}), st.dictionaries(keys, values, max_size=2))
    return st.builds(lambda extra, mine: {**extra, **mine}, extra, own)


#: a batch command: mostly {method: params}, sometimes anything
commands = mostly(
    st.one_of(*[typed_params(m).map(lambda p, m=m: {m: p}) for m in METHOD_PARAMS]),
    st.one_of(
        st.dictionaries(st.one_of(st.sampled_from(METHODS), texts), st.one_of(params, values), max_size=2),
        values,
    ),
    3,
)
TYPED["commands"] = loose(st.lists(commands, max_size=5))
METHOD_PARAMS["batch"] = (1, ["commands"])
raw_bodies = st.one_of(
    st.binary(max_size=64),  # mostly not UTF-8, not JSON
    st.text(max_size=32).map(lambda s: s.encode("utf-8")),
    st.sampled_from([b"", b"{", b"[]", b"null", b"1", b'"x"', b"NaN", b'{"channel":NaN}',
                     b'{"limit":Infinity}', b'{"channel":"\xff"}', b"\xef\xbb\xbf{}",
                     b"[" * 100_000, b'{"a":' * 5000 + b"1" + b"}" * 5000, b'{"limit":1' + b"0" * 5000 + b"}",
                     b'{"channel":"h:1","data":1,"data":2}', b'{"channel":"\\ud800","data":1}']),
)


def _no_constant(name: str) -> Any:
    raise AssertionError(f"{name} in a response: not JSON")


def strict_loads(payload: bytes) -> Any:
    """Parse a response body: UTF-8, JSON without NaN or Infinity."""
    return json.loads(payload.decode("utf-8"), parse_constant=_no_constant)


def dumps(value: Any) -> bytes:
    """JSON with lone surrogates written as ``\\uXXXX`` escapes (still valid JSON and UTF-8)."""
    return json.dumps(value, ensure_ascii=True).encode()


def bodies(method: str) -> st.SearchStrategy[bytes]:
    return mostly(typed_params(method).map(dumps), st.one_of(params.map(dumps), values.map(dumps), raw_bodies), 3)


def post(port: int, method: str, body: bytes) -> tuple[int, bytes]:
    """POST over a fresh socket; (status, body), status 0 when no complete response came."""
    head = (f"POST /api/{method} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-API-Key: {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(head.encode() + body)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    raw = b"".join(chunks)
    header, sep, payload = raw.partition(b"\r\n\r\n")
    if not sep:
        return 0, raw
    lines = header.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    length = next((int(line.split(":", 1)[1]) for line in lines[1:]
                   if line.lower().startswith("content-length:")), None)
    if length is not None and len(payload) != length:
        return 0, raw
    return status, payload


@pytest.fixture
async def fuzz_server(start_server) -> Server:
    return await start_server(
        api_key=KEY,
        namespaces={"h": NamespaceOptions(history_size=10, history_ttl=60, presence=True),
                    "plain": NamespaceOptions()},
    )


@pytest.mark.parametrize("method", METHODS)
async def test_api_never_answers_5xx(fuzz_server: Server, clients: list, method: str) -> None:
    server = fuzz_server
    loop = asyncio.get_running_loop()

    async def top_up() -> None:
        """Keep CLIENTS anonymous sessions connected (disconnect and refresh close them)."""
        while len(server.hub.user_sessions("")) < CLIENTS:
            client = await proto_client(server)
            clients.append(client)
            await client.call("subscribe", {"channel": "h:1"})

    await top_up()
    seen: Counter[str] = Counter()

    @settings(max_examples=EXAMPLES or 120, deadline=None, derandomize=EXAMPLES is None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.filter_too_much, HealthCheck.large_base_example])
    @given(body=bodies(method))
    def fuzz(body: bytes) -> None:
        asyncio.run_coroutine_threadsafe(top_up(), loop).result(TIMEOUT)
        note(f"POST /api/{method} {body[:2000]!r}")
        status, payload = post(server.port, method, body)
        assert status != 0, f"no complete response: {payload[:500]!r}"
        assert status < 500, f"HTTP {status}: {payload[:500]!r}"
        answer = strict_loads(payload)  # strict JSON out, whatever came in
        assert isinstance(answer, dict) and answer, answer
        if status == 200:
            assert {"result", "error", "replies"} & answer.keys(), answer
            error = answer.get("error")
            seen[f"200 error {error['code']}" if error else "200 result"] += 1
        else:
            seen[str(status)] += 1

    await asyncio.to_thread(fuzz)
    print(method, sorted(seen.items()))
    # the inputs reach the methods: some are refused, some are carried out
    assert seen["400"] and seen["200 result"], seen


#: Inputs that got HTTP 500 before the API read every parameter with hubbub.validation
#: (found by the fuzzing above), and the answer they get now: status, and the
#: parameter that the error message names.
WERE_500 = [
    ("publish", {"channel": "\ud800", "data": 1}, 400, "channel"),
    ("publish", {"channel": "h:1", "data": 1, "tags": {"a": "\udfff"}}, 400, "tags"),
    ("broadcast", {"channels": ["h:1", "\ud800"], "data": 1}, 400, "channels"),
    ("subscribe", {"channel": "h:\ud800"}, 400, "channel"),
    ("presence", {"channel": "\ud800"}, 400, "channel"),
    ("presence_stats", {"channel": "\ud800"}, 400, "channel"),
    ("history", {"channel": "h:\ud800"}, 400, "channel"),
    ("history_remove", {"channel": "\ud800"}, 400, "channel"),
    ("disconnect", {"user": "u", "whitelist": [[1]]}, 400, "whitelist"),
    ("disconnect", {"disconnect": {"code": 3000, "reason": "\ud800"}}, 400, "disconnect.reason"),
]


@pytest.mark.parametrize(("method", "params", "status", "names"), WERE_500)
async def test_inputs_that_were_500_get_400(fuzz_server: Server, clients: list, method: str,
                                           params: dict[str, Any], status: int, names: str) -> None:
    clients.append(await proto_client(fuzz_server))  # an anonymous session for disconnect to act on
    got, payload = await asyncio.to_thread(post, fuzz_server.port, method, dumps(params))
    answer = json.loads(payload)
    assert got == status and names in answer["error"], answer


async def test_batch_and_broadcast_answer_bad_input_per_command(fuzz_server: Server) -> None:
    port = fuzz_server.port
    body = {"commands": [{"publish": {"channel": "\ud800", "data": 1}},
                         {"disconnect": {"whitelist": [[1]]}},
                         {"publish": "x"},
                         {"nope": {}},
                         {"info": {}}]}
    status, payload = await asyncio.to_thread(post, port, "batch", dumps(body))
    replies = json.loads(payload)["replies"]
    assert status == 200 and [r.get("error", {}).get("code") for r in replies] == [107, 107, 107, 104, None]
    assert "commands[0].publish.channel" in replies[0]["error"]["message"]
    assert "info" in replies[4]
    # a malformed command: nothing runs, the whole batch gets 400
    status, payload = await asyncio.to_thread(post, port, "batch", dumps({"commands": [{"info": {}}, 1]}))
    assert (status, json.loads(payload)) == (400, {"error": "commands[1] must be an object"})
    status, payload = await asyncio.to_thread(post, port, "broadcast",
                                              dumps({"channels": ["h:1", "", "nope:x"], "data": 1}))
    responses = json.loads(payload)["result"]["responses"]
    assert status == 200 and responses[0]["result"]["offset"] >= 1
    assert [r["error"]["code"] for r in responses[1:]] == [107, 102]
