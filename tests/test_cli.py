"""The command line: help, the main job's PNG, and one-line errors."""

import subprocess
import sys

from scoresde.cli import main


def test_help_runs():
    out = subprocess.run([sys.executable, "-m", "scoresde.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "targets" in out.stdout


def test_targets_writes_a_png(tmp_path, capsys):
    out = tmp_path / "t.png"
    assert main(["targets", "--targets", "ring8,aniso", "--times", "0.05,0.5", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_errors_are_one_line(capsys):
    assert main(["targets", "--process", "nope"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'nope'" in err[0]
    assert main(["targets", "--targets", "moons"]) != 0
    assert "no exact score" in capsys.readouterr().err
    assert main(["targets", "--times", "3.0"]) != 0
    assert "t = 3.0" in capsys.readouterr().err


def test_cli_error_has_no_traceback():
    out = subprocess.run(
        [sys.executable, "-m", "scoresde.cli", "targets", "--process", "nope"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode != 0 and "Traceback" not in out.stderr and out.stderr.count("\n") == 1


def test_compare_writes_table_json_and_pngs(tmp_path, capsys):
    import json

    out = tmp_path / "cmp"
    code = main(["compare", "--samplers", "ddim,heun", "--nfe", "5,12", "--n", "300", "--pairwise-n", "200",
                 "--out", str(out), "--trajectories"])
    assert code == 0
    text = capsys.readouterr().out
    assert "noise floor" in text and "ddim" in text and "heun" in text
    data = json.loads((out / "results.json").read_text())
    assert {(r["sampler"], r["nfe"]) for r in data["records"]} == {("ddim", 5), ("ddim", 12), ("heun", 5), ("heun", 11)}
    for png in ("samples.png", "quality_vs_nfe.png", "trajectories.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_compare_bad_input_is_one_line(capsys, tmp_path):
    for argv, needle in [
        (["compare", "--samplers", "dpmpp"], "unknown sampler 'dpmpp'"),
        (["compare", "--nfe", "0"], "NFE must be a positive integer, got 0"),
        (["compare", "--nfe", "ten"], "--nfe must be comma-separated integers"),
        (["compare", "--target", "moons"], "no exact score"),
        (["compare", "--grid", "cosine"], "unknown grid 'cosine'"),
    ]:
        assert main(argv + ["--out", str(tmp_path)]) != 0, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], (argv, err)
