"""Issue 21: a training run killed (SIGKILL) at any moment and resumed ends with the weights, checkpoints and
log.jsonl of an uninterrupted run.

    python -m benchmarks.crash_safety [--trials 20] [--seed 0]

Each trial starts a training subprocess (`python -m benchmarks.crash_safety --child ...`) and kills it with
SIGKILL, once or twice: at a random moment after training has started (the parent's timer), or from inside the child
at a chosen point of a checkpoint write (after model.safetensors, after state.pt, before the directory's rename,
before `latest` is rewritten, while old checkpoints are pruned) or half-way through a log line. After each kill a
new subprocess resumes the run (taking over the dead owner's lock); the last one finishes it. The run is then
compared with an uninterrupted one: the tensors of every kept checkpoint's model.safetensors (trained and EMA
weights), the names of the kept checkpoints, `latest`, and log.jsonl record by record (all fields but the
wall-clock steps_per_s). Writes benchmarks/results/crash_safety.json and benchmarks/RESULTS_safety.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
# points inside a checkpoint write or a log write where the child kills itself (the n-th time it gets there)
POINTS = ("weights", "state", "rename", "latest", "prune", "log")


def config(steps: int = 120):
    """A small run with checkpoints every 7 steps and log lines every 5 (so the two never line up for long)."""
    from scoresde.training import TrainConfig

    return TrainConfig(data="ring8", net={"name": "mlp", "width": 32, "depth": 2, "emb_dim": 16}, steps=steps,
                       batch=64, warmup=5, checkpoint_every=7, log_every=5, keep=2, seed=3)


def _kill_at(point: str, nth: int) -> None:
    """Make this process SIGKILL itself the nth time it reaches `point` (a wrapped function of the writer)."""
    import safetensors.torch

    from scoresde.training import checkpoint, loop

    count = [0]

    def reached() -> bool:
        count[0] += 1
        return count[0] == nth

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def after(module, name):  # kill right after module.name returns
        original = getattr(module, name)

        def wrapped(*a, **kw):
            out = original(*a, **kw)
            if reached():
                die()
            return out

        setattr(module, name, wrapped)

    def before(module, name, when=lambda *a: True):  # kill right before module.name runs
        original = getattr(module, name)

        def wrapped(*a, **kw):
            if when(*a) and reached():
                die()
            return original(*a, **kw)

        setattr(module, name, wrapped)

    if point == "weights":
        after(safetensors.torch, "save_file")
    elif point == "state":
        after(torch, "save")
    elif point == "rename":
        before(os, "rename")
    elif point == "latest":
        before(checkpoint, "_atomic_write_bytes", lambda path, payload: path.name == "latest")
    elif point == "prune":
        before(shutil, "rmtree", lambda path, *a: Path(path).name.startswith("step_") and
               not str(path).endswith(".tmp"))
    elif point == "log":
        original = loop._Loop._write_log

        def torn(self, record):
            if self.log_f is not None and reached():
                text = json.dumps(record) + "\n"
                self.log_f.write(text[: len(text) // 2])
                self.log_f.flush()
                die()
            return original(self, record)

        loop._Loop._write_log = torn


def child(out: str, resume: bool, kill: str | None, steps: int) -> None:
    """One training process: fresh or resumed, optionally killing itself at `kill` = "point:n"."""
    from scoresde.training import train

    torch.set_num_threads(1)
    if kill:
        point, nth = kill.split(":")
        _kill_at(point, int(nth))
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "started").write_text(str(os.getpid()))
    train(config(steps), out, resume=resume, progress=False)


def fork_child(out: Path, resume: bool, kill: str | None = None, steps: int = 120, timeout: float = 120) -> int:
    """`child` in a forked process (no interpreter start: the test suite's trials); -> its exit status, negative for
    the signal that ended it. A child still running after `timeout` seconds (a fork can inherit a lock another
    thread held) is killed and is a RuntimeError, not a hung caller."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's code
        code = 1
        try:
            child(str(out), resume, kill, steps)
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise RuntimeError(f"the forked child (pid {pid}) was still running after {timeout} s; killed it")
        time.sleep(0.002)


def run_child(out: Path, resume: bool, kill: str | None = None, steps: int = 120, after: float | None = None,
              timeout: float = 300) -> tuple[int, float]:
    """Run a child; with `after`, SIGKILL it that many seconds after it starts training. -> (its exit status, the
    seconds from the start of training to its end)."""
    cmd = [sys.executable, "-m", "benchmarks.crash_safety", "--child", str(out), "--steps", str(steps)]
    cmd += ["--resume"] if resume else []
    cmd += ["--kill", kill] if kill else []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    (out / "started").unlink(missing_ok=True)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t_end = time.monotonic() + timeout
    while not (out / "started").exists() and proc.poll() is None and time.monotonic() < t_end:
        time.sleep(0.005)
    started = time.monotonic()
    if after is not None:
        time.sleep(after)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=timeout)
    if proc.returncode not in (0, -signal.SIGKILL):
        raise RuntimeError(f"child {' '.join(cmd)} failed ({proc.returncode}): {err.strip()[-2000:]}")
    return proc.returncode, time.monotonic() - started


def _records(run: Path) -> list[dict]:
    lines = (run / "log.jsonl").read_text().splitlines() if (run / "log.jsonl").exists() else []
    return [{k: v for k, v in json.loads(line).items() if k != "steps_per_s"} for line in lines]


def differences(run: Path, ref: Path) -> list[str]:
    """How `run` differs from the uninterrupted `ref`: kept checkpoints, latest, weights, log records."""
    from safetensors.torch import load_file

    found = []
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    ref_names = sorted(p.name for p in (ref / "checkpoints").iterdir())
    if names != ref_names:
        found.append(f"checkpoints {names} != {ref_names}")
    if (run / "latest").read_text() != (ref / "latest").read_text():
        found.append(f"latest {(run / 'latest').read_text()} != {(ref / 'latest').read_text()}")
    for name in set(names) & set(ref_names):
        a, b = load_file(str(run / "checkpoints" / name / "model.safetensors")), \
            load_file(str(ref / "checkpoints" / name / "model.safetensors"))
        if a.keys() != b.keys() or any(not torch.equal(a[k], b[k]) for k in a):
            found.append(f"{name}: weights differ")
    mine, theirs = _records(run), _records(ref)
    if mine != theirs:
        first = next((i for i, (x, y) in enumerate(zip(mine, theirs)) if x != y), min(len(mine), len(theirs)))
        found.append(f"log.jsonl: {len(mine)} vs {len(theirs)} records, first difference at record {first}")
    return found


def trial(rng: random.Random, work: Path, ref: Path, steps: int, seconds: float) -> dict:
    """Kill a run once or twice (random moments or chosen points), resume it to the end, compare with ref."""
    out = work / "run"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    kills, resume = [], False
    for _ in range(rng.choice((1, 2))):
        if rng.random() < 0.4:
            at = rng.uniform(0, seconds)
            rc, _ = run_child(out, resume, steps=steps, after=at)
            kills.append(f"timer {at:.2f} s" + ("" if rc == -signal.SIGKILL else " (finished first)"))
        else:
            point = rng.choice(POINTS)
            nth = rng.randint(1, steps // 7 if point != "log" else steps // 5)
            rc, _ = run_child(out, resume, kill=f"{point}:{nth}", steps=steps)
            kills.append(f"{point} #{nth}" + ("" if rc == -signal.SIGKILL else " (not reached)"))
        resume = (out / "checkpoints").is_dir() and any(p.name.startswith("step_") and not p.name.endswith(".tmp")
                                                        for p in (out / "checkpoints").iterdir())
        if not resume:  # killed before its first checkpoint: start afresh
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
    run_child(out, resume, steps=steps)
    diff = differences(out, ref)
    return {"kills": kills, "identical": not diff, "differences": diff}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--kill", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.child, args.resume, args.kill, args.steps)
    from ._common import command, write_json

    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "ref").mkdir()
        _, seconds = run_child(work / "ref", False, steps=args.steps)  # uninterrupted, a subprocess like the trials
        rows = []
        for k in range(args.trials):
            rows.append(trial(rng, work, work / "ref", args.steps, seconds))
            print(f"trial {k + 1:2d}: {'identical' if rows[-1]['identical'] else 'DIFFERENT'}; kills: "
                  f"{', '.join(rows[-1]['kills'])}", flush=True)
    kills = [k for r in rows for k in r["kills"]]
    landed = [k for k in kills if "(" not in k]
    inside = [k for k in landed if not k.startswith("timer")]
    summary = {"trials": len(rows), "identical": sum(r["identical"] for r in rows), "kills": len(landed),
               "kills_inside_a_write": len(inside), "kills_at_random_times": len(landed) - len(inside),
               "steps": args.steps, "uninterrupted_run_seconds": round(seconds, 2)}
    path = write_json("crash_safety", {**summary, "rows": rows})
    table = "\n".join(["| trial | kills (SIGKILL), then resumed | final run identical |", "|---|---|---|"] +
                      [f"| {i + 1} | {', '.join(r['kills'])} | {'yes' if r['identical'] else 'NO: ' + '; '.join(r['differences'])} |"
                       for i, r in enumerate(rows)])
    text = (f"# Crash safety (issue 21)\n\n`{command()}` ({path.relative_to(ROOT)})\n\n"
            f"A {args.steps}-step training run (checkpoints every 7 steps, log lines every 5, 2 kept) killed with "
            f"SIGKILL and resumed by a new process, once or twice per trial: **{summary['identical']} of "
            f"{summary['trials']} trials end identical to the uninterrupted run** (every kept checkpoint's weights, "
            f"`latest`, log.jsonl record for record but steps_per_s), after {summary['kills']} kills: "
            f"{summary['kills_inside_a_write']} inside a checkpoint or log write, {summary['kills_at_random_times']} at "
            f"random moments (uniform over the {seconds:.1f} s an uninterrupted run trains).\n\n{table}\n")
    (ROOT / "benchmarks" / "RESULTS_safety.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
