"""Does each sampler's quality improve with its NFE budget? Reads benchmarks.robustness result files.

    python -m benchmarks.monotone robustness robustness_ancestral_em robustness_sde

Records of later files replace earlier ones for the same (sampler, target, budget), so a rerun of some rows on a new
default is read over the full table; budgets the registry now refuses (below a sampler's min_nfe) are left out.
Quality is the log-density gap in nats (not in standard errors: gap / se is a test statistic, and a dispersed
sampler has a larger se) and sliced W2 in floors. A step from budget a to the next budget b is a regression when one
measure gets worse and the other does not get better: |gap| grows by more than 3 combined standard errors, or SW2 grows
by more than 10 % to above 1.5 floors. Prints the regressions per sampler and writes results/monotone.json.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

from scoresde.samplers.registry import SAMPLERS

from ._common import RESULTS, write_json


def regressions(records: list[dict]) -> dict[str, list[dict]]:
    """{sampler: [regression, ...]} over consecutive budgets of each (sampler, target); later records of the same
    (sampler, target, budget) replace earlier ones; budgets below the registry's min_nfe are left out."""
    runs: dict = defaultdict(dict)
    for r in records:
        if "budget" in r:
            runs[r["sampler"], r["target"]][r["budget"]] = r
    out: dict = defaultdict(list)
    for (name, tname), by_budget in sorted(runs.items()):
        spec = SAMPLERS.get(name.split(":")[0])
        budgets = sorted(b for b in by_budget if spec is None or b >= spec.min_nfe)
        for a, b in zip(budgets, budgets[1:]):
            ra, rb = by_budget[a], by_budget[b]
            noise = 3 * (ra["gap_se"] ** 2 + rb["gap_se"] ** 2) ** 0.5
            gap_worse, gap_better = (abs(rb["gap"]) - abs(ra["gap"]) > noise), (abs(ra["gap"]) - abs(rb["gap"]) > noise)
            sw_worse = rb["sw_ratio"] > 1.5 and rb["sw_ratio"] > 1.1 * ra["sw_ratio"]
            sw_better = ra["sw_ratio"] > 1.5 and ra["sw_ratio"] > 1.1 * rb["sw_ratio"]
            if (gap_worse and not sw_better) or (sw_worse and not gap_better):
                out[name].append({"target": tname, "from": a, "to": b, "gap": [ra["gap"], rb["gap"]],
                                  "sw_ratio": [ra["sw_ratio"], rb["sw_ratio"]]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", help="result names in benchmarks/results/ (without .json)")
    ap.add_argument("--json", default="monotone")
    args = ap.parse_args()
    records = [r for name in args.files for r in json.loads((RESULTS / f"{name}.json").read_text())["records"]]
    found = regressions(records)
    for key, regs in found.items():
        print(f"{key}: {len(regs)} regression(s)")
        for g in regs:
            print(f"    {g['target']:10s} NFE {g['from']:3d} -> {g['to']:3d}  gap {g['gap'][0]:+.3f} -> {g['gap'][1]:+.3f} "
                  f"nats  SW2 {g['sw_ratio'][0]:.2f} -> {g['sw_ratio'][1]:.2f}")
    if not found:
        print("no regressions")
    write_json(args.json, {"files": args.files, "regressions": found})


if __name__ == "__main__":
    main()
