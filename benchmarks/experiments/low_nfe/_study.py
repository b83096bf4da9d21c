"""What the study scripts share: the targets, their references and pilots, the evaluation of one sample set."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch

from benchmarks._common import quality, reference
from benchmarks.robustness import target
from scoresde.samplers.tuning import data_scale, pilot_batch

HERE = Path(__file__).resolve().parent / "results"
# the 11 targets of benchmarks.robustness whose exact ODE map is within both floors
REACHABLE = "ring8,ring8x4,ring8x16,grid25,grid25x4,grid25x16,aniso,anisoq,anisox4,mix5,mix16"


class Setting(NamedTuple):
    name: str
    target: object  # toy_data.GaussianMixture
    ref: torch.Tensor  # exact samples (seed 1)
    sw_floor: float
    score: object  # the exact ScoreFn under the process
    pilots: torch.Tensor  # 1000 prior samples, tuning.PILOT_SEED
    scale: float  # tuning.data_scale from the pilots


def setting(name: str, process, n: int) -> Setting:
    tgt = target(name)
    ref, sw_floor, _, _ = reference(tgt, n)
    score = tgt.score_fn(process)
    pilots = pilot_batch(process, 1000, torch.empty((1, *tgt.event_shape), dtype=torch.float64))
    return Setting(name, tgt, ref, sw_floor, score, pilots, data_scale(score, process, pilots))


def prior(s: Setting, process, n: int) -> tuple[torch.Tensor, torch.Generator]:
    """n prior samples from seed 0 (float64) and the generator, as benchmarks.robustness draws them."""
    g = torch.Generator().manual_seed(0)
    return process.prior((n, *s.target.event_shape), generator=g, dtype=torch.float64), g


def judge(s: Setting, out: torch.Tensor, label: str) -> tuple[dict, str]:
    """(quality record, table cell 'label: gap_se/SW2_floors[*]')."""
    q = quality(s.target, out, s.ref, s.sw_floor)
    ok = q["gap_ok"] and q["sw_ok"]
    return q, f"{label}: {q['gap_z']:+5.0f}/{q['sw_ratio']:4.2f}{'*' if ok else ' '}"
