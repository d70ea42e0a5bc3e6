"""Every Python block of docs/tutorial.md and docs/howto/*.md runs as written and does what its
page says; and examples/hug_api runs with one ``hubbub run``.

Each ```python block starts with a comment naming its file (``# chat.py``); ``# chat.py,
continued`` adds the block to the end of that file. A test writes a page's files to a temporary
directory, serves them for real (``hubbub run``, uvicorn, a WSGI server, all on port 0), connects
real clients as the page says, and checks what the page says comes out. The one change made to a
block is the port: a client script that connects to ``127.0.0.1:8000`` is pointed at the port
the server got. :data:`FILES` lists the files each page defines, so a new block fails
:func:`test_every_python_block_is_a_file_a_test_runs` until a test runs it. Each how-to starts
with its install line (``pip install -e ".[fastapi]"``), and
:func:`test_each_howto_starts_with_an_install_line_that_provides_what_it_uses` checks that the
extras it names exist and install every module the page imports and every command it runs.
"""

from __future__ import annotations

import ast
import asyncio
import importlib
import importlib.metadata
import importlib.util
import json
import os
import queue
import re
import shlex
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import hubbub
from hubbub._version import __version__

from .conftest import ROOT, TIMEOUT, ProtoClient, ServeProcess
from .redis_server import redis_server  # noqa: F401
from .test_asgi import CentrifugeSubscriber, ahttp, until, uvicorn_serving

DOCS = ROOT / "docs"

#: the files each page defines with its python blocks
FILES = {
    "tutorial.md": {"chat.py", "prices.py", "hooks.py", "secure.py", "issue_token.py", "shared.py"},
    "howto/fastapi.md": {"main.py", "listen.py", "star.py", "web.py"},
    "howto/django.md": {"mysite/realtime.py", "mysite/asgi.py", "mysite/views.py", "mysite/urls.py", "serve.py"},
    "howto/publish-from-views.md": {"shop_flask.py", "shop/hub.py", "shop/views.py", "shop/urls.py"},
    "howto/install.md": {"check_install.py"},
    "howto/http-routes.md": {"routes.py", "collide.py"},
    "howto/socketio.md": {"chat.py", "chat_client.py"},
}

_MARK = re.compile(r"^# ([\w./-]+\.py)(, continued)?$")
_BLOCK = re.compile(r"^```python\n(.*?)^```[ \t]*$", re.S | re.M)


def doc_files(doc: str) -> dict[str, str]:
    """The files a page defines: name -> source, from its python blocks in order."""
    files: dict[str, str] = {}
    for code in _BLOCK.findall((DOCS / doc).read_text()):
        first = code.splitlines()[0] if code.strip() else ""
        m = _MARK.match(first)
        assert m, f"{doc}: a python block must start with '# FILE.py' (or '# FILE.py, continued'): {first!r}"
        name, continued = m.group(1), m.group(2)
        if continued:
            assert name in files, f"{doc}: {name} continued before it starts"
            files[name] += "\n\n" + code
        else:
            assert name not in files, f"{doc}: {name} starts twice"
            files[name] = code
    return files


def write_doc(doc: str, directory: Path) -> Path:
    """Write the page's files under ``directory`` (packages get an ``__init__.py``, as
    ``django-admin startproject`` makes them); returns ``directory``."""
    for name, code in doc_files(doc).items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.parent != directory and not (path.parent / "__init__.py").exists():
            (path.parent / "__init__.py").write_text("")
        path.write_text(code)
    return directory


def with_port(code: str, port: int) -> str:
    """The page's client code, pointed at the port the server got."""
    assert "127.0.0.1:8000" in code, "the block does not connect to 127.0.0.1:8000"
    return code.replace("127.0.0.1:8000", f"127.0.0.1:{port}")


def python_env(directory: Path, **extra: str) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(directory), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


def test_every_python_block_is_a_file_a_test_runs() -> None:
    pages = {"tutorial.md"} | {f"howto/{p.name}" for p in (DOCS / "howto").glob("*.md")}
    assert pages == set(FILES), "a page without a test in tests/test_howtos.py, or a test without its page"
    for doc, names in FILES.items():
        assert set(doc_files(doc)) == names, doc


# -- install lines -------------------------------------------------------------------------------
#
# Every how-to starts with its install line: a ```sh block with `pip install` before its first
# section, naming hubbub (`.`, `../hubbub` or `hubbub`) with the extras the page needs, plus any
# other package. The suite's environment is made by `pip install -e ".[test]"` (dev.py), and the
# test extra pulls in `hubbub[...]` with the same extras: the pages' packages are installed here
# the way each page says, so checking the line against what is installed checks the page.

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
HUBBUB_REQUIREMENT = re.compile(r"(?:\.|\.\./hubbub|hubbub)(?:\[([\w,-]+)\])?")


def install_line(doc: str) -> tuple[set[str], list[Requirement]]:
    """The page's install line: hubbub's extras, and the other packages it names."""
    head = (DOCS / doc).read_text().split("\n## ", 1)[0]
    commands = [line.split(" #")[0].strip() for block in re.findall(r"^```sh\n(.*?)^```", head, re.S | re.M)
                for line in block.splitlines() if "pip install" in line]
    assert commands, f"{doc} does not start with its install line (```sh with `pip install`, before its first section)"
    words = shlex.split(commands[0])
    extras: set[str] | None = None
    others = []
    for word in words[words.index("install") + 1:]:
        if word.startswith("-"):
            continue
        m = HUBBUB_REQUIREMENT.fullmatch(word)
        if m:
            extras = set(filter(None, (m.group(1) or "").split(",")))
        else:
            others.append(Requirement(word))
    assert extras is not None, f"{doc}: the install line does not install hubbub: {commands[0]!r}"
    return extras, others


def hubbub_requirements(extras: set[str]) -> list[Requirement]:
    """hubbub's own requirements with ``extras``, from pyproject.toml (each extra must exist)."""
    optional = PYPROJECT["optional-dependencies"]
    unknown = extras - set(optional)
    assert not unknown, f"no such extra in pyproject.toml: {sorted(unknown)} (there are {sorted(optional)})"
    return [Requirement(r) for r in PYPROJECT["dependencies"]] + [Requirement(r) for e in sorted(extras)
                                                                 for r in optional[e]]


def resolve(requirements: list[Requirement]) -> set[str]:
    """Every distribution ``requirements`` bring, with their own requirements (as installed here)."""
    seen: set[str] = set()
    todo = list(requirements)
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name == "hubbub":
            todo += hubbub_requirements(set(req.extras))
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise AssertionError(f"{req} is not installed: the test extra must install it") from None
        assert req.specifier.contains(dist.version, prereleases=True), f"{req}: {dist.version} installed"
        if name in seen:
            continue
        seen.add(name)
        for text in dist.requires or []:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in req.extras | {""}):
                todo.append(sub)
    return seen


def page_imports(doc: str) -> set[str]:
    """The top-level modules the page's code imports, other than its own files."""
    files = doc_files(doc)
    own = {name.split("/")[0].removesuffix(".py") for name in files}
    found: set[str] = set()
    for code in files.values():
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - own - set(sys.stdlib_module_names)


HOWTOS = sorted(doc for doc in FILES if doc.startswith("howto/"))


@pytest.mark.parametrize("doc", HOWTOS)
def test_each_howto_starts_with_an_install_line_that_provides_what_it_uses(doc: str) -> None:
    extras, others = install_line(doc)
    provided = resolve([Requirement(f"hubbub[{','.join(sorted(extras))}]" if extras else "hubbub"), *others])
    provided.add("hubbub")
    owners = importlib.metadata.packages_distributions()
    for module in sorted(page_imports(doc)):
        dists = {canonicalize_name(d) for d in owners.get(module, [])}
        assert dists & provided, f"{doc} imports {module}, which its install line does not install (from {dists})"
    # the commands the page runs from the virtual environment: .venv/bin/NAME
    scripts = {"python", "pip", *PYPROJECT["scripts"]}
    for name in provided - {"hubbub"}:
        scripts |= {ep.name for ep in importlib.metadata.distribution(name).entry_points
                    if ep.group == "console_scripts"}
    for command in sorted(set(re.findall(r"\.venv/bin/([\w.-]+)", (DOCS / doc).read_text()))):
        assert command in scripts, f"{doc} runs .venv/bin/{command}, which its install line does not install"
    # and the suite installs them the same way: the test extra names hubbub with these extras
    test_extra = [Requirement(r) for r in PYPROJECT["optional-dependencies"]["test"]]
    in_test = set().union(*(r.extras for r in test_extra if canonicalize_name(r.name) == "hubbub"))
    assert extras <= in_test, f"the test extra does not install hubbub[{','.join(sorted(extras - in_test))}]"
    assert {canonicalize_name(r.name) for r in others} <= {canonicalize_name(r.name) for r in test_extra}


# -- processes ---------------------------------------------------------------------------------


class Proc:
    """A server process whose port is read from its log (``... on http://HOST:PORT``)."""

    PORT = re.compile(r"(?:listening|running) on http://[^ :]+:(\d+)")

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     cwd=cwd, env=env)
        self.lines: list[str] = []
        self._found: queue.Queue[int] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            self.port = self._found.get(timeout=2 * TIMEOUT)
        except queue.Empty:
            self.stop()
            raise RuntimeError(f"{argv} did not start:\n{self.output()}") from None

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            m = self.PORT.search(line)
            if m and self._found.empty():
                self._found.put(int(m.group(1)))

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def stop(self, timeout: float = TIMEOUT) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()

    def output(self) -> str:
        if self.proc.poll() is not None:
            self._reader.join(TIMEOUT)
        return "".join(self.lines)


@pytest.fixture
def procs() -> Iterator[Any]:
    """``procs(argv, cwd, env)`` starts a :class:`Proc`; all are stopped at the end."""
    started: list[Proc] = []

    def start(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> Proc:
        p = Proc(argv, cwd, env or python_env(cwd))
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


def hubbub_run(procs: Any, directory: Path, target: str, *args: str, **env: str) -> Proc:
    return procs([sys.executable, "-m", "hubbub", "run", target, "--port", "0", *args], directory,
                 python_env(directory, **env))


#: test scaffolding: serve a WSGI application (``module:attr``, or ``django`` for the project's)
#: on a free port with the standard library's server
WSGI_RUNNER = '''
import importlib, sys
from wsgiref.simple_server import WSGIRequestHandler, make_server

target = sys.argv[1]
if target == "django":
    from django.core.wsgi import get_wsgi_application
    app = get_wsgi_application()
else:
    module, attr = target.split(":")
    app = getattr(importlib.import_module(module), attr)


class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass


server = make_server("127.0.0.1", 0, app, handler_class=Quiet)
print(f"listening on http://127.0.0.1:{server.server_port}", flush=True)
server.serve_forever()
'''


def wsgi_serve(procs: Any, directory: Path, target: str, **env: str) -> Proc:
    runner = directory / "_wsgi_runner.py"
    runner.write_text(WSGI_RUNNER)
    return procs([sys.executable, str(runner), target], directory, python_env(directory, **env))


async def run_python(directory: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Run ``python ARGS`` in ``directory``; its stdout (it must exit 0)."""
    proc = await asyncio.create_subprocess_exec(sys.executable, *args, cwd=directory, env=env or python_env(directory),
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 2 * TIMEOUT)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def hubbub_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "hubbub", *args, cwd=ROOT,
                                                env=env or dict(os.environ),
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 2 * TIMEOUT)
    assert proc.returncode is not None
    return subprocess.CompletedProcess(args, proc.returncode, out.decode(), err.decode())


class Consumer:
    """``hubbub consume URL CHANNEL --count N``: started, and ready once it says it subscribed."""

    def __init__(self, url: str, channel: str, count: int, *args: str) -> None:
        self.args = ["consume", url, channel, "--count", str(count), *args]
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> Consumer:
        self.proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "hubbub", *self.args, cwd=ROOT,
                                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self.proc.stderr is not None
        line = await asyncio.wait_for(self.proc.stderr.readline(), TIMEOUT)
        assert line.decode().startswith("hubbub: subscribed to"), line
        return self

    async def lines(self) -> list[str]:
        assert self.proc is not None
        out, err = await asyncio.wait_for(self.proc.communicate(), TIMEOUT)
        assert self.proc.returncode == 0, err.decode()
        return out.decode().splitlines()

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()


async def proto(url: str, **kw: Any) -> ProtoClient:
    """A bare protocol client (not yet connected)."""
    client = ProtoClient(await websockets.connect(url, ping_interval=None, **kw))
    client._buffer = []
    return client


async def relay_ready(url: str) -> Any:
    """A relay client that is surely subscribed: its own first message came back."""
    ws = await websockets.connect(url)
    await ws.send("ready?")
    assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "ready?"
    return ws


def fresh_import(monkeypatch: pytest.MonkeyPatch, directory: Path, *names: str) -> list[Any]:
    """Import the page's modules from ``directory``, anew (they hold apps, which run once)."""
    monkeypatch.syspath_prepend(str(directory))
    for name in names:
        monkeypatch.delitem(sys.modules, name, raising=False)
    return [importlib.import_module(name) for name in names]


# -- docs/tutorial.md ----------------------------------------------------------------------------


async def test_tutorial_endpoints_rooms_and_producer(tmp_path: Path, procs: Any) -> None:
    server = hubbub_run(procs, write_doc("tutorial.md", tmp_path), "chat:app")

    # 1. the class: welcome, an answer per message, "bye <id>" when the client leaves
    async with websockets.connect(f"{server.ws}/chat") as ws:
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "welcome"
        await ws.send("hi")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "you said: hi"
    # ... and the function
    async with websockets.connect(f"{server.ws}/echo") as ws:
        await ws.send("ping")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "ping"
        await ws.send(b"\x00")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == b"\x00"

    # 2. rooms: every subscriber gets {"from":"<sender's id>","text":...}, the sender too
    said = re.compile(r'^\{"from":"[0-9a-f]{8}","text":"(.*)"\}$')
    async with websockets.connect(f"{server.ws}/rooms/lobby") as a:
        await a.send("a here")  # handled after connect: a is subscribed once its own message is back
        assert said.match(await asyncio.wait_for(a.recv(), TIMEOUT)).group(1) == "a here"
        async with websockets.connect(f"{server.ws}/rooms/lobby") as b, \
                websockets.connect(f"{server.ws}/rooms/elsewhere") as other:
            await b.send("hi")
            from_b = await asyncio.wait_for(b.recv(), TIMEOUT)
            assert said.match(from_b).group(1) == "hi"
            assert await asyncio.wait_for(a.recv(), TIMEOUT) == from_b
            await a.send("hello b")
            assert said.match(await asyncio.wait_for(b.recv(), TIMEOUT)).group(1) == "hello b"
            await other.send("alone")  # another room: only its own client hears it
            assert said.match(await asyncio.wait_for(other.recv(), TIMEOUT)).group(1) == "alone"
            assert said.match(await asyncio.wait_for(a.recv(), TIMEOUT)).group(1) == "hello b"

    # 3. producer: the time, once a second
    async with websockets.connect(f"{server.ws}/clock") as ws:
        assert re.fullmatch(r"\d\d:\d\d:\d\d", await asyncio.wait_for(ws.recv(), TIMEOUT))
        assert re.fullmatch(r"\d\d:\d\d:\d\d", await asyncio.wait_for(ws.recv(), TIMEOUT))

    assert server.stop() == 0
    assert re.search(r"^bye [0-9a-f-]{36}$", server.output(), re.M), server.output()


async def test_tutorial_history_and_recovery(tmp_path: Path, procs: Any) -> None:
    server = hubbub_run(procs, write_doc("tutorial.md", tmp_path), "prices:app")
    url = f"{server.ws}/connection/websocket"
    first = await proto(url)
    try:
        assert "connect" in await first.call("connect", {})
        sub = (await first.call("subscribe", {"channel": "prices:ACME"}))["subscribe"]
        assert sub["recoverable"] is True  # force_recovery
        epoch = sub["epoch"]
        await first.call("publish", {"channel": "prices:ACME", "data": {"price": 1}})
        push = await first.next_push()
        assert push["pub"]["data"] == {"price": 1} and push["pub"]["offset"] == 1
    finally:
        await first.ws.close()
    # published while nobody listens
    out = await hubbub_cli("produce", server.ws, "prices:ACME", '{"price": 2}', '{"price": 3}')
    assert out.returncode == 0, out.stderr
    again = await proto(url)
    try:
        assert "connect" in await again.call("connect", {})
        reply = (await again.call("subscribe", {"channel": "prices:ACME", "recover": True, "epoch": epoch,
                                                "offset": 1}))["subscribe"]
        assert reply["recovered"] is True
        assert [(p["offset"], p["data"]) for p in reply["publications"]] == [(2, {"price": 2}), (3, {"price": 3})]
        # an undeclared namespace is unknown; the default namespace always exists
        assert (await again.call("subscribe", {"channel": "news:x"}))["error"]["code"] == 102
        assert "subscribe" in await again.call("subscribe", {"channel": "news"})
    finally:
        await again.ws.close()
    assert server.stop() == 0

    # the page's commands: the ticker and a consumer that recovers
    ticker = ServeProcess("examples.ticker:app", command="run")
    try:
        out = await hubbub_cli("consume", ticker.url, "prices:ACME", "--recover", "--count", "2")
        assert out.returncode == 0, out.stderr
        assert [json.loads(line)["symbol"] for line in out.stdout.splitlines()] == ["ACME", "ACME"]
    finally:
        assert ticker.stop() == 0


async def test_tutorial_hooks(tmp_path: Path, procs: Any) -> None:
    server = hubbub_run(procs, write_doc("tutorial.md", tmp_path), "hooks:app")
    url = f"{server.ws}/connection/websocket"

    stranger = await proto(url)
    await stranger.send({"id": 1, "connect": {}})
    assert await stranger.closed() == (3500, "unauthorized")

    alice = await proto(url, additional_headers={"Cookie": "session=alice-s3cret"})
    root = await proto(url, additional_headers={"Cookie": "session=root-s3cret"})
    try:
        assert "connect" in await alice.call("connect", {})
        assert "subscribe" in await alice.call("subscribe", {"channel": "news"})
        assert (await alice.call("subscribe", {"channel": "admin:audit"}))["error"]["code"] == 103
        await alice.call("publish", {"channel": "news", "data": "hi"})
        assert (await alice.next_push())["pub"]["data"] == {"text": "hi", "by": "alice"}
        assert (await alice.call("rpc", {"method": "whoami"}))["rpc"] == {"data": {"user": "alice"}}
        assert "connect" in await root.call("connect", {})
        assert "subscribe" in await root.call("subscribe", {"channel": "admin:audit"})
    finally:
        await alice.ws.close()
        await root.ws.close()
    assert server.stop() == 0


def token(secret: str, **claims: Any) -> str:
    import jwt

    return jwt.encode(claims, secret, algorithm="HS256")


async def test_tutorial_tokens(tmp_path: Path, procs: Any) -> None:
    secret = "tutorial-secret-" + "x" * 32
    directory = write_doc("tutorial.md", tmp_path)
    server = hubbub_run(procs, directory, "secure:app", HUBBUB_TOKEN_HMAC_SECRET=secret)
    alice = (await run_python(directory, "issue_token.py", "alice",
                              env=python_env(directory, HUBBUB_TOKEN_HMAC_SECRET=secret))).strip()
    assert alice.count(".") == 2

    consumer = await Consumer(server.ws, "news", 1, "--token", alice).start()
    try:
        out = await hubbub_cli("produce", server.ws, "news", "hello", "--token", alice)
        assert out.returncode == 0, out.stderr
        assert await consumer.lines() == ['"hello"']
    finally:
        consumer.kill()
    # without a token: refused
    out = await hubbub_cli("consume", server.ws, "news", "--count", "1")
    assert out.returncode == 1 and "subscribed" not in out.stderr, out.stderr

    url = f"{server.ws}/connection/websocket"
    expired = await proto(url)
    try:
        reply = await expired.call("connect", {"token": token(secret, sub="bob", exp=int(time.time()) - 10)})
        assert reply["error"]["code"] == 109
    finally:
        await expired.ws.close()
    invalid = await proto(url)
    await invalid.send({"id": 1, "connect": {"token": token("another secret, " + "w" * 32, sub="eve")}})
    assert (await invalid.closed())[0] == 3500
    short = await proto(url)
    assert "connect" in await short.call("connect", {"token": token(secret, sub="carol", exp=int(time.time()) + 2)})
    assert (await short.closed())[0] == 3005  # no refresh: closed when the token runs out
    assert server.stop() == 0


async def test_tutorial_redis(tmp_path: Path, procs: Any, redis_server: Any) -> None:  # noqa: F811
    secret = "tutorial-secret-" + "y" * 32
    directory = write_doc("tutorial.md", tmp_path)
    env = {"HUBBUB_TOKEN_HMAC_SECRET": secret, "REDIS_URL": redis_server.url}
    first = hubbub_run(procs, directory, "shared:app", **env)
    second = hubbub_run(procs, directory, "shared:app", **env)
    jwt_ = token(secret, sub="alice", exp=int(time.time()) + 600)
    consumer = await Consumer(first.ws, "prices:ACME", 2, "--token", jwt_).start()
    try:
        out = await hubbub_cli("produce", second.ws, "prices:ACME", '{"price": 1}', '{"price": 2}', "--token", jwt_)
        assert out.returncode == 0, out.stderr
        assert await consumer.lines() == ['{"price":1}', '{"price":2}']
    finally:
        consumer.kill()


# -- docs/howto/fastapi.md ------------------------------------------------------------------------


async def test_fastapi_mount_with_lifespan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = write_doc("howto/fastapi.md", tmp_path)
    (main,) = fresh_import(monkeypatch, directory, "main")
    async with uvicorn_serving(main.api) as port:
        assert main.rt.server.started  # before any request
        async with websockets.connect(f"ws://127.0.0.1:{port}/rt/echo") as ws:
            await ws.send("hi")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "hi"

        listen = directory / "listen_here.py"
        listen.write_text(with_port((directory / "listen.py").read_text(), port))
        proc = await asyncio.create_subprocess_exec(sys.executable, str(listen), stdout=subprocess.PIPE,
                                                    stderr=subprocess.PIPE)
        try:
            async with CentrifugeSubscriber(f"ws://127.0.0.1:{port}/rt/connection/websocket", "news") as sdk:
                await until(lambda: main.rt.hub.channels().get("news", 0) >= 2, "the listener and the SDK")
                status, body = await ahttp("POST", f"http://127.0.0.1:{port}/notify?headline=hello", b"")
                assert (status, body) == (200, b'{"published":"hello"}')
                out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
                assert out.decode() == "{'headline': 'hello'}\n", err.decode()
                assert await asyncio.wait_for(sdk.received.get(), TIMEOUT) == {"headline": "hello"}
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

        status, body = await ahttp("GET", f"http://127.0.0.1:{port}/rt/health")
        assert status == 200 and json.loads(body)["status"] == "ok"
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(f"ws://127.0.0.1:{port}/rt/nowhere")
        assert refused.value.response.status_code == 404
        assert b"endpoints: " in refused.value.response.body and b"/echo" in refused.value.response.body


async def test_starlette_mount_with_lifespan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = write_doc("howto/fastapi.md", tmp_path)
    main, star = fresh_import(monkeypatch, directory, "main", "star")
    assert star.rt is main.rt
    async with uvicorn_serving(star.app) as port:
        assert main.rt.server.started
        async with websockets.connect(f"ws://127.0.0.1:{port}/rt/echo") as ws:
            await ws.send("via starlette")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "via starlette"
    assert main.rt.server.closing  # stopped with Starlette


async def test_fastapi_inside_hubbub(tmp_path: Path, procs: Any) -> None:
    server = hubbub_run(procs, write_doc("howto/fastapi.md", tmp_path), "web:app")
    assert await ahttp("GET", f"{server.http}/items/3") == (200, b'{"item":3}')
    async with websockets.connect(f"{server.ws}/echo") as ws:
        await ws.send("hi")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "hi"
    status, body = await ahttp("GET", f"{server.http}/health")
    assert status == 200
    assert server.stop() == 0


async def test_fastapi_websocket_routes_are_not_reached_through_http() -> None:
    """What the page says about ``@api.websocket`` with ``App(http=api)``."""
    from fastapi import FastAPI, WebSocket

    api = FastAPI()

    @api.websocket("/fws")
    async def fws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("fastapi")

    app = hubbub.App(port=0, http=api)
    await app.start()
    try:
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(f"ws://127.0.0.1:{app.server.port}/fws")
        assert refused.value.response.status_code == 404
    finally:
        await app.stop()


# -- docs/howto/django.md --------------------------------------------------------------------------

DJANGO_SETTINGS = '''
SECRET_KEY = "tests-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "{urls}"
INSTALLED_APPS = []
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
USE_TZ = True
'''


def django_project(doc: str, directory: Path, package: str, urls: str) -> Path:
    """The page's files plus the settings ``startproject`` would have made (trimmed)."""
    pytest.importorskip("django")
    write_doc(doc, directory)
    (directory / package).mkdir(exist_ok=True)
    (directory / package / "__init__.py").touch()
    (directory / package / "settings.py").write_text(DJANGO_SETTINGS.format(urls=urls))
    return directory


async def test_django_asgi_routes_to_hubbub(tmp_path: Path, procs: Any) -> None:
    directory = django_project("howto/django.md", tmp_path, "mysite", "mysite.urls")
    server = procs([sys.executable, "-m", "uvicorn", "mysite.asgi:application", "--port", "0"], directory)
    async with websockets.connect(f"{server.ws}/rt/echo") as ws:
        await ws.send("hi")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "hi"
    relay = await relay_ready(f"{server.ws}/rt/ws/news")
    try:
        assert await ahttp("GET", f"{server.http}/notify?headline=hi") == (200, b'{"published": "hi"}')
        assert await asyncio.wait_for(relay.recv(), TIMEOUT) == '{"headline":"hi"}'
        assert await ahttp("GET", f"{server.http}/notify-sync?headline=sync") == (200, b'{"published": "sync"}')
        assert await asyncio.wait_for(relay.recv(), TIMEOUT) == '{"headline":"sync"}'
    finally:
        await relay.close()
    assert await ahttp("GET", f"{server.http}/hello") == (200, b'{"hello": "from Django"}')
    status, body = await ahttp("GET", f"{server.http}/rt/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, _ = await ahttp("GET", f"{server.http}/nope")
    assert status == 404  # Django's
    with pytest.raises(websockets.InvalidStatus):  # Django serves no WebSocket
        await websockets.connect(f"{server.ws}/echo")
    server.stop()  # uvicorn re-raises SIGTERM once it has shut down cleanly
    assert "Application startup complete" in server.output()  # the lifespan went to the hub
    assert "Application shutdown complete" in server.output(), server.output()


async def test_django_inside_hubbub(tmp_path: Path, procs: Any) -> None:
    directory = django_project("howto/django.md", tmp_path, "mysite", "mysite.urls")
    server = hubbub_run(procs, directory, "serve:app")
    assert await ahttp("GET", f"{server.http}/hello") == (200, b'{"hello": "from Django"}')
    status, _ = await ahttp("GET", f"{server.http}/nope")
    assert status == 404
    async with websockets.connect(f"{server.ws}/echo") as ws:
        await ws.send("hi")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "echo: hi"
    assert server.stop() == 0, server.output()


# -- docs/howto/publish-from-views.md ---------------------------------------------------------------


async def test_publish_from_flask_and_django_views(tmp_path: Path, procs: Any, serve_process: Any) -> None:
    key = "views-key-" + "z" * 24
    hub = serve_process(env={"HUBBUB_API_KEY": key})
    assert "API key set" in hub.wait_for_output("API key set")
    api = f"http://127.0.0.1:{hub.port}/api"
    directory = django_project("howto/publish-from-views.md", tmp_path, "shop", "shop.urls")
    env = {"HUBBUB_API_KEY": key, "HUBBUB_API_URL": api}
    flask_web = wsgi_serve(procs, directory, "shop_flask:web", **env)
    django_web = wsgi_serve(procs, directory, "django", DJANGO_SETTINGS_MODULE="shop.settings", **env)

    consumer = await Consumer(hub.url, "orders", 2).start()
    try:
        status, body = await ahttp("POST", f"{flask_web.http}/orders", b'{"id": 1, "item": "tea"}',
                                   {"Content-Type": "application/json"})
        assert (status, body.strip()) == (201, b'{"offset":0,"order":{"id":1,"item":"tea"}}')
        status, body = await ahttp("POST", f"{django_web.http}/orders", b'{"id": 2, "item": "coffee"}')
        assert (status, body) == (201, b'{"order": {"id": 2, "item": "coffee"}, "published": true}')
        assert await consumer.lines() == ['{"id":1,"item":"tea"}', '{"id":2,"item":"coffee"}']
    finally:
        consumer.kill()

    # a wrong key: the Django view still answers, with 202 and published: false
    wrong = wsgi_serve(procs, directory, "django", DJANGO_SETTINGS_MODULE="shop.settings", HUBBUB_API_URL=api,
                       HUBBUB_API_KEY="wrong")
    status, body = await ahttp("POST", f"{wrong.http}/orders", b'{"id": 3}')
    assert status == 202 and json.loads(body)["published"] is False

    # the errors the page names
    from cent import CentApiResponseError, CentError, CentUnauthorizedError, Client, PublishRequest

    with pytest.raises(CentUnauthorizedError):
        await asyncio.to_thread(Client(api, "wrong", timeout=TIMEOUT).publish, PublishRequest(channel="x", data=1))
    with pytest.raises(CentApiResponseError) as refused:
        await asyncio.to_thread(Client(api, key, timeout=TIMEOUT).publish, PublishRequest(channel="nope:x", data=1))
    assert refused.value.code == 102 and issubclass(CentApiResponseError, CentError)


async def test_hub_without_api_key_says_the_api_is_off(serve_process: Any) -> None:
    hub = serve_process()
    assert "API disabled (no api_key)" in hub.wait_for_output("API disabled")


# -- docs/howto/install.md -------------------------------------------------------------------------


def pip(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", *args, "--quiet", "--disable-pip-version-check"],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_install_from_a_checkout(tmp_path: Path) -> None:
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    out = pip("wheel", "--no-deps", str(ROOT), "-w", str(wheels))
    assert out.returncode == 0, out.stderr
    (wheel,) = wheels.glob("hubbub-*.whl")
    out = pip("install", "--no-deps", "--target", str(site), str(wheel))
    assert out.returncode == 0, out.stderr
    directory = write_doc("howto/install.md", tmp_path / "doc")
    # -S: no site-packages (nor the editable install of this checkout); only what was installed
    run = subprocess.run([sys.executable, "-S", "check_install.py"], capture_output=True, text=True, cwd=directory,
                         env={**os.environ, "PYTHONPATH": str(site)}, timeout=TIMEOUT)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [f"hubbub {__version__}", "static files: ['admin.css', 'admin.html', 'admin.js', 'hubbub.js', 'index.html']"]
    where = subprocess.run([sys.executable, "-S", "-c", "import hubbub; print(hubbub.__file__)"],
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(site)},
                           timeout=TIMEOUT)
    assert Path(where.stdout.strip()).is_relative_to(site)
    version = subprocess.run([sys.executable, "-m", "hubbub", "--version"], capture_output=True, text=True,
                             timeout=TIMEOUT)
    assert version.stdout.strip() == f"hubbub {__version__}"


def test_install_from_a_git_url_with_the_redis_extra(tmp_path: Path) -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = pip("wheel", "--no-deps", f"hubbub[redis] @ git+file://{ROOT}", "-w", str(tmp_path))
    assert out.returncode == 0, out.stderr
    (wheel,) = tmp_path.glob("hubbub-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        metadata = zf.read(f"hubbub-{__version__}.dist-info/METADATA").decode()
        names = zf.namelist()
    assert "Provides-Extra: redis" in metadata
    assert re.search(r'^Requires-Dist: redis\[hiredis\]>=\S+; extra == "redis"$', metadata, re.M)
    assert {"hubbub/static/hubbub.js", "hubbub/static/index.html"} <= set(names)
    # the licence: named in the metadata (PEP 639) and carried in the wheel
    assert re.search(r"^License-Expression: MIT$", metadata, re.M), metadata
    assert f"hubbub-{__version__}.dist-info/licenses/LICENSE" in names


# -- docs/howto/http-routes.md ---------------------------------------------------------------------


async def test_http_routes_and_moved_builtins(tmp_path: Path, procs: Any) -> None:
    server = hubbub_run(procs, write_doc("howto/http-routes.md", tmp_path), "routes:app")
    page = await asyncio.to_thread(urllib.request.urlopen, f"{server.http}/", timeout=TIMEOUT)
    assert page.status == 200 and page.read() == b"<h1>live news</h1>"
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert await ahttp("GET", f"{server.http}/greet/ann?lang=fr") == (200, b'{"hello":"ann","lang":"fr"}')
    assert await ahttp("POST", f"{server.http}/greet/ann", b"") == (405, b"GET only\n")
    relay = await relay_ready(f"{server.ws}/ws/news")
    try:
        assert await ahttp("POST", f"{server.http}/headlines", b"rates unchanged") == (202, b"published\n")
        assert await asyncio.wait_for(relay.recv(), TIMEOUT) == '{"headline":"rates unchanged"}'
    finally:
        await relay.close()
    status, body = await ahttp("GET", f"{server.http}/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    assert (await ahttp("GET", f"{server.http}/health"))[0] == 404
    assert (await ahttp("GET", f"{server.http}/metrics"))[0] == 404
    assert server.stop() == 0


async def test_collisions_print_what_the_page_says(tmp_path: Path) -> None:
    directory = write_doc("howto/http-routes.md", tmp_path)
    text = (DOCS / "howto" / "http-routes.md").read_text()
    stated = text.split("`python collide.py` prints:", 1)[1].split("```\n", 1)[1].split("```", 1)[0]
    assert await run_python(directory, "collide.py") == stated


async def test_http_route_and_endpoint_may_share_a_path() -> None:
    from hubbub.http import HTTPResponse

    app = hubbub.App(port=0)

    @app.route("/live")
    async def live_page(request: Any) -> HTTPResponse:
        return HTTPResponse.text("a page")

    @app.websocket("/live")
    async def live(ws: hubbub.WebSocket) -> None:
        await ws.send("a socket")

    await app.start()
    try:
        assert await ahttp("GET", f"http://127.0.0.1:{app.server.port}/live") == (200, b"a page")
        async with websockets.connect(f"ws://127.0.0.1:{app.server.port}/live") as ws:
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "a socket"
    finally:
        await app.stop()


# -- examples/hug_api --------------------------------------------------------------------------------


async def test_hug_example(serve_process: Any) -> None:
    if importlib.util.find_spec("hug") is None:
        pytest.skip("hug is not installed (pip install hug)")
    server = serve_process("examples.hug_api.app:app", command="run")
    http = f"http://127.0.0.1:{server.port}"
    status, body = await ahttp("GET", f"{http}/hello?name=ann")
    assert (status, json.loads(body)) == (200, {"hello": "ann"})
    status, body = await ahttp("GET", f"{http}/add?a=1&b=2")
    assert (status, json.loads(body)) == (200, {"sum": 3})

    async with websockets.connect(f"{server.url}/ws") as a, websockets.connect(f"{server.url}/ws") as b:
        # the welcome is sent after the subscription: both are in the lobby once it arrives
        a_id = json.loads(await asyncio.wait_for(a.recv(), TIMEOUT))["welcome"]
        json.loads(await asyncio.wait_for(b.recv(), TIMEOUT))["welcome"]
        await a.send("hi")
        for ws in (a, b):
            assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)) == {"from": a_id, "text": "hi"}
        # a hug route (a WSGI worker thread) publishes to the endpoint's clients
        status, body = await ahttp("POST", f"{http}/announce", b"text=hello%20all",
                                   {"Content-Type": "application/x-www-form-urlencoded"})
        assert (status, json.loads(body)) == (200, {"announced": "hello all"})
        for ws in (a, b):
            assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)) == {"from": "hug", "text": "hello all"}
    status, body = await ahttp("GET", f"{http}/health")  # hubbub's own routes alongside
    assert status == 200
    assert server.stop() == 0, server.output()


# -- docs/howto/socketio.md ------------------------------------------------------------------------

#: python-socketio's own ASGI examples, as published (tests/socketio_examples/README.md)
SOCKETIO_EXAMPLES = ROOT / "tests" / "socketio_examples"


async def test_socketio_chat_runs_as_the_page_says(tmp_path: Path, procs: Any) -> None:
    directory = write_doc("howto/socketio.md", tmp_path)
    server = hubbub_run(procs, directory, "chat:app")
    client = directory / "chat_client_here.py"
    client.write_text(with_port((directory / "chat_client.py").read_text(), server.port))
    out = await run_python(directory, client.name)
    lines = out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("rooms: ['") and "'lobby'" in lines[0], out
    assert lines[1] == "ann said hello", out
    import socketio as pysio  # python-socketio's client: a client without a name is refused

    refused = pysio.AsyncClient(reconnection=False)
    errors: list[Any] = []
    refused.on("connect_error", errors.append)
    with pytest.raises(pysio.exceptions.ConnectionError):
        await refused.connect(server.http, wait_timeout=TIMEOUT)
    await refused.disconnect()
    assert errors == [{"message": "a name, please"}]
    assert server.stop() == 0


def unchanged_but_the_import(name: str, directory: Path) -> Path:
    """Copy python-socketio's example ``name`` (and its pages) to ``directory`` with ``import
    socketio`` changed to ``import hubbub.socketio as socketio``: the one change."""
    for path in SOCKETIO_EXAMPLES.rglob("*"):
        if path.is_file() and path.suffix in (".html", ".js", ".css"):
            target = directory / path.relative_to(SOCKETIO_EXAMPLES)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    original = (SOCKETIO_EXAMPLES / name).read_text()
    changed = original.replace("\nimport socketio\n", "\nimport hubbub.socketio as socketio\n")
    assert changed.count("import hubbub.socketio as socketio") == 1
    diff = [(a, b) for a, b in zip(original.splitlines(), changed.splitlines(), strict=True) if a != b]
    assert diff == [("import socketio", "import hubbub.socketio as socketio")]
    (directory / name).write_text(changed)
    return directory


async def drive_fiddle(url: str) -> None:
    """What fiddle.py does: a ``hello`` with three arguments to each client that connects."""
    import socketio as pysio

    for transports in (["websocket"], ["polling"], ["polling", "websocket"]):
        client = pysio.AsyncClient(reconnection=False)
        hello: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        client.on("hello", lambda *args, f=hello: f.done() or f.set_result(args))
        await client.connect(url, transports=transports, auth={"token": "t"}, wait_timeout=TIMEOUT)
        assert await asyncio.wait_for(hello, TIMEOUT) == (1, 2, {"hello": "you"})
        await client.disconnect()
    status, body = await ahttp("GET", url + "/")
    assert status == 200 and b"socket.io" in body.lower()
    status, body = await ahttp("GET", url + "/static/fiddle.js")
    assert status == 200 and b"io(" in body


async def drive_app(url: str) -> None:
    """What app.py does: responses to its events, rooms, a broadcast, a server-side disconnect."""
    import socketio as pysio

    a, b = pysio.AsyncClient(reconnection=False), pysio.AsyncClient(reconnection=False)
    got: dict[str, asyncio.Queue[Any]] = {"a": asyncio.Queue(), "b": asyncio.Queue()}
    for name, client in (("a", a), ("b", b)):
        client.on("my_response", lambda data, q=got[name]: q.put_nowait(data))

    async def next_of(name: str) -> Any:
        return await asyncio.wait_for(got[name].get(), TIMEOUT)

    await a.connect(url, transports=["websocket"], wait_timeout=TIMEOUT)
    await b.connect(url, transports=["polling"], wait_timeout=TIMEOUT)
    assert await next_of("a") == {"data": "Connected", "count": 0}
    assert await next_of("b") == {"data": "Connected", "count": 0}
    await a.emit("my_event", {"data": "echo me"})
    assert await next_of("a") == {"data": "echo me"}
    await a.emit("join", {"room": "r1"})
    assert await next_of("a") == {"data": "Entered room: r1"}
    await b.emit("join", {"room": "r1"})
    assert await next_of("b") == {"data": "Entered room: r1"}
    await b.emit("my_room_event", {"room": "r1", "data": "to r1"})
    assert (await next_of("a"), await next_of("b")) == ({"data": "to r1"}, {"data": "to r1"})
    await a.emit("my_broadcast_event", {"data": "everyone"})
    assert (await next_of("a"), await next_of("b")) == ({"data": "everyone"}, {"data": "everyone"})
    await b.emit("leave", {"room": "r1"})
    assert await next_of("b") == {"data": "Left room: r1"}
    await a.emit("close room", {"room": "r1"})
    assert await next_of("a") == {"data": "Room r1 is closing."}
    await a.emit("disconnect request")
    await until(lambda: not a.connected, "the server to disconnect a")
    assert got["b"].empty()
    await b.disconnect()


@pytest.mark.parametrize("name", ["fiddle.py", "app.py"])
async def test_python_socketio_examples_under_uvicorn(name: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    directory = unchanged_but_the_import(name, tmp_path)
    monkeypatch.chdir(directory)  # static_files are relative paths, as when run from their folder
    (module,) = fresh_import(monkeypatch, directory, name.removesuffix(".py"))
    async with uvicorn_serving(module.app) as port:
        await (drive_fiddle if name == "fiddle.py" else drive_app)(f"http://127.0.0.1:{port}")


@pytest.mark.parametrize("name", ["fiddle.py", "app.py"])
async def test_python_socketio_examples_with_hubbub_run(name: str, tmp_path: Path, procs: Any) -> None:
    directory = unchanged_but_the_import(name, tmp_path)
    server = hubbub_run(procs, directory, name.removesuffix(".py") + ":app")
    await (drive_fiddle if name == "fiddle.py" else drive_app)(server.http)
    assert server.stop() == 0
