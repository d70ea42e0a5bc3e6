"""Path patterns and the router (``hubbub.routing``): matching, parameters, collisions."""

from __future__ import annotations

import pytest

from hubbub.errors import ConfigError, HubbubError, RouteCollision
from hubbub.routing import Router, compile_path, sample_path


def test_parameters_match_one_segment_and_path_parameters_many() -> None:
    router: Router[str] = Router()
    router.add("/ws/{channel}", "relay")
    router.add("/files/{rest:path}", "files")
    assert router.match("/ws/news") == ("relay", {"channel": "news"})
    assert router.match("/ws/a/b") is None  # one segment only
    assert router.match("/files/a/b/c.txt") == ("files", {"rest": "a/b/c.txt"})
    assert router.match("/nothing") is None


def test_parameters_are_percent_decoded() -> None:
    router: Router[str] = Router()
    router.add("/ws/{channel}", "relay")
    assert router.match("/ws/chat%3Aroom%201") == ("relay", {"channel": "chat:room 1"})


def test_first_route_wins_and_remove_forgets_it() -> None:
    router: Router[str] = Router()
    router.add("/a/{x}", "a")
    router.remove("/a/{x}")
    assert router.match("/a/1") is None
    router.remove("/never-added")  # no error


@pytest.mark.parametrize("first, second", [("/ws/{channel}", "/ws/{room}"), ("/ws/{channel}", "/ws/news"),
                                           ("/x", "/x"), ("/files/{p:path}", "/files/a/{b}")])
def test_overlapping_routes_collide_with_a_config_error_naming_both(first: str, second: str) -> None:
    router: Router[str] = Router()
    router.add(first, "one", "the first")
    with pytest.raises(RouteCollision) as info:
        router.add(second, "two", "the second")
    assert isinstance(info.value, ConfigError) and isinstance(info.value, HubbubError)
    assert "the first" in str(info.value) and "the second" in str(info.value)
    assert info.value.other.pattern == first and info.value.route.pattern == second


def test_disjoint_routes_do_not_collide() -> None:
    router: Router[str] = Router()
    router.add("/ws/{channel}", "relay")
    router.add("/sse/{channel}", "sse")
    router.add("/connection/websocket", "protocol")
    assert [r.target for r in router] == ["relay", "sse", "protocol"]


@pytest.mark.parametrize("pattern", ["no-slash", "/a/{x}/{x}"])
def test_bad_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(ValueError):
        compile_path(pattern)


def test_sample_path_is_matched_by_its_own_pattern() -> None:
    for pattern in ("/ws/{channel}", "/files/{rest:path}", "/a/{x}/b/{y}"):
        assert compile_path(pattern).match(sample_path(pattern)), pattern


def test_a_path_without_parameters_matches_only_itself_and_each_match_has_its_own_params() -> None:
    router: Router[str] = Router()
    router.add("/text", "text")
    router.add("/a.b", "dot")
    router.add("/rooms/{room}", "rooms")
    assert router.match("/text") == ("text", {})
    assert router.match("/a.b") == ("dot", {}) and router.match("/aXb") is None  # no regular-expression '.'
    assert router.match("/text/") is None and router.match("/tex") is None
    found = router.match("/text")
    assert found is not None
    found[1]["x"] = "changed"
    assert router.match("/text") == ("text", {})  # a fresh dict per match: requests keep their params
    assert router.match("/rooms/a%20b") == ("rooms", {"room": "a b"})
    router.remove("/text")
    assert router.match("/text") is None
