"""Issue 19: scoresde.testing's learned-model report on a ring8 run as it trains, and the broken-model zoo table.

    python -m benchmarks.testing_kit                       # ring8, 3000 steps, reports at steps 500, 1500, 3000
    python -m benchmarks.testing_kit --steps 3000 --at 500,1500,3000 --n 256

Trains one small ring8 run (VP, eps-prediction MLP, checkpoints every 500 steps), then for each chosen checkpoint
times check_learned on its EMA network (float64, n clean ring8 points noised at 4 levels) and, for reference, on the
exact ring8 score. The last column is what the report cannot see: the network's true relative score error against
the exact mixture, sqrt(E|s - s*|² / E|s*|²) over the same levels. Then every zoo mutant is checked on ring8.
Writes benchmarks/results/testing_kit.json and benchmarks/RESULTS_testing.md. One intra-op thread.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

import toy_data
from benchmarks._common import write_json
from scoresde import VE, VP, DiscreteVP
from scoresde.testing import check_learned, noise_levels, zoo
from scoresde.training import TrainConfig, load_model, train

KEYS = ("conservative", "views", "fokker_planck", "likelihood")
RESULTS_MD = Path(__file__).resolve().parent / "RESULTS_testing.md"


def train_run(cfg: TrainConfig, out: Path) -> tuple[float, list[float]]:
    """scoresde.training.train with checkpoints every cfg.checkpoint_every steps into out; -> (seconds, losses)."""
    result = train(cfg, out, progress=False)
    return result.seconds, result.losses


def true_score_error(score, process, target, data: torch.Tensor, levels: int) -> float:
    """sqrt(E|s - s*|² / E|s*|²) against the exact mixture score, over the report's noise levels."""
    g = torch.Generator().manual_seed(0)
    num = den = 0.0
    for t in noise_levels(process, levels):
        tb = t.to(data.dtype).expand(data.shape[0])
        x = process.perturb(data, tb, torch.randn(data.shape, generator=g, dtype=data.dtype))
        exact = target.score(x, process, tb)
        num += float((score(x, tb) - exact).square().sum())
        den += float(exact.square().sum())
    return (num / den) ** 0.5


def learned_row(name: str, score, process, target, data, args) -> dict:
    t0 = time.perf_counter()
    report = check_learned(score, process, data, levels=args.levels)
    seconds = time.perf_counter() - t0
    row = {"model": name, "seconds": seconds, "report": report.to_dict(),
           "true_score_error": true_score_error(score, process, target, data, args.levels)}
    row.update({k: report[k].statistic for k in KEYS})
    return row


def train_and_report(args) -> tuple[list[dict], float]:
    target = toy_data.load("ring8")
    data = target.sample(args.n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    cfg = TrainConfig(data="ring8", steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed,
                      checkpoint_every=args.every, keep=args.steps // args.every + 1)
    rows = [learned_row("exact ring8 score", target.score_fn(VP()), VP(), target, data, args)]
    with tempfile.TemporaryDirectory() as run:
        seconds, losses = train_run(cfg, Path(run))
        for step in args.at:
            model = load_model(Path(run) / "checkpoints" / f"step_{step:08d}")
            model.net.double()
            row = learned_row(f"step {step}", model.score_fn(), model.process, target, data, args)
            recent = losses[max(0, step - args.every):step]
            rows.append({**row, "step": step, "train_loss": sum(recent) / len(recent)})
    return rows, seconds


def zoo_rows() -> list[dict]:
    """Every mutant on ring8 under a process it applies to; the failing checks with statistic and tolerance."""
    ring = toy_data.load("ring8")
    candidates = [VP(), VE(), DiscreteVP.linear(200)]
    rows = []
    for m in zoo.MUTANTS:
        process = next(p for p in candidates if m.applies(p, ring))
        t0 = time.perf_counter()
        report = m.check(process, ring)
        failed = [{"key": c.key, "statistic": c.statistic, "tolerance": c.tolerance} for c in report.failures]
        correct = zoo.check_correct(m.target, process, ring, likelihood="likelihood" in m.caught_by)
        rows.append({"mutant": m.name, "bug": m.bug, "process": repr(process), "caught": not report.ok,
                     "caught_by": list(m.caught_by), "failed": failed, "correct_passes": correct.ok,
                     "seconds": time.perf_counter() - t0})
    return rows


def markdown(rows: list[dict], zoo_table: list[dict], command: str, train_seconds: float) -> str:
    lines = ["# scoresde.testing: the learned-model report over training, and the broken-model zoo", "",
             f"Command: `{command}` (one intra-op thread; JSON: `benchmarks/results/testing_kit.json`).", "",
             f"## check_learned on a ring8 run (VP, eps-MLP, {train_seconds:.0f} s of training) as it trains", "",
             "Each column is the report's statistic (its worst noise level; lower is better); `true err` is the "
             "network's relative score error against the exact mixture, which the report does not use.", "",
             "| model | train loss | conservative | views | fokker_planck | likelihood | true err | report s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        loss = f"{r['train_loss']:.4f}" if "train_loss" in r else "-"
        lines.append(f"| {r['model']} | {loss} | " + " | ".join(f"{r[k]:.3g}" for k in KEYS)
                     + f" | {r['true_score_error']:.3g} | {r['seconds']:.1f} |")
    trained = [r for r in rows if "step" in r]
    trend = []
    for key in KEYS + ("true_score_error",):
        vals = [r[key] for r in trained]
        verdict = "falls at every checkpoint" if all(b < a for a, b in zip(vals, vals[1:])) else (
            "lower at the end" if vals[-1] < vals[0] else "does not fall")
        trend.append(f"{key} " + " → ".join(f"{v:.3g}" for v in vals) + f" ({verdict})")
    lines += ["", "Over training: " + "; ".join(trend) + "."]
    lines += ["", "Scales: conservative |J - Jᵀ| / |J|; views eps units per dimension; fokker_planck "
              "|residual| / the sum of its terms' sizes; likelihood nats per dimension (dopri5 vs rk4, 64 steps). "
              "The views of a one-headed network agree to rounding by construction (score.predict round trips): the "
              "check measures something when a model has views of its own (a second head, a hand-written adapter; "
              "see the zoo's denoiser_sigma_for_variance).", "",
              "Per noise level (`details` of the report; t from high to low signal-to-noise):", "",
              "| model | check | " + " | ".join(f"t={t:.3g}" for t in rows[0]["report"]["checks"][0]["details"]["t"])
              + " |", "|---|---|" + "---|" * len(rows[0]["report"]["checks"][0]["details"]["t"])]
    for r in rows:
        for c in r["report"]["checks"]:
            if c["key"] in ("conservative", "fokker_planck"):
                lines.append(f"| {r['model']} | {c['key']} | " + " | ".join(f"{v:.3g}" for v in c["details"]["value"])
                             + " |")
    lines += ["",
              "## The zoo: every mutant on ring8, the checks that fail (statistic vs tolerance)", "",
              "| mutant | bug | process | failing checks |", "|---|---|---|---|"]
    for z in zoo_table:
        fails = ", ".join(f"{f['key']} {f['statistic']:.2g} > {f['tolerance']:.0g}" for f in z["failed"])
        lines.append(f"| {z['mutant']} | {z['bug']} | {z['process']} | {fails} |")
    caught = sum(z["caught"] for z in zoo_table)
    passes = sum(z["correct_passes"] for z in zoo_table)
    lines += ["", f"Caught: {caught} / {len(zoo_table)}; the correct model passes the same checks in "
              f"{passes} / {len(zoo_table)} cases."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--every", type=int, default=500)
    p.add_argument("--at", default="500,1500,3000", help="checkpoint steps to report (multiples of --every)")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--n", type=int, default=256, help="clean ring8 points the report noises")
    p.add_argument("--levels", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    args.at = [int(s) for s in args.at.split(",")]
    if any(s % args.every or s > args.steps for s in args.at):
        raise SystemExit(f"--at {args.at}: each step must be a multiple of --every {args.every} and <= --steps")
    torch.set_num_threads(1)
    command = "python -m benchmarks.testing_kit " + " ".join(sys.argv[1:])
    rows, train_seconds = train_and_report(args)
    zoo_table = zoo_rows()
    write_json("testing_kit", {"command": command.strip(), "config": vars(args), "train_seconds": train_seconds,
                               "rows": rows, "zoo": zoo_table})
    text = markdown(rows, zoo_table, command.strip(), train_seconds)
    RESULTS_MD.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
