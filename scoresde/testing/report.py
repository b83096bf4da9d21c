"""Reports of the kit's checks: each identity's statistic against its tolerance, and where it was worst."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import Tensor

__all__ = ["Check", "Report", "CheckFailed"]


class CheckFailed(AssertionError):
    """Raised by Report.assert_ok(); the message names each failed identity, its statistic and where it broke."""


@dataclass
class Check:
    """One identity or measurement: `statistic` (an error divided by `scale`) against `tolerance`.

    `where` locates the worst point (time t, times (s, t), sample index, view); `details` holds per-level values
    (e.g. the statistic at each noise level) for tracking over training.
    """

    key: str
    name: str
    statistic: float
    tolerance: float
    where: dict = field(default_factory=dict)
    scale: str = "relative"
    details: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when the statistic is finite and within the tolerance."""
        return math.isfinite(self.statistic) and self.statistic <= self.tolerance

    def describe(self) -> str:
        at = ", ".join(f"{k}={_fmt(v)}" for k, v in self.where.items())
        verdict = "ok  " if self.ok else "FAIL"
        return (f"{verdict} {self.name}: {self.statistic:.3g} ({self.scale}; tolerance {self.tolerance:.3g})"
                + (f" at {at}" if at else ""))

    def to_dict(self) -> dict:
        return {"key": self.key, "name": self.name, "statistic": self.statistic, "tolerance": self.tolerance,
                "ok": self.ok, "where": self.where, "scale": self.scale, "details": self.details}


def _fmt(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


class Report:
    """The checks of one call: `ok` when all pass; `report[key]` is one Check; `assert_ok()` raises CheckFailed."""

    def __init__(self, subject: str, checks: list[Check]):
        self.subject = subject
        self.checks = list(checks)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def __getitem__(self, key: str) -> Check:
        for c in self.checks:
            if c.key == key:
                return c
        raise KeyError(f"{key!r} is not in this report; it has {', '.join(c.key for c in self.checks)}")

    def __contains__(self, key: str) -> bool:
        return any(c.key == key for c in self.checks)

    def __iter__(self) -> Iterator[Check]:
        return iter(self.checks)

    def __add__(self, other: "Report") -> "Report":
        return Report(f"{self.subject} + {other.subject}", self.checks + other.checks)

    def __str__(self) -> str:
        return "\n".join([self.subject] + ["  " + c.describe() for c in self.checks])

    def assert_ok(self) -> "Report":
        """Raise CheckFailed naming every failed identity, its statistic, tolerance and where it broke."""
        bad = self.failures
        if bad:
            lines = [f"{self.subject}: {len(bad)} of {len(self.checks)} checks failed"]
            raise CheckFailed("\n".join(lines + ["  " + c.describe() for c in bad]))
        return self

    def to_dict(self) -> dict:
        return {"subject": self.subject, "ok": self.ok, "checks": [c.to_dict() for c in self.checks]}


def worst(key: str, name: str, err: Tensor, tolerance: float, where: dict[str, Tensor], scale: str = "relative",
          details: dict | None = None) -> Check:
    """A Check from per-point errors `err` (already divided by their scale): the statistic is the largest (NaN
    wins), and `where` takes each named coordinate at that point (coordinate tensors broadcast against err's shape)."""
    err = err.detach().double().cpu()
    if err.numel() == 0:
        raise ValueError(f"{key}: no points to check")
    flat = err.flatten()
    nan = torch.isnan(flat)
    i = int(nan.nonzero()[0]) if bool(nan.any()) else int(torch.argmax(flat))
    at = {}
    for k, v in where.items():
        val = torch.as_tensor(v).detach().cpu().expand(err.shape).flatten()[i].item()
        at[k] = float(val) if isinstance(val, float) else int(val)
    return Check(key, name, float(flat[i]), float(tolerance), at, scale, details or {})
