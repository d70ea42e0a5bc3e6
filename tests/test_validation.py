"""The one validator of channel names and request parameters (hubbub.validation)."""

from __future__ import annotations

from typing import Any

import pytest

from hubbub.errors import BadRequest, ProtocolError
from hubbub.validation import CHANNEL_MAX_LENGTH, Params, channel_name, text

# -- channel names -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["news", "chat:room-1", "a", "x" * 255, "é" * 127, "日本語", "with space",
                                  "emoji😀", "a/b.c_d@e#f$"])
def test_channel_name_valid(name: str) -> None:
    assert channel_name(name) is name


@pytest.mark.parametrize("name", [
    "", "\ud800", "a\udfffb", "a\x00b", "line\n", "\r", "\t", "\x1b[31m", "\x7f", "\x85", "zero\u200bwidth",
    "rtl\u202e", "x" * 256, "é" * 128, None, 42, 1.5, True, b"news", ["news"], {"channel": "news"},
], ids=lambda v: repr(v)[:20])
def test_channel_name_invalid(name: Any) -> None:
    with pytest.raises(BadRequest) as exc:
        channel_name(name)
    assert exc.value.code == 107
    assert not exc.value.temporary
    assert isinstance(exc.value, ProtocolError)


def test_channel_name_length_in_utf8_bytes() -> None:
    assert CHANNEL_MAX_LENGTH == 255
    assert channel_name("€" * 3, max_length=9)
    with pytest.raises(BadRequest, match="longer than 8 bytes"):
        channel_name("€" * 3, max_length=8)  # 3 characters, 9 bytes


def test_channel_name_messages() -> None:
    with pytest.raises(BadRequest, match="non-empty string"):
        channel_name("")
    with pytest.raises(BadRequest, match="not valid Unicode"):
        channel_name("\ud800")
    with pytest.raises(BadRequest, match="unprintable"):
        channel_name("a\x01")


def test_text() -> None:
    assert text("ok", "name") == "ok"
    with pytest.raises(BadRequest, match="^107: name must be a string$"):
        text(1, "name")
    with pytest.raises(BadRequest, match="^107: name is not valid Unicode$"):
        text("\udc80", "name")


# -- Params --------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [None, [], "x", 1, True])
def test_params_must_be_an_object(raw: Any) -> None:
    with pytest.raises(BadRequest, match="^107: params must be an object$"):
        Params(raw)
    with pytest.raises(BadRequest, match="^107: since must be an object$"):
        Params(raw, "since.")


def test_params_contains_and_defaults_for_absent_and_null() -> None:
    p = Params({"n": None})
    assert "n" in p and "m" not in p
    for key in ("n", "m"):
        assert p.str(key) == "" and p.str(key, default="d") == "d"
        assert p.int(key) == 0 and p.int(key, default=7) == 7
        assert p.bool(key) is False and p.bool(key, default=True) is True
        assert p.number(key) is None and p.number(key, default=1.5) == 1.5
        assert p.object(key) is None
        assert p.strings(key) == []
        assert p.objects(key) == []
        assert p.string_map(key) is None


@pytest.mark.parametrize("accessor", ["str", "int", "bool", "number", "object", "strings", "objects"])
def test_params_required(accessor: str) -> None:
    p = Params({"n": None}, "cmd.")
    with pytest.raises(BadRequest, match=r"^107: cmd\.n is required$"):
        getattr(p, accessor)("n", required=True)
    with pytest.raises(BadRequest, match=r"^107: cmd\.m is required$"):
        getattr(p, accessor)("m", required=True)


def test_params_str() -> None:
    p = Params({"s": "hello", "n": 1, "b": False, "u": "\ud800", "l": ["x"]}, "connect.")
    assert p.str("s") == "hello"
    for key in ("n", "b", "l"):
        with pytest.raises(BadRequest, match=rf"^107: connect\.{key} must be a string$"):
            p.str(key)
    with pytest.raises(BadRequest, match=r"^107: connect\.u is not valid Unicode$"):
        p.str("u")


def test_params_str_empty_string_is_not_default() -> None:
    assert Params({"s": ""}).str("s", default="d") == ""


def test_params_int() -> None:
    p = Params({"i": 5, "neg": -1, "f": 1.0, "s": "5", "t": True, "z": False, "big": 10**30})
    assert p.int("i") == 5 and p.int("big") == 10**30
    assert p.int("i", minimum=5, maximum=5) == 5
    for key in ("f", "s", "t", "z"):
        with pytest.raises(BadRequest, match=rf"^107: {key} must be an integer$"):
            p.int(key)
    with pytest.raises(BadRequest, match=r"^107: neg must be in \[0, None\]$"):
        p.int("neg", minimum=0)
    with pytest.raises(BadRequest, match=r"^107: i must be in \[None, 4\]$"):
        p.int("i", maximum=4)


def test_params_bool_is_not_int_and_int_is_not_bool() -> None:
    p = Params({"t": True, "one": 1, "zero": 0, "s": "true"})
    assert p.bool("t") is True
    with pytest.raises(BadRequest, match="^107: t must be an integer$"):
        p.int("t")
    for key in ("one", "zero", "s"):
        with pytest.raises(BadRequest, match=f"^107: {key} must be a boolean$"):
            p.bool(key)


def test_params_number() -> None:
    p = Params({"i": 2, "f": 2.5, "t": True, "s": "1"})
    assert p.number("i") == 2.0 and isinstance(p.number("i"), float)
    assert p.number("f") == 2.5
    for key in ("t", "s"):
        with pytest.raises(BadRequest, match=f"^107: {key} must be a number$"):
            p.number(key)


def test_params_object_names_nested_parameters() -> None:
    p = Params({"since": {"offset": "x", "epoch": 3}, "bad": [1]}, "history.")
    since = p.object("since")
    assert since is not None and since.raw == {"offset": "x", "epoch": 3}
    with pytest.raises(BadRequest, match=r"^107: history\.since\.offset must be an integer$"):
        since.int("offset")
    with pytest.raises(BadRequest, match=r"^107: history\.since\.epoch must be a string$"):
        since.str("epoch")
    with pytest.raises(BadRequest, match=r"^107: history\.bad must be an object$"):
        p.object("bad")


def test_params_strings() -> None:
    p = Params({"ok": ["a", "b"], "empty": [], "notlist": "a", "mixed": ["a", 1], "sur": ["\ud800"]}, "x.")
    assert p.strings("ok") == ["a", "b"] and p.strings("empty") == []
    with pytest.raises(BadRequest, match=r"^107: x\.notlist must be a list of strings$"):
        p.strings("notlist")
    with pytest.raises(BadRequest, match=r"^107: x\.mixed\[\] must be a string$"):
        p.strings("mixed")
    with pytest.raises(BadRequest, match=r"^107: x\.sur\[\] is not valid Unicode$"):
        p.strings("sur")


def test_params_objects() -> None:
    p = Params({"ok": [{"a": 1}, {"a": "s"}], "notlist": {"a": 1}, "mixed": [{"a": 1}, 2]}, "batch.")
    items = p.objects("ok")
    assert [i.raw for i in items] == [{"a": 1}, {"a": "s"}]
    with pytest.raises(BadRequest, match=r"^107: batch\.ok\[1\]\.a must be an integer$"):
        items[1].int("a")
    with pytest.raises(BadRequest, match=r"^107: batch\.notlist must be a list of objects$"):
        p.objects("notlist")
    with pytest.raises(BadRequest, match=r"^107: batch\.mixed\[1\] must be an object$"):
        p.objects("mixed")


def test_params_string_map() -> None:
    p = Params({"ok": {"k": "v"}, "list": ["k"], "val": {"k": 1}, "sur": {"\ud800": "v"}}, "pub.")
    assert p.string_map("ok") == {"k": "v"}
    with pytest.raises(BadRequest, match=r"^107: pub\.list must map strings to strings$"):
        p.string_map("list")
    with pytest.raises(BadRequest, match=r"^107: pub\.val value must be a string$"):
        p.string_map("val")
    with pytest.raises(BadRequest, match=r"^107: pub\.sur key is not valid Unicode$"):
        p.string_map("sur")


def test_params_channel() -> None:
    p = Params({"channel": "news", "to": "", "bad": "a\x00", "n": 5}, "publish.")
    assert p.channel() == "news"
    with pytest.raises(BadRequest, match=r"^107: publish\.to must be a non-empty string$"):
        p.channel("to")
    with pytest.raises(BadRequest, match=r"^107: invalid publish\.bad name: unprintable character$"):
        p.channel("bad")
    with pytest.raises(BadRequest, match=r"^107: publish\.n must be a non-empty string$"):
        p.channel("n")
    with pytest.raises(BadRequest, match=r"^107: publish\.missing is required$"):
        p.channel("missing")
    with pytest.raises(BadRequest, match="longer than 3 bytes"):
        p.channel(max_length=3)


def test_params_errors_are_107() -> None:
    with pytest.raises(BadRequest) as exc:
        Params({"i": "x"}).int("i")
    assert exc.value.code == 107 and not exc.value.temporary
