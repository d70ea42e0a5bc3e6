"""The event loop a server runs on: the standard library's, or uvloop's (setting ``event_loop``)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from .errors import ConfigError


def run_loop(main: Coroutine[Any, Any, Any], event_loop: str = "asyncio") -> Any:
    """Run ``main`` to completion on a new event loop and return its result.

    Args:
        main: the coroutine to run (``Server.serve()``, ``App.serve_async()``).
        event_loop: ``"asyncio"`` (``asyncio.run``) or ``"uvloop"`` (a
            ``uvloop`` loop in an ``asyncio.Runner``).

    Raises:
        ConfigError: ``"uvloop"`` was asked for and the ``uvloop`` package does
            not import (``pip install uvloop``).
    """
    if event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            main.close()
            raise ConfigError("event_loop = 'uvloop' needs the uvloop package (pip install uvloop)") from None
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main)
    return asyncio.run(main)
