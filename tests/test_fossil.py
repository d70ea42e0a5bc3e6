"""hubbub.fossil: Fossil deltas, checked by our decoder and by centrifuge-js's (under Node)."""

from __future__ import annotations

import base64
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from hubbub import fossil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import feed  # noqa: E402

from .jsdeps import node_modules

ROOT = Path(__file__).resolve().parent.parent


def _mutate(rng: random.Random, data: bytes, edits: int) -> bytes:
    out = bytearray(data)
    for _ in range(edits):
        at = rng.randrange(len(out) + 1)
        cut = rng.randrange(0, 24)
        out[at : at + cut] = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 24)))
    return bytes(out)


def _json_doc(rng: random.Random, n: int) -> dict[str, object]:
    return {f"k{i}": {"score": rng.randrange(100), "name": f"player {i} é ü 名前", "tags": ["a", "b"]}
            for i in range(n)}


def random_cases(seed: int = 7, count: int = 300) -> list[tuple[bytes, bytes]]:
    """(source, target) pairs: random bytes with edits, unrelated bytes, empty and short ones,
    and JSON documents with a few changed fields (non-ASCII text included)."""
    rng = random.Random(seed)
    cases: list[tuple[bytes, bytes]] = [(b"", b""), (b"", b"abc"), (b"abc", b""), (b"short", b"shorter"),
                                        (b"x" * 100, b"x" * 1000), (b"ab" * 500, b"ba" * 500)]
    for _ in range(count):
        source = bytes(rng.choice((rng.randrange(256), 97, 98)) for _ in range(rng.randrange(0, 2000)))
        cases.append((source, _mutate(rng, source, rng.randrange(0, 6))))
    cases.append((bytes(rng.randrange(256) for _ in range(5000)), bytes(rng.randrange(256) for _ in range(5000))))
    for _ in range(20):
        doc = _json_doc(rng, rng.randrange(1, 200))
        before = json.dumps(doc, ensure_ascii=False).encode()
        for key in rng.sample(sorted(doc), min(3, len(doc))):
            doc[key] = {"score": rng.randrange(1000), "name": "changed — ✓", "tags": []}
        cases.append((before, json.dumps(doc, ensure_ascii=False).encode()))
    return cases


def real_documents() -> list[tuple[bytes, bytes]]:
    """Consecutive states of the benchmark's feeds, and two versions of files of this repository."""


    cases = []
    for states_of in (feed.match_feed(seed=3, updates=30), feed.order_book_feed(seed=3, updates=30)):
        states = list(states_of)
        cases += list(zip(states, states[1:], strict=False))
    design = (ROOT / "docs" / "design.md").read_bytes()
    cases.append((design, design.replace(b"hub", b"HUB", 40)))
    source = (ROOT / "src" / "hubbub" / "hub.py").read_bytes()
    cases.append((source, source[: len(source) // 2] + b"\n# an edit\n" + source[len(source) // 2 :]))
    return cases


def test_round_trip_random() -> None:
    for source, target in random_cases():
        delta = fossil.create(source, target)
        assert fossil.apply(source, delta) == target


def test_round_trip_real_documents_and_size() -> None:
    for source, target in real_documents():
        delta = fossil.create(source, target)
        assert fossil.apply(source, delta) == target
    # a few fields changed in a 20 KB+ document: the delta is a small fraction of it


    states = list(feed.match_feed(seed=1, updates=5))
    assert len(states[1]) > 20_000
    assert len(fossil.create(states[0], states[1])) < len(states[1]) // 20


def test_delta_of_utf8_text_is_utf8() -> None:
    """The JSON format sends a delta as a JSON string: copies never cut a UTF-8 character."""
    rng = random.Random(3)
    for _ in range(200):
        text = "".join(rng.choice("aé名✓😀{}\":,") for _ in range(rng.randrange(0, 400)))
        edited = list(text)
        for _ in range(rng.randrange(1, 5)):
            at = rng.randrange(len(edited) + 1)
            edited[at:at + rng.randrange(0, 4)] = rng.choice(["é", "😀", "x", "名前"])
        source, target = text.encode(), "".join(edited).encode()
        delta = fossil.create(source, target)
        delta.decode("utf-8")  # raises if a character was cut
        assert fossil.apply(source, delta) == target


def test_format_known_delta() -> None:
    """The documented format: size, newline, copy and insert commands, checksum."""
    source = b"abcdefghijklmnopqrstuvwxyz0123456789"
    target = source + b"++"
    # 38 bytes ("b"): 36 ("_") copied from offset 0, then 2 inserted
    assert fossil.create(source, target) == b"b\n_@0,2:++%s;" % fossil._int(fossil.checksum(target))
    assert fossil.apply(b"", b"3\n3:abc%s;" % fossil._int(fossil.checksum(b"abc"))) == b"abc"
    assert fossil.checksum(b"\x00\x00\x00\x01\x00\x00\x00\x02") == 3
    assert fossil.checksum(b"\x01") == 0x01000000
    assert fossil.checksum(b"\xff\xff\xff\xff\x00\x00\x00\x01") == 0


@pytest.mark.parametrize("delta", [
    b"", b"3", b"3\n", b"3\n3:ab", b"3\n3:abc0;", b"3\n9@0,0;", b"3\n3?abc0;", b"4\n3:abcX;",
    b"3\n3:abc%s;junk",
])
def test_apply_refuses_malformed(delta: bytes) -> None:
    if b"%s" in delta:
        delta = delta % fossil._int(fossil.checksum(b"abc"))
    with pytest.raises(ValueError):
        fossil.apply(b"xyz", delta)


@pytest.mark.slow
def test_centrifuge_js_decoder_agrees() -> None:
    """centrifuge-js's applyDelta (an independent Fossil decoder) makes the same targets."""
    modules = node_modules()
    cases = random_cases(seed=11, count=200) + real_documents()
    lines = "".join(
        json.dumps({"source": base64.b64encode(s).decode(), "delta": base64.b64encode(fossil.create(s, t)).decode()})
        + "\n" for s, t in cases)
    out = subprocess.run(["node", str(modules.parent / "fossil_apply.cjs")], input=lines, capture_output=True,
                         text=True, timeout=120, cwd=modules.parent)
    assert out.returncode == 0, out.stderr
    results = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(results) == len(cases)
    for (_, target), result in zip(cases, results, strict=True):
        assert result == {"target": base64.b64encode(target).decode()}
    # and it refuses what ours refuses: a wrong checksum
    bad = json.dumps({"source": "", "delta": base64.b64encode(b"3\n3:abc0;").decode()}) + "\n"
    out = subprocess.run(["node", str(modules.parent / "fossil_apply.cjs")], input=bad, capture_output=True,
                         text=True, timeout=60, cwd=modules.parent)
    assert "checksum" in json.loads(out.stdout)["error"]
