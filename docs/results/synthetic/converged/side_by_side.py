"""The pre-registered claims of the default run and of the 30-epoch run side by side, read by the rule
fixed in docs/design.md §7.1 amendment 2 (run from the repository root):

    python docs/results/synthetic/converged/side_by_side.py
"""
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
default = {c["id"]: c for c in json.loads((HERE.parent / "analysis.json").read_text())["claims"]}
long = {c["id"]: c for c in json.loads((HERE / "analysis.json").read_text())["claims"]}


def effect(c):
    return f"{c['delta']:+.2f} [{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}]" + (" ⚠" if c["gated"] else "")


print("| claim | 6 epochs: Δ [95 %] | verdict | 30 epochs: Δ [95 %] | verdict | at convergence |")
print("|---|---|---|---|---|---|")
for cid, c in default.items():
    d = long[cid]
    if d["gated"]:
        reading = "not tested at convergence"
    elif d["verdict"] == c["verdict"]:
        reading = "survives"
    else:
        reading = "does not survive"
    print(f"| {cid} | {effect(c)} | {c['verdict']} | {effect(d)} | {d['verdict']} | {reading} |")
