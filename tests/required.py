"""One rule for a tool the tests need outside Python (redis-server, PostgreSQL, node, Chromium):
missing, it skips its tests, except under ``CI=true``, where it fails them (``.ci/run`` installs
every such tool, so a missing one there is a broken set-up, not a reason to skip)."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """Whether the tests run under CI (``CI=true``, any case)."""
    return os.environ.get("CI", "").lower() == "true"


def missing(message: str) -> NoReturn:
    """Skip the test for a missing tool (``message`` says which and how to install it); fail it in CI."""
    if in_ci():
        pytest.fail(f"{message}: required in CI")
    pytest.skip(message)
