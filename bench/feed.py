#!/usr/bin/env python3
"""Deterministic realistic feeds for the delta benchmark: a football match's state and an
order book. Each yields the document after every update, as compact JSON bytes.

    python bench/feed.py [match|book] [--updates N] [--seed S]   # sizes of the first states

* :func:`match_feed`: a match state of about 30 KB (two squads of 23 with per-player
  statistics, the timeline of events, betting markets). Each update moves the clock,
  possession and a few player statistics, now and then the odds, and rarely adds an event
  (a shot, a card, a goal). This is the kind of document Centrifugo measured its delta
  compression on (a football match state of 40,251 bytes).
* :func:`order_book_feed`: an order book of 50 levels a side (price, size, order count), each
  update changing the size of a few levels, sometimes moving the top of the book.

The same seed gives the same bytes on every run and Python version (``random.Random``
with an integer seed, ``json.dumps`` with fixed separators).
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Iterator
from typing import Any

_POSITIONS = ["GK", "RB", "CB", "CB", "LB", "DM", "CM", "CM", "RW", "LW", "ST"] + ["SUB"] * 12
_FIRST = ["Luca", "Mateo", "Noah", "Jonas", "Ivan", "Kai", "Hugo", "Milan", "Arda", "Rui", "Sami", "Theo"]
_LAST = ["Moreau", "Silva", "Kovač", "Jensen", "Rossi", "Novak", "Müller", "García", "Yılmaz", "Dubois",
         "Costa", "Nowak", "Andersen", "Fischer"]


def _dump(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def _squad(rng: random.Random, team: str) -> list[dict[str, Any]]:
    return [{
        "id": f"{team}-{n}", "number": n + 1, "name": f"{rng.choice(_FIRST)} {rng.choice(_LAST)}",
        "position": _POSITIONS[n], "on_pitch": n < 11, "rating": round(6.0 + rng.random(), 1),
        "stats": {"minutes": 0, "touches": 0, "passes": 0, "passes_completed": 0, "shots": 0,
                  "shots_on_target": 0, "tackles": 0, "interceptions": 0, "fouls": 0, "distance_m": 0,
                  "sprints": 0, "goals": 0, "assists": 0, "yellow": 0, "red": 0},
        "heatmap": [0] * 12,
        "season": {"appearances": rng.randrange(40), "goals": rng.randrange(15), "assists": rng.randrange(10),
                   "minutes": rng.randrange(3000), "pass_accuracy": round(60 + rng.random() * 35, 1),
                   "market_value_eur": rng.randrange(1, 90) * 250_000, "nationality": rng.choice(_LAST)[:3].upper(),
                   "preferred_foot": rng.choice(("left", "right")), "height_cm": rng.randrange(165, 200)},
    } for n in range(23)]


def match_feed(seed: int = 1, updates: int = 1000) -> Iterator[bytes]:
    """The match state after each of ``updates`` updates (the first is the initial state)."""
    rng = random.Random(seed)
    teams = ({"id": "home", "name": "Harbour City FC", "short": "HCF"},
             {"id": "away", "name": "Northgate Athletic", "short": "NGA"})
    state: dict[str, Any] = {
        "match_id": f"m-{seed:06d}", "competition": "League One", "round": 27, "venue": "Dockside Stadium",
        "status": "live", "clock": {"minute": 0, "second": 0, "period": 1, "added": 0},
        "score": {"home": 0, "away": 0},
        "teams": [{**team, "formation": "4-3-3", "possession": 50, "players": _squad(rng, team["id"]),
                   "totals": {"shots": 0, "corners": 0, "fouls": 0, "offsides": 0, "passes": 0}}
                  for team in teams],
        "events": [],
        "markets": [{"id": f"mk-{m}", "name": name, "suspended": False,
                     "selections": [{"id": f"s-{m}-{s}", "name": sel, "odds": round(1.2 + rng.random() * 6, 2)}
                                    for s, sel in enumerate(sels)]}
                    for m, (name, sels) in enumerate([
                        ("Match result", ["home", "draw", "away"]),
                        ("Both teams to score", ["yes", "no"]),
                        ("Total goals 2.5", ["over", "under"]),
                        ("Next goal", ["home", "none", "away"]),
                        ("Correct score", [f"{h}-{a}" for h in range(6) for a in range(6)]),
                        ("First goalscorer", [f"{t}-{n + 1}" for t in ("home", "away") for n in range(1, 11)]),
                        ("Half-time result", ["home", "draw", "away"]),
                    ])],
        "commentary": [],
    }
    for seq in range(updates):
        if seq:
            _advance_match(rng, state, seq)
        yield _dump(state)


def _advance_match(rng: random.Random, state: dict[str, Any], seq: int) -> None:
    clock = state["clock"]
    clock["second"] += 5
    if clock["second"] >= 60:
        clock["second"] -= 60
        clock["minute"] += 1
    team = rng.randrange(2)
    home, away = state["teams"]
    home["possession"] = max(30, min(70, home["possession"] + rng.choice((-1, 0, 1))))
    away["possession"] = 100 - home["possession"]
    side = state["teams"][team]
    for _ in range(rng.randrange(1, 4)):
        player = side["players"][rng.randrange(11)]
        stats = player["stats"]
        stats["touches"] += 1
        stats["passes"] += 1
        stats["passes_completed"] += rng.random() < 0.85
        stats["distance_m"] += rng.randrange(5, 40)
        player["heatmap"][rng.randrange(12)] += 1
    side["totals"]["passes"] += 1
    roll = rng.random()
    if roll < 0.05:
        shooter = side["players"][rng.randrange(1, 11)]
        shooter["stats"]["shots"] += 1
        side["totals"]["shots"] += 1
        kind = "shot"
        if rng.random() < 0.25:
            kind = "goal"
            shooter["stats"]["goals"] += 1
            state["score"][side["id"]] += 1
        state["events"].append({"seq": seq, "minute": clock["minute"], "type": kind, "team": side["id"],
                                "player": shooter["id"]})
        state["commentary"].append(f"{clock['minute']}' {kind} by {shooter['name']} ({side['short']})")
        del state["commentary"][:-10]
    elif roll < 0.08:
        fouler = side["players"][rng.randrange(11)]
        fouler["stats"]["fouls"] += 1
        side["totals"]["fouls"] += 1
        if rng.random() < 0.3:
            fouler["stats"]["yellow"] += 1
            state["events"].append({"seq": seq, "minute": clock["minute"], "type": "yellow", "team": side["id"],
                                    "player": fouler["id"]})
    if rng.random() < 0.2:
        market = state["markets"][rng.randrange(len(state["markets"]))]
        for selection in market["selections"]:
            selection["odds"] = round(max(1.01, selection["odds"] * (1 + (rng.random() - 0.5) / 20)), 2)


def order_book_feed(seed: int = 1, updates: int = 1000, levels: int = 50) -> Iterator[bytes]:
    """An order book (``levels`` price levels a side) after each of ``updates`` updates."""
    rng = random.Random(seed)
    mid = 25_000.0
    tick = 0.5

    def side(sign: int) -> list[list[Any]]:
        return [[round(mid + sign * tick * (n + 1), 1), round(rng.random() * 3, 4), rng.randrange(1, 40)]
                for n in range(levels)]

    book: dict[str, Any] = {"symbol": "BTC-EUR", "seq": 0, "ts": 1_700_000_000_000, "bids": side(-1), "asks": side(1)}
    for seq in range(updates):
        if seq:
            book["seq"] = seq
            book["ts"] += rng.randrange(5, 200)
            for _ in range(rng.randrange(1, 6)):
                levels_of = book["bids"] if rng.random() < 0.5 else book["asks"]
                level = levels_of[min(int(rng.expovariate(0.15)), levels - 1)]
                level[1] = round(max(0.0001, level[1] + (rng.random() - 0.5)), 4)
                level[2] = max(1, level[2] + rng.choice((-1, 1)))
            if rng.random() < 0.05:  # the top of the book moves one tick
                shift = rng.choice((-1, 1))
                for name in ("bids", "asks"):
                    for level in book[name]:
                        level[0] = round(level[0] + shift * tick, 1)
        yield _dump(book)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("match", "book"), nargs="?", default="match")
    parser.add_argument("--updates", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    feed = match_feed if args.kind == "match" else order_book_feed
    for n, state in enumerate(feed(seed=args.seed, updates=args.updates)):
        print(n, len(state))


if __name__ == "__main__":
    main()
