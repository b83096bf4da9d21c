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
