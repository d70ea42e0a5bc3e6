"""JSON subscribe reply with 50 recovered publications: to_json() + dumps (before) against
JSONCodec.encode_reply splicing the publications' JSON bytes (after). Best of 5 x 2,000."""

import timeit

from hubbub.brokers.base import Publication
from hubbub.codec import JSON
from hubbub.strictjson import dumps

PUBS = [Publication(b'{"n":%d}' % i, offset=i + 1) for i in range(50)]


def old() -> bytes:
    return dumps({"id": 2, "subscribe": {"recoverable": True, "epoch": "e", "offset": 1,
                                         "publications": [p.to_json() for p in PUBS], "recovered": True}})


def new() -> bytes:
    return JSON.encode_reply(2, "subscribe", {"recoverable": True, "epoch": "e", "offset": 1,
                                              "publications": PUBS, "recovered": True})


for name, f in (("to_json+dumps", old), ("splice", new), ("to_json+dumps", old), ("splice", new)):
    t = min(timeit.repeat(f, number=2000, repeat=5)) / 2000
    print(f"{name}: {t * 1e6:.1f} us per subscribe reply with 50 recovered publications")
