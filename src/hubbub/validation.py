"""The one validator of channel names and of request parameters.

Every way in (the client protocol, the relay, framework endpoints, the server
API and ``Hub.publish``) checks names and parameters here, so the same input
gets the same answer everywhere: :class:`~hubbub.errors.BadRequest` (code
107 in the protocol, HTTP 400 in the server API), never an internal error.

Channel names (centrifugal.dev ``docs/server/channels.md``): a non-empty
string of at most ``channel_max_length`` bytes of UTF-8 (so no lone
surrogates), with no control or other unprintable characters.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from typing import Any

from .errors import BadRequest

#: Default longest channel name, in bytes of UTF-8 (``Config.channel_max_length``).
CHANNEL_MAX_LENGTH = 255


def channel_name(value: Any, max_length: int = CHANNEL_MAX_LENGTH) -> str:
    """Return ``value`` if it is a valid channel name.

    Args:
        value: the name as received (any type).
        max_length: longest name in bytes of UTF-8.

    Raises:
        BadRequest: not a string, empty, longer than ``max_length`` bytes, not
            encodable as UTF-8 (a lone surrogate), or holding an unprintable
            character.
    """
    if not isinstance(value, str) or not value:
        raise BadRequest("channel must be a non-empty string")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadRequest("invalid channel name: not valid Unicode") from None
    if size > max_length:
        raise BadRequest(f"invalid channel name: longer than {max_length} bytes")
    if not value.isprintable():
        raise BadRequest("invalid channel name: unprintable character")
    return value


def text(value: Any, name: str) -> str:
    """``value`` as a string that encodes to UTF-8.

    Raises:
        BadRequest: not a string, or a lone surrogate in it.
    """
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"{name} is not valid Unicode") from None
    return value


class Params:
    # Its methods named str, int and bool shadow the builtins in the class body: annotations say builtins.X.
    """Typed access to a JSON object of request parameters.

    Each accessor returns the value, or ``default`` when the key is absent or
    ``null``, and raises :class:`BadRequest` naming the parameter when it has
    the wrong type (``bool`` is not an ``int``) or is required and missing.

    Args:
        raw: the parameters (anything; a non-object raises ``BadRequest``).
        where: prefix for error messages (``"since."`` for nested objects).
    """

    __slots__ = ("raw", "_where")

    def __init__(self, raw: Any, where: str = "") -> None:
        if not isinstance(raw, Mapping):
            raise BadRequest(f"{where.rstrip('.') or 'params'} must be an object")
        self.raw = raw
        self._where = where

    def __contains__(self, key: str) -> bool:
        return key in self.raw

    def _get(self, key: str, required: bool) -> Any:
        value = self.raw.get(key)
        if value is None and required:
            raise BadRequest(f"{self._where}{key} is required")
        return value

    def str(self, key: str, *, required: bool = False, default: str = "") -> str:
        """A string parameter (valid Unicode)."""
        value = self._get(key, required)
        return default if value is None else text(value, self._where + key)

    def channel(self, key: builtins.str = "channel", *,
                max_length: builtins.int = CHANNEL_MAX_LENGTH) -> builtins.str:
        """A required channel name (see :func:`channel_name`)."""
        value = self._get(key, True)
        try:
            return channel_name(value, max_length)
        except BadRequest as exc:
            raise BadRequest(exc.message.replace("channel", self._where + key, 1)) from None

    def int(self, key: builtins.str, *, required: builtins.bool = False, default: builtins.int = 0,
            minimum: builtins.int | None = None, maximum: builtins.int | None = None) -> builtins.int:
        """An integer parameter within ``[minimum, maximum]`` when given."""
        value = self._get(key, required)
        if value is None:
            return default
        if not isinstance(value, int) or isinstance(value, bool):
            raise BadRequest(f"{self._where}{key} must be an integer")
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise BadRequest(f"{self._where}{key} must be in [{minimum}, {maximum}]")
        return value

    def number(self, key: builtins.str, *, required: builtins.bool = False,
               default: float | None = None) -> float | None:
        """A number parameter (int or float, not bool)."""
        value = self._get(key, required)
        if value is None:
            return default
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise BadRequest(f"{self._where}{key} must be a number")
        return float(value)

    def bool(self, key: builtins.str, *, required: builtins.bool = False,
             default: builtins.bool = False) -> builtins.bool:
        """A boolean parameter."""
        value = self._get(key, required)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise BadRequest(f"{self._where}{key} must be a boolean")
        return value

    def object(self, key: builtins.str, *, required: builtins.bool = False) -> Params | None:
        """A nested object, as :class:`Params` (``None`` when absent)."""
        value = self._get(key, required)
        return None if value is None else Params(value, f"{self._where}{key}.")

    def strings(self, key: builtins.str, *, required: builtins.bool = False) -> list[builtins.str]:
        """A list of strings (``[]`` when absent)."""
        value = self._get(key, required)
        if value is None:
            return []
        if not isinstance(value, list):
            raise BadRequest(f"{self._where}{key} must be a list of strings")
        return [text(item, f"{self._where}{key}[]") for item in value]

    def objects(self, key: builtins.str, *, required: builtins.bool = False) -> list[Params]:
        """A list of objects, each as :class:`Params` (``[]`` when absent)."""
        value = self._get(key, required)
        if value is None:
            return []
        if not isinstance(value, list):
            raise BadRequest(f"{self._where}{key} must be a list of objects")
        return [Params(item, f"{self._where}{key}[{i}].") for i, item in enumerate(value)]

    def string_map(self, key: builtins.str) -> dict[builtins.str, builtins.str] | None:
        """An object mapping strings to strings (``None`` when absent)."""
        value = self._get(key, False)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise BadRequest(f"{self._where}{key} must map strings to strings")
        for k, v in value.items():
            text(k, f"{self._where}{key} key")
            text(v, f"{self._where}{key} value")
        return value
