"""Regenerate src/hubbub/proto/client_pb2.py from src/hubbub/proto/client.proto.

Usage: python tools/gen_proto.py  (needs grpcio-tools: pip install grpcio-tools)

The generated module is committed, so hubbub needs only the ``protobuf``
runtime. protoc is run from ``src/`` so the descriptor's file name is
``hubbub/proto/client.proto`` (unique in the process's descriptor pool).
"""

from __future__ import annotations

import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"


def main() -> int:
    from grpc_tools import protoc

    args = ["protoc", f"-I{SRC}", f"--python_out={SRC}", f"--pyi_out={SRC}", "hubbub/proto/client.proto"]
    code = protoc.main(args)
    if code == 0:
        print("wrote", SRC / "hubbub" / "proto" / "client_pb2.py")
    return code


if __name__ == "__main__":
    sys.exit(main())
