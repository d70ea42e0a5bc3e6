"""hubbub's App under uvicorn through ASGI: the same hub, mounted in a FastAPI app at /rt.

The relay is at ``/rt/ws/{channel}``; uvicorn does the HTTP and WebSocket framing and
hubbub's ASGI adapter (``hubbub.asgi``) feeds its bounded writer to uvicorn's ``send``.
Compare with ``hubbub serve`` (hubbub's own server) in the same run.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import server_args  # noqa: E402


def main() -> None:
    args = server_args(__doc__)
    import uvicorn
    from fastapi import FastAPI

    import hubbub

    hub_app = hubbub.App(host=args.host, port=args.port, page=False)
    api = FastAPI(lifespan=hub_app.lifespan)
    api.mount("/rt", hub_app)
    uvicorn.run(api, host=args.host, port=args.port, log_level="warning", ws_max_size=1 << 20,
                ws_ping_interval=None, backlog=4096)


if __name__ == "__main__":
    main()
