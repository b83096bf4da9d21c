"""Issue 21: nothing lost, nothing mixed, nothing killed. One writer per run directory, interrupts that save, an exact
log across kills and resumes, bounds checked before work, one-line errors with documented exit codes, samples that
do not depend on --n or --batch."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scoresde import VP
from scoresde.cli import main
from scoresde.likelihood import log_likelihood
from scoresde.losses import DSMLoss, dsm_loss
from scoresde.nets import MLPScoreNet
from scoresde.samplers.registry import SAMPLERS
from scoresde.training import (RunLock, RunLockedError, TrainConfig, TrainingInterrupted, latest_checkpoint,
                               load_checkpoint, train)

from .conftest import DEVICE

TINY = ["--data", "ring8", "--batch", "16", "--width", "8", "--depth", "1", "--no-preview", "--device", str(DEVICE)]


def _cfg(**kw) -> TrainConfig:
    base = dict(data="ring8", net={"name": "mlp", "width": 16, "depth": 1, "emb_dim": 8}, steps=30, batch=32,
                warmup=3, checkpoint_every=7, log_every=5, device=str(DEVICE))
    return TrainConfig(**{**base, **kw})


def _log(run: Path) -> list[dict]:
    """log.jsonl's records without the wall-clock field."""
    return [{k: v for k, v in json.loads(line).items() if k != "steps_per_s"}
            for line in (run / "log.jsonl").read_text().splitlines()]


def _same_weights(a: Path, b: Path) -> bool:
    x, y = load_checkpoint(a), load_checkpoint(b)
    return x["step"] == y["step"] and all(
        torch.equal(v, y[part].state_dict()[k]) for part in ("net", "ema") for k, v in x[part].state_dict().items())


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("tiny") / "run"
    train(_cfg(steps=4, checkpoint_every=2), run, progress=False)
    return run


# -- 1: one writer per run directory --------------------------------------------------------------------------------
def test_a_second_trainer_is_refused_naming_the_owner(tmp_path, capsys):
    with RunLock(tmp_path / "d"):
        with pytest.raises(RunLockedError, match=f"in use by another trainer \\(pid {os.getpid()} on "):
            train(_cfg(), tmp_path / "d", progress=False)
        assert main(["train", *TINY, "--steps", "3", "--out", str(tmp_path / "d")]) == 1
        assert f"pid {os.getpid()}" in _one_line(capsys)
    assert not (tmp_path / "d" / "checkpoints").exists() and not (tmp_path / "d" / "log.jsonl").exists()
    train(_cfg(steps=3), tmp_path / "d", progress=False)  # released: the directory is free again


# -- 2, 3: bounds and outputs checked before work -------------------------------------------------------------------
def test_unbounded_work_is_refused_before_it_starts(tmp_path, capsys, tiny_run):
    out = tmp_path / "cmp"
    for nfe in ("1000000000", "99999999999999999999"):
        t0 = time.perf_counter()
        assert main(["compare", "--samplers", "ddim", "--nfe", nfe, "--n", "10", "--out", str(out)]) == 2
        assert f"NFE {nfe} is more than the 100,000" in _one_line(capsys) and time.perf_counter() - t0 < 5
    assert not (out / "results.json").exists()
    with pytest.raises(ValueError, match=r"training this network \(240,015,200,002 parameters.*needs about 4.37 TB"):
        train(_cfg(net={"name": "mlp", "width": 200000, "depth": 3}), progress=False)
    assert main(["train", *TINY, "--width", "200000", "--depth", "3", "--out", str(tmp_path / "w")]) == 2
    assert "needs about" in _one_line(capsys) and not (tmp_path / "w").exists()
    assert main(["sample", "--checkpoint", str(tiny_run), "--n", str(10**15), "--out", str(tmp_path / "s.png")]) == 2
    assert "samples of shape (2,) at NFE 20 needs about" in _one_line(capsys)


@pytest.mark.parametrize("command", ["sample", "compare", "train", "targets"])
def test_unwritable_out_is_refused_before_the_work(tmp_path, capsys, tiny_run, command):
    blocker = tmp_path / "file"
    blocker.write_text("")
    args = {"sample": ["--checkpoint", str(tiny_run), "--n", "5"], "compare": ["--samplers", "ddim", "--n", "10"],
            "train": [*TINY, "--steps", "2"], "targets": []}[command]
    for out in (blocker / "sub" / "x.png", Path("/proc/scoresde_not_writable/x")):
        t0 = time.perf_counter()
        assert main([command, *args, "--out", str(out)]) == 2
        line = _one_line(capsys)
        assert "not writable" in line and str(out) in line, line
        assert time.perf_counter() - t0 < 5


# -- 4: interrupts --------------------------------------------------------------------------------------------------
def test_sigint_and_sigterm_finish_the_step_write_a_checkpoint_and_resume_exactly(tmp_path):
    def interrupt_at(step=0, signum=signal.SIGINT, times=1):  # the same eval records in every run
        def eval_fn(s, ema):
            if s == step:
                for _ in range(times):
                    os.kill(os.getpid(), signum)  # delivered in this (main) thread before the next bytecode
            return {}
        return eval_fn

    full = train(_cfg(), tmp_path / "full", progress=False, eval_fn=interrupt_at(), eval_every=10)
    run, handlers = tmp_path / "run", (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    with pytest.raises(TrainingInterrupted) as info:
        train(_cfg(), run, progress=False, eval_fn=interrupt_at(10, signal.SIGINT), eval_every=10)
    e = info.value
    assert (e.step, e.exit_code, e.checkpoint) == (10, 130, run / "checkpoints" / "step_00000010")
    assert "interrupted by SIGINT after step 10" in str(e) and latest_checkpoint(run) == e.checkpoint
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # restored
    with pytest.raises(TrainingInterrupted) as info:  # a second signal: at once, the last checkpoint kept
        train(_cfg(), run, resume=True, progress=False, eval_fn=interrupt_at(20, signal.SIGTERM, 2), eval_every=10)
    assert (info.value.step, info.value.exit_code) == (None, 143)
    assert info.value.checkpoint == run / "checkpoints" / "step_00000014" and "at once" in str(info.value)
    rest = train(_cfg(), run, resume=True, progress=False, eval_fn=interrupt_at(), eval_every=10)
    assert rest.losses == full.losses[14:] and _same_weights(run, tmp_path / "full")
    assert _log(run) == _log(tmp_path / "full")


def test_ctrl_c_in_the_cli_saves_and_exits_130(tmp_path, capsys):
    run = tmp_path / "run"

    def press_ctrl_c():  # after the first log line (step 50)
        t_end = time.monotonic() + 60
        while time.monotonic() < t_end:
            if (run / "log.jsonl").exists() and (run / "log.jsonl").stat().st_size:
                return os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.005)

    threading.Thread(target=press_ctrl_c, daemon=True).start()
    code = main(["train", *TINY, "--steps", "1000000", "--out", str(run)])
    line = _one_line(capsys)
    ckpt = latest_checkpoint(run)
    assert code == 130 and f"checkpoint {ckpt}" in line and line.startswith("scoresde train: interrupted by SIGINT")
    assert load_checkpoint(run)["step"] >= 50  # the first log line came at step 50


# -- 5: an exact log ------------------------------------------------------------------------------------------------
def test_log_after_a_crash_and_resume_equals_the_uninterrupted_log(tmp_path):
    train(_cfg(), tmp_path / "full", progress=False)

    class CrashAt17(DSMLoss):  # the default loss, crashing in step 17: after log line 15 and checkpoint 14
        calls = 0

        def __call__(self, *args, **kwargs):
            self.calls += 1
            if self.calls == 17:
                raise RuntimeError("crash")
            return super().__call__(*args, **kwargs)

    with pytest.raises(RuntimeError, match="crash"):
        train(_cfg(), tmp_path / "run", progress=False, loss=CrashAt17())
    assert load_checkpoint(tmp_path / "run")["step"] == 14
    (tmp_path / "run" / "log.jsonl").open("a").write('{"step": 18, "lo')  # and a torn line
    train(_cfg(), tmp_path / "run", resume=True, progress=False)
    assert _log(tmp_path / "run") == _log(tmp_path / "full")
    assert [r["step"] for r in _log(tmp_path / "full")] == [5, 10, 15, 20, 25, 30]


def test_a_fresh_run_refuses_an_earlier_run_unless_told_to_overwrite(tmp_path, capsys):
    run = tmp_path / "run"
    first = train(_cfg(steps=10), run, progress=False)
    with pytest.raises(ValueError, match="holds an earlier run .checkpoints, latest, log.jsonl."):
        train(_cfg(steps=10), run, progress=False)
    again = train(_cfg(steps=10), run, overwrite=True, progress=False)
    assert again.losses == first.losses and [r["step"] for r in _log(run)] == [5, 10]
    assert main(["train", *TINY, "--steps", "2", "--out", str(run)]) == 2
    assert "--overwrite" in _one_line(capsys)
    assert main(["train", *TINY, "--steps", "2", "--overwrite", "--out", str(run)]) == 0
    assert load_checkpoint(run)["step"] == 2 and [r["step"] for r in _log(run)] == [2]


# -- crash safety: SIGKILL at chosen points, resumed in another process ----------------------------------------------
@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The uninterrupted run the crash trials must end identical to (one for all trials: they only read it)."""
    from benchmarks.crash_safety import config

    ref = tmp_path_factory.mktemp("uninterrupted") / "ref"
    train(config(60), ref, progress=False)
    return ref


@pytest.mark.parametrize("kill, resumed_from", [("state:5", 28), ("latest:4", 21), ("log:7", 28), ("prune:7", 60)])
def test_sigkill_inside_a_checkpoint_or_log_write_then_resume_is_exact(tmp_path, uninterrupted, kill, resumed_from):
    """Four trials of `python -m benchmarks.crash_safety` (which runs 20 in fresh interpreters): a forked training
    process SIGKILLs itself after writing checkpoint 35's state.pt (before the rename publishes it), before `latest`
    names checkpoint 28 (which is complete), half-way through log line 35, or before the last checkpoint's prune;
    this process takes over the dead owner's lock, resumes, and ends identical to an uninterrupted run (weights,
    kept checkpoints, latest, log)."""
    from benchmarks.crash_safety import config, differences, fork_child

    out = tmp_path / "run"
    assert fork_child(out, False, kill, steps=60) == -signal.SIGKILL
    assert (out / "checkpoints" / "step_00000035.tmp").exists() == kill.startswith("state")  # inside the write
    assert load_checkpoint(out)["step"] == resumed_from
    train(config(60), out, resume=True, progress=False)  # takes the dead child's lock over
    assert differences(out, uninterrupted) == []


# -- 6, 7: likelihood and shapes --------------------------------------------------------------------------------------
def test_likelihood_errors_are_the_documented_value_errors():
    process, x = VP(), torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="dopri5 stopped .underflow in dt.*score returned NaN or inf"):
        log_likelihood(lambda y, t: y * float("nan"), process, x)
    for divergence in ("exact", "hutchinson"):
        with pytest.raises(ValueError, match="differentiable in x.*carries no gradient"):
            log_likelihood(lambda y, t: torch.zeros_like(y), process, x, divergence=divergence)


ONE_D = r"x0? must be a tensor of shape \(B, \.\.\.\) with B >= 1 and at least one event dimension .* got \(5,\)"


def test_one_dimensional_data_is_refused_everywhere_with_one_message():
    import toy_data

    process, x = VP(), torch.randn(5)
    score = toy_data.load("ring8").score_fn(process)
    for name, spec in SAMPLERS.items():
        with pytest.raises(ValueError, match=ONE_D):
            spec(score, process, x, spec.grid_for(process, max(8, spec.min_nfe)))
    with pytest.raises(ValueError, match=ONE_D):
        log_likelihood(score, process, x)
    net = MLPScoreNet(dim=1, width=8, depth=1)
    with pytest.raises(ValueError, match=ONE_D):
        dsm_loss(net, process, x)
    with pytest.raises(ValueError, match=ONE_D):
        DSMLoss()(net, process, x, None)


# -- 8, 9: clear messages -------------------------------------------------------------------------------------------
def _png_claiming(path: Path, width: int, height: int) -> None:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) +
                     chunk(b"IEND", b""))


def test_bad_values_and_inputs_get_one_clear_line(tmp_path, capsys, tiny_run):
    out = ["--out", str(tmp_path / "s.png")]
    for argv, needle in [
        (["sample", "--checkpoint", str(tiny_run), "--batch", "0", *out], "--batch: must be a positive integer below 2^63, got 0"),
        (["sample", "--checkpoint", str(tiny_run), "--batch", "-3", *out], "--batch: must be a positive integer"),
        (["sample", "--checkpoint", str(tiny_run), "--guidance", "classifier", "--label", "3", "--classifier",
          str(tiny_run), *out], "is a score model, not a noise-aware classifier"),
        (["train", *TINY, "--width", "0", "--out", str(tmp_path / "w0")], "width must be an integer >= 1, got 0"),
        (["train", *TINY, "--seed", "99999999999999999999", "--out", str(tmp_path / "s")], "--seed: must be in"),
    ]:
        assert main(argv) == 2, argv
        assert needle in _one_line(capsys), argv
    if not torch.cuda.is_available():
        assert main(["train", *TINY[:-2], "--device", "cuda", "--out", str(tmp_path / "c")]) == 2
        assert "device 'cuda' is not available: this torch build has no CUDA" in _one_line(capsys)
    folder, mnist = tmp_path / "pngs", tmp_path / "mnist"
    folder.mkdir(), mnist.mkdir()
    _png_claiming(folder / "bomb.png", 100_000, 100_000)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (mnist / name).write_bytes(b"\0\0\x08\x03 not gzip")
    for data, root, needle in (("folder", folder, "bomb.png is not a readable PNG"),
                               ("mnist", mnist, "train-images-idx3-ubyte.gz is not a readable gzip file")):
        assert main(["train", "--data", data, "--data-root", str(root), "--net", "unet", "--steps", "1",
                     "--out", str(tmp_path / data)]) == 2
        assert needle in _one_line(capsys)


def test_corrupt_or_hostile_run_directories_are_named_not_followed(tmp_path, tiny_run, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    ckpt = latest_checkpoint(run)
    meta = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**meta, "step": "x"}))
    assert main(["sample", "--checkpoint", str(run), "--out", str(tmp_path / "s.png")]) == 2
    assert "step is 'x', not an integer >= 0" in _one_line(capsys)
    (ckpt / "config.json").write_text(json.dumps(meta))
    (run / "latest").write_text("../../elsewhere")
    with pytest.raises(ValueError, match="names '../../elsewhere', not a checkpoint of this run"):
        latest_checkpoint(run)
    (run / "latest").write_text(ckpt.name)

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    import pickle

    (ckpt / "state.pt").write_bytes(pickle.dumps({"step": 4, "optimizer": Evil()}, protocol=2))
    with pytest.raises(ValueError, match="unsafe or corrupt resume state") as info:
        train(_cfg(steps=6, checkpoint_every=2), run, resume=True, progress=False)
    assert "weights_only" not in str(info.value)


def test_resume_takes_only_more_steps(tmp_path, tiny_run, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    assert main(["train", "--resume", "--lr", "0.1", "--out", str(run)]) == 2
    assert "it takes --steps, not --lr" in _one_line(capsys)
    assert main(["train", "--resume", "--steps", "2", "--out", str(run)]) == 2
    assert "the run is at step 4 already; steps = 2 is below it" in _one_line(capsys)
    assert main(["train", "--resume", "--steps", "4", "--no-preview", "--out", str(run)]) == 0
    assert "at step 4 already; nothing to train" in capsys.readouterr().out


# -- 10: samples independent of --n and --batch ----------------------------------------------------------------------
def test_cli_samples_depend_on_the_seed_and_index_only(tmp_path, tiny_run):
    from scoresde.evaluation import sample_model
    from scoresde.training import load_model

    def sample(n, batch):
        out = tmp_path / f"{n}_{batch}.png"
        assert main(["sample", "--checkpoint", str(tiny_run), "--sampler", "euler_maruyama", "--nfe", "6", "--n",
                     str(n), "--batch", str(batch), "--out", str(out)]) == 0
        return torch.load(out.with_suffix(".pt"))

    big = sample(300, 300)  # 3 chunks of PerSampleNoise, the last one partial
    assert torch.equal(sample(10, 3), big[:10])
    model = load_model(tiny_run)
    for name, nfe in (("euler_maruyama", 6), ("predictor_corrector", 15), ("ancestral", 6)):
        ref = sample_model(model, 300, sampler=name, nfe=nfe, batch=300)
        assert torch.equal(sample_model(model, 300, sampler=name, nfe=nfe, batch=7), ref)
        assert torch.equal(sample_model(model, 150, sampler=name, nfe=nfe, batch=64), ref[:150])
        assert not torch.equal(sample_model(model, 150, sampler=name, nfe=nfe, seed=1), ref[:150])


# -- the CLI never shows a traceback --------------------------------------------------------------------------------
VALUES = st.sampled_from(["0", "-3", "1", "2", "x", "", "nan", "1e3", "99999999999999999999", "ring8", "ddim",
                          "3,5", "/proc/nope/x", "cuda"])
FLAGS = {
    "sample": ["--sampler", "--nfe", "--n", "--batch", "--label", "--guidance", "--w", "--seed", "--grid", "--out"],
    "compare": ["--samplers", "--nfe", "--n", "--pairwise-n", "--target", "--grid", "--seed", "--process", "--out"],
    "train": ["--steps", "--batch", "--width", "--depth", "--lr", "--seed", "--data", "--process", "--net", "--out"],
    "likelihood": ["--n", "--batch", "--method", "--steps", "--rtol", "--probes", "--divergence"],
    "targets": ["--targets", "--times", "--process", "--out"],
    "langevin": ["--energy", "--dim", "--kT", "--sampler", "--chains", "--steps", "--tau", "--gamma", "--mass",
                 "--warmup", "--seed", "--out"],
    "anneal": ["--energy", "--dim", "--schedule", "--chains", "--steps", "--kT0", "--kT1", "--tau", "--restarts",
               "--adapt", "--tol", "--seed"],
}
LOOPS = {"train": {"--steps"}, "langevin": {"--steps", "--chains", "--dim", "--warmup"},
         "anneal": {"--steps", "--chains", "--dim", "--restarts"}}  # a valid count, but hours of work


@settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.sampled_from(sorted(FLAGS)).flatmap(lambda c: st.tuples(
    st.just(c), st.lists(st.tuples(st.sampled_from(FLAGS[c] + ["--bogus"]), VALUES), max_size=3))))
def test_cli_fuzz_one_line_errors_and_documented_exit_codes(tiny_run, tmp_path_factory, case):
    import contextlib
    import io

    command, pairs = case
    tmp = tmp_path_factory.mktemp("fuzz")
    base = {"sample": ["--checkpoint", str(tiny_run), "--n", "20", "--nfe", "4"],
            "compare": ["--samplers", "ddim,euler", "--nfe", "4", "--n", "20", "--pairwise-n", "10"],
            "train": [*TINY, "--steps", "2"], "likelihood": ["--checkpoint", str(tiny_run), "--n", "8",
                                                             "--method", "euler", "--steps", "3"],
            "targets": ["--targets", "ring8", "--times", "0.5"],
            "langevin": ["--energy", "double_well", "--chains", "20", "--steps", "30"],
            "anneal": ["--energy", "rastrigin", "--dim", "2", "--chains", "20", "--steps", "30"]}[command]
    out = [] if command in ("likelihood", "anneal") else \
        ["--out", str(tmp / ("o" if command in ("compare", "langevin") else "o.png"))]
    pairs = [(f, "3" if f in LOOPS.get(command, ()) and v == "99999999999999999999" else v) for f, v in pairs]
    argv = [command, *base, *out, *(a for pair in pairs for a in pair)]
    err, cwd = io.StringIO(), os.getcwd()
    os.chdir(tmp)  # a relative --out drawn from VALUES ("3,5", "x", ...) is written here, not into the repository
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)
    finally:
        os.chdir(cwd)
    lines = [line for line in err.getvalue().splitlines() if line.startswith("scoresde")]
    assert "Traceback" not in err.getvalue() and code in (0, 1, 2), (argv, code, err.getvalue())
    assert code == 0 or len(lines) == 1, (argv, err.getvalue())
