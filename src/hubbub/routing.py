"""Path patterns with parameters: ``/rooms/{room}`` matches ``/rooms/lobby``.

A parameter matches one path segment (no ``/``), except a parameter written
``{name:path}``, which matches the rest of the path. Values are
percent-decoded.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar
from urllib.parse import unquote

from .errors import RouteCollision

T = TypeVar("T")



_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(:path)?\}")


def compile_path(pattern: str) -> re.Pattern[str]:
    """Compile a path pattern to a regular expression with named groups.

    Raises:
        ValueError: the pattern does not start with ``/`` or repeats a name.
    """
    if not pattern.startswith("/"):
        raise ValueError(f"path must start with '/': {pattern!r}")
    out, pos, names = [], 0, set()
    for m in _PARAM.finditer(pattern):
        out.append(re.escape(pattern[pos : m.start()]))
        name = m.group(1)
        if name in names:
            raise ValueError(f"parameter {name!r} repeated in {pattern!r}")
        names.add(name)
        out.append(f"(?P<{name}>.+)" if m.group(2) else f"(?P<{name}>[^/]+)")
        pos = m.end()
    out.append(re.escape(pattern[pos:]))
    return re.compile("^" + "".join(out) + "$")


def sample_path(pattern: str) -> str:
    """A concrete path that ``pattern`` matches (parameters filled in)."""
    return _PARAM.sub(lambda m: "x/y" if m.group(2) else "x", pattern)


@dataclass(slots=True)
class Route(Generic[T]):
    """A path pattern, its target, and what it is (``name``, for errors)."""

    pattern: str
    target: T
    name: str = ""
    regex: re.Pattern[str] = field(init=False)

    def __post_init__(self) -> None:
        self.regex = compile_path(self.pattern)

    def overlaps(self, other: Route[T]) -> bool:
        """Whether some path could match both (one's sample matches the other)."""
        return bool(self.regex.match(sample_path(other.pattern)) or other.regex.match(sample_path(self.pattern)))


class Router(Generic[T]):
    """An ordered list of routes; the first match wins."""

    def __init__(self) -> None:
        self._routes: list[Route[T]] = []
        #: the routes without parameters, by path: looked up before the patterns are tried (no two
        #: routes overlap (:meth:`add`), so no other route matches such a path)
        self._exact: dict[str, Route[T]] = {}

    def add(self, pattern: str, target: T, name: str = "") -> None:
        """Add a route.

        Raises:
            ValueError: a bad pattern.
            RouteCollision: a route that some path would match as well as
                this one (the message names both).
        """
        route = Route(pattern, target, name or pattern)
        for other in self._routes:
            if other.pattern == pattern or other.overlaps(route):
                raise RouteCollision(route, other)
        self._routes.append(route)
        if not _PARAM.search(pattern):
            self._exact[pattern] = route

    def remove(self, pattern: str) -> None:
        """Remove the route of ``pattern`` (no error if there is none)."""
        self._routes = [r for r in self._routes if r.pattern != pattern]
        self._exact.pop(pattern, None)

    def match(self, path: str) -> tuple[T, dict[str, str]] | None:
        """The target and decoded parameters for ``path`` (without query), or ``None``."""
        exact = self._exact.get(path)
        if exact is not None:
            return exact.target, {}
        for route in self._routes:
            m = route.regex.match(path)
            if m is not None:
                return route.target, {k: unquote(v) for k, v in m.groupdict().items()}
        return None

    def __iter__(self) -> Iterator[Route[T]]:
        return iter(self._routes)
