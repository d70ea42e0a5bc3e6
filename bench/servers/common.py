"""What every benchmark server script shares: its command line and the open-files limit.

The scripts run as programs (``python bench/servers/NAME.py --host H --port P``), so this
module is imported from the script's own folder.
"""

from __future__ import annotations

import argparse
import resource


def raise_nofile_limit() -> None:
    """Raise this process's RLIMIT_NOFILE soft limit to its hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


def server_args(doc: str | None) -> argparse.Namespace:
    """Parse ``--host``/``--port`` (described by the script's docstring) and raise the fd limit."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0] if doc else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    raise_nofile_limit()
    return args
