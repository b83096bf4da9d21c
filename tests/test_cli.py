"""The command line: help, the main job's PNG, and one-line errors."""

import subprocess

import pytest
import sys

import torch

from scoresde.cli import main

from .conftest import DEVICE


def test_help_runs_and_documents_the_exit_codes(capsys):
    assert main(["--help"]) == 0  # main(argv) returns the exit status; it never raises SystemExit
    text = " ".join(capsys.readouterr().out.split())
    assert "targets" in text and "exit status: 0 done; 1 runtime error" in text and "2 usage error" in text
    assert "130 or 143 training interrupted by SIGINT or SIGTERM" in text


def test_targets_writes_a_png(tmp_path, capsys):
    out = tmp_path / "t.png"
    assert main(["targets", "--targets", "ring8,aniso", "--times", "0.05,0.5", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    bare = tmp_path / "3,5"  # no image suffix: the PNG is 3,5.png, and that is the path reported
    assert main(["targets", "--targets", "ring8", "--times", "0.5", "--out", str(bare)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {bare}.png" and not bare.exists()
    assert (tmp_path / "3,5.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_errors_are_one_line(capsys, tmp_path):
    out = ["--out", str(tmp_path / "t.png")]  # not the default runs/targets.png: --out's folder is made first
    assert main(["targets", "--process", "nope", *out]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'nope'" in err[0]
    assert main(["targets", "--targets", "moons", *out]) != 0
    assert "no exact score" in capsys.readouterr().err
    assert main(["targets", "--times", "3.0", *out]) != 0
    assert "t = 3.0" in capsys.readouterr().err


def test_cli_error_has_no_traceback(tmp_path):
    """Through the installed `scoresde` command (pyproject's entry point) where the package is installed beside this
    interpreter, else `python -m scoresde.cli`."""
    import os
    import shutil

    script = shutil.which("scoresde", path=os.path.dirname(sys.executable))
    command = [script] if script else [sys.executable, "-m", "scoresde.cli"]
    out = subprocess.run(
        [*command, "targets", "--process", "nope", "--out", str(tmp_path / "t.png")],
        capture_output=True, text=True, timeout=120
    )
    assert out.returncode != 0 and "Traceback" not in out.stderr and out.stderr.count("\n") == 1, out.stderr


def test_compare_writes_table_json_and_pngs(tmp_path, capsys):
    import json

    out = tmp_path / "cmp"
    code = main(["compare", "--samplers", "ddim,heun", "--nfe", "5,15", "--n", "300", "--pairwise-n", "200",
                 "--out", str(out), "--trajectories"])
    assert code == 0
    captured = capsys.readouterr()
    text = captured.out
    assert "noise floor" in text and "ddim" in text and "heun" in text
    assert "skip heun at NFE 5: heun needs NFE >= 15, got NFE = 5" in captured.err  # a budget heun refuses is listed, not run
    data = json.loads((out / "results.json").read_text())
    assert {(r["sampler"], r["nfe"]) for r in data["records"]} == {("ddim", 5), ("ddim", 15), ("heun", 15)}
    for png in ("samples.png", "quality_vs_nfe.png", "trajectories.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_compare_bad_input_is_one_line(capsys, tmp_path):
    for argv, needle in [
        (["compare", "--samplers", "dpmpp"], "unknown sampler 'dpmpp'"),
        (["compare", "--nfe", "0"], "NFE must be a positive integer, got 0"),
        (["compare", "--nfe", "ten"], "--nfe must be comma-separated integers"),
        (["compare", "--target", "moons"], "no exact score"),
        (["compare", "--grid", "cosine"], "unknown grid 'cosine'"),
        (["compare", "--samplers", "heun", "--nfe", "10"], "nothing to run: heun at NFE 10: heun needs NFE >= 15"),
    ]:
        assert main(argv + ["--out", str(tmp_path)]) != 0, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], (argv, err)


def test_a_refused_command_leaves_no_output_folder(tmp_path, capsys):
    """--out is checked for writability without being made: a command that then fails on another value leaves no
    empty folder behind; one that runs makes it."""
    out = tmp_path / "new" / "cmp"
    assert main(["compare", "--nfe", "0", "--out", str(out)]) != 0
    assert main(["sample", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "new" / "s.png")]) != 0
    assert not (tmp_path / "new").exists()
    capsys.readouterr()
    assert main(["targets", "--targets", "ring8", "--times", "0.5", "--out", str(out / "t.png")]) == 0
    assert (out / "t.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_harness_returns_measured_records(tmp_path):
    """compare() gives one record per (sampler, budget): the NFE measured by CountEvals (the budget, for these
    deterministic samplers at NFE 9), the metrics of the returned samples against the returned exact reference,
    and the noise floors; a budget a sampler cannot spend is listed as skipped, not run."""
    import toy_data
    from scoresde import VP
    from scoresde.evaluation import compare, save
    from scoresde.metrics import energy_distance, log_density_gap, mmd, sliced_wasserstein

    ring = toy_data.load("ring8")
    res = compare(ring, VP(), ["dpm_solver_pp", "heun"], [17], n=200, pairwise_n=100, seed=3, device=DEVICE)
    assert [(r["sampler"], r["budget"], r["nfe"], r["grid"]) for r in res.records] == \
        [("dpm_solver_pp", 17, 17, "scaled_log_snr"), ("heun", 17, 17, "uniform_log_snr")]
    assert res.metrics == ("sliced_wasserstein", "mmd", "energy_distance", "logp_gap") and res.skipped == []
    ref = res.reference
    assert ref.shape == (200, 2) and set(res.floors) == {*res.metrics, "logp_gap_se"}
    for r in res.records:
        x = res.samples[r["sampler"], 17]
        assert x.shape == (200, 2) and torch.isfinite(x).all()
        assert r["sliced_wasserstein"] == float(sliced_wasserstein(x, ref))
        assert r["mmd"] == float(mmd(x, ref, max_n=100))
        assert r["energy_distance"] == float(energy_distance(x, ref, max_n=100))
        assert r["logp_gap"] == float(log_density_gap(ring.log_prob, x, ref)[0])
    assert "noise floor" in res.table() and "heun" in res.table()
    short = compare(ring, VP(), ["annealed_langevin"], [1], n=200, pairwise_n=100)
    assert short.records == [] and len(short.skipped) == 1 and "annealed_langevin at NFE 1" in short.skipped[0]
    assert [p.name for p in save(short, tmp_path)] == ["results.json"]  # nothing ran: nothing to draw


def test_train_builds_the_config_from_the_flags_given_and_resume_keeps_it(tmp_path, capsys):
    import dataclasses

    from scoresde.nets import net_config
    from scoresde.training import TrainConfig, load_checkpoint

    run = tmp_path / "r"
    assert main(["train", "--data", "ring8", "--steps", "3", "--batch", "16", "--width", "8", "--depth", "1",
                 "--lr", "1e-3", "--clip", "0", "--no-preview", "--device", str(DEVICE), "--out", str(run)]) == 0
    saved = load_checkpoint(run)["config"]
    assert saved.net == net_config("mlp", (2,), width=8, depth=1, sigma_data=saved.net["sigma_data"])
    expected = TrainConfig(data="ring8", steps=3, batch=16, lr=1e-3, clip=None, net=saved.net, device=str(DEVICE))
    assert dataclasses.replace(saved, data_streams=0) == expected
    assert main(["train", "--resume", "--lr", "0.1", "--out", str(run)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--lr" in err[0]
    assert main(["train", "--resume", "--steps", "5", "--out", str(run)]) == 0
    assert load_checkpoint(run)["config"] == dataclasses.replace(saved, steps=5)
