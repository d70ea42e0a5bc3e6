# How bench/results/full-final.json was made (issue 24, round 3): full-i24.json (workloads 1, 2 and 6 from
# the full run of 2026-12-01, workload 5 from the i24 runs) with workloads 3, 7 and 8 from final-w3478.json
# and workload 4 from final-w4.json, both run on main after the round-3 merges on a quiet machine.
# Run from the repository root: python bench/results/merge-final.py; then
# python bench/run.py --render bench/results/full-final.json
import json

full = json.load(open("bench/results/full-i24.json"))
new = json.load(open("bench/results/final-w3478.json"))
w4 = json.load(open("bench/results/final-w4.json"))
for k in ("3", "7", "8"):
    full["workloads"][k] = new["workloads"][k]
full["workloads"]["4"] = w4["workloads"]["4"]
for p in new["peers"]:
    if p not in full["peers"]:
        full["peers"].append(p)
full["command"] = (
    "python bench/run.py --suite --json-out /tmp/full.json --docs /tmp/full.md` for workloads 1, 2 and 6 "
    "(2026-12-01); workload 5 from the runs on branch i24 (bench/results/i24-w3458.json); workloads 3, 7 and 8 "
    "from `python bench/run.py --suite --no-profile --workloads 3,4,7,8 --servers hubbub,hubbub-protocol,"
    "hubbub-protobuf,hubbub-text,websockets,socketify,trivial,trivial-centrifugo --w7-subscribers 1000 "
    "--w7-seconds 5 --w8-clients 15000 --w8-recover-clients 15000 --json-out bench/results/final-w3478.json` "
    f"({new['elapsed_s'] / 60:.1f} minutes, finished {new['finished']}, other processes "
    f"{new['foreign_cpu_percent']:.0f} % of the CPU) and workload 4 from `python bench/run.py --suite --no-profile "
    "--workloads 4 --servers hubbub,hubbub-protocol,hubbub-protobuf,hubbub-text,websockets,socketify,trivial "
    "--json-out bench/results/final-w4.json` (after the ping wheel's slots became lists), both on main at the "
    "end of issue 24's round 3; merged by bench/results/merge-final.py and rendered with "
    "`python bench/run.py --render bench/results/full-final.json"
)
json.dump(full, open("bench/results/full-final.json", "w"), indent=1, default=str)
print("ok", sorted(full["workloads"]))
