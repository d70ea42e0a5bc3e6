# How bench/results/full-i24.json was made: the full run of 2026-12-01 (full.json) with workloads 3, 4, 5, 7, 8
# replaced by the i24 runs. Run from the repository root: python bench/results/merge-i24.py
import json
full = json.load(open("bench/results/full.json"))
a = json.load(open("bench/results/w78.json"))["workloads"]
b = json.load(open("bench/results/i24-w7b.json"))["workloads"]
c = json.load(open("bench/results/i24-w3458.json"))
w4 = json.load(open("bench/results/i24-w4-after.json"))["workloads"]["4"]
for k in ("3", "5", "8"):
    full["workloads"][k] = c["workloads"][k]
w4all = dict(c["workloads"]["4"]); w4all.update(w4)
full["workloads"]["4"] = w4all
w7 = a["7"]
for row, peers in b["7"]["rows"].items():
    merged = {}
    for name, res in peers.items():
        merged[name] = res
    for name, res in w7["rows"].get(row, {}).items():
        if name not in merged:
            res = dict(res); res["server"] = name
            merged[name + " (run A)"] = res
    w7["rows"][row] = merged
full["workloads"]["7"] = w7
for extra in (a, b):
    pass
for p in c.get("peers", []) + ["hubbub-text"]:
    if p not in full["peers"]:
        full["peers"].append(p)
full["skipped"] = {k: v for k, v in full.get("skipped", {}).items() if k not in c.get("peers", [])}
full["command"] = full["command"] + "` for workloads 1, 2 and 6; workloads 3, 4, 5, 7 and 8 come from the runs on branch i24, under load from other processes (bench/results/i24-*.json and w78.json; see 'What a connection costs'): `python bench/run.py --suite --workloads 3,4,5,8 ..."
json.dump(full, open("bench/results/full-i24.json", "w"), indent=1, default=str)
print("ok", {r: list(p) for r, p in w7["rows"].items()})
