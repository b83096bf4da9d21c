"""DistributedDataParallel: two CPU processes (gloo) train, stop, resume, agree on their weights and match one
process that emulates their two data streams; a run directory process 0 refuses stops every process."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from scoresde.training import TrainConfig, load_checkpoint, train

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")

ROOT = Path(__file__).resolve().parents[1]

CONFIG = dict(data="ring8", net={"name": "mlp", "width": 32, "depth": 1, "emb_dim": 16, "num_classes": 8},
              steps=16, batch=64, lr=3e-3, warmup=4, label_dropout=0.2, checkpoint_every=4, log_every=4,
              data_streams=0)

# Each process: train to step 8 (train() joins and leaves the process group itself, as under torchrun: RANK,
# WORLD_SIZE, MASTER_ADDR and MASTER_PORT in its environment), then resume to the end inside a process group of its
# own making (train() uses it and leaves it alone); then start a fresh run in the same directory, which now holds the
# finished run, in a third process group (train()'s own again, on a third port): process 0's claim fails, and every
# process must stop with its error (_refused) instead of waiting for process 0 forever.
def _worker(out: Path, port: str, refuse_port: str) -> None:
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    cfg, rank = TrainConfig(**CONFIG), int(os.environ["RANK"])
    first = train(cfg, out, stop_at=8, progress=False)
    os.environ["MASTER_PORT"] = port
    dist.init_process_group("gloo")
    rest = train(cfg, out, resume=True, progress=False)
    assert dist.is_initialized()
    dist.destroy_process_group()
    save_file({k: v.contiguous() for k, v in rest.net.state_dict().items()}, f"{out}/rank{rank}.safetensors")
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump({"losses": first.losses + rest.losses, "streams": rest.config.data_streams}, f)
    os.environ["MASTER_PORT"] = refuse_port
    _refused(out, rank)


def _refused(out: Path, rank: int) -> None:
    """Start a fresh run in `out`, which holds an earlier one: process 0's claim fails; record each rank's error."""
    try:
        train(TrainConfig(**CONFIG), out, progress=False)
    except (ValueError, RuntimeError) as e:
        (out.parent / f"refused{rank}.txt").write_text(f"{type(e).__name__}: {e}")
        return
    raise AssertionError("the run started in a directory holding an earlier run")


def _free_ports(n: int) -> list[str]:
    """n distinct free ports (all bound at once, then released)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [str(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _launch(world: int, out: Path, timeout: float = 120, worker=_worker) -> None:
    """`world` fresh interpreters running worker(out, port, refuse_port), each with torchrun's environment (not forked
    from this process: a fork of pytest's process, whose other threads may hold locks, hung now and then); a rank
    that fails, or any still running at the timeout, fails the test with the ranks' output. A rank whose worker
    returns leaves at once (os._exit after flushing its output: its files are written and closed; the interpreter's
    clean-up of torch took 1.5-2 s)."""
    ports = _free_ports(3)
    code = (f"import os, sys; from pathlib import Path; from tests.test_ddp import {worker.__name__} as w; "
            "w(Path(sys.argv[1]), *sys.argv[2:]); sys.stdout.flush(); sys.stderr.flush(); os._exit(0)")
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
               "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": ports[0],
               "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        procs.append(subprocess.Popen([sys.executable, "-c", code, str(out), *ports[1:]], env=env, cwd=ROOT,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = []
    try:
        deadline = time.monotonic() + timeout
        for p in procs:
            logs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
    except subprocess.TimeoutExpired:
        pass
    finally:
        for rank, p in enumerate(procs):
            if p.poll() is None:
                p.kill()
            if rank >= len(logs):  # killed, or not yet read: what it printed before
                logs.append(p.communicate(timeout=30)[0])
    failed = [f"rank {rank}: exit status {p.returncode}\n{(logs[rank] if rank < len(logs) else '')[-3000:]}"
              for rank, p in enumerate(procs) if p.returncode != 0]
    assert not failed, "\n".join(failed)


def test_two_processes_match_one_process_with_two_streams(tmp_path):
    """Two ranks train, stop, resume and agree with one process emulating their two streams. Then, in the same
    interpreters (two fewer to start), a fresh run in that directory, which holds the finished run, is refused:
    process 0 refuses it; process 1 hears of it and stops with its own error instead of waiting for process 0
    forever (before: killed at the timeout)."""
    from safetensors.torch import load_file

    run = tmp_path / "ddp"
    _launch(2, run)
    w0, w1 = load_file(str(run / "rank0.safetensors")), load_file(str(run / "rank1.safetensors"))
    assert all(torch.equal(w0[k], w1[k]) for k in w0)  # DDP keeps the replicas identical
    r0, r1 = (json.loads((run / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0 == r1 and r0["streams"] == 2 and len(r0["losses"]) == 16  # all-reduced losses: the same everywhere

    single = train(TrainConfig(**{**CONFIG, "data_streams": 2}), tmp_path / "one", progress=False)
    assert single.losses == pytest.approx(r0["losses"], rel=1e-5, abs=1e-6)
    for k, v in single.net.state_dict().items():
        torch.testing.assert_close(w0[k], v, rtol=1e-4, atol=1e-5, msg=k)
    # rank 0 alone wrote the checkpoints, holding both streams' generators; they load like any other
    ck = load_checkpoint(run)
    assert ck["step"] == 16 and ck["config"].data_streams == 2
    state = torch.load(ck["path"] / "state.pt", weights_only=True)
    assert len(state["generators"]) == 2 and len(state["torch_rng"]) == 2
    assert not torch.equal(state["generators"][0], state["generators"][1])
    for k, v in ck["net"].state_dict().items():
        assert torch.equal(w0[k], v), k
    logged = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [4, 8, 12, 16]  # one log, written once
    assert "ValueError" in (tmp_path / "refused0.txt").read_text() and "holds an earlier run" in \
        (tmp_path / "refused0.txt").read_text()
    assert (tmp_path / "refused1.txt").read_text().startswith("RuntimeError: process 0 could not take the run directory")


def test_streams_must_divide_among_processes_and_batch():
    with pytest.raises(ValueError, match="divisible by data_streams"):
        TrainConfig(**{**CONFIG, "data_streams": 3}).validate()
    with pytest.raises(ValueError, match="amp.*'mps'"):
        TrainConfig(**{**CONFIG, "amp": True, "device": "mps"}).validate()
    TrainConfig(**{**CONFIG, "amp": True, "device": "cpu"}).validate()  # bf16 autocast on the CPU is allowed


def test_one_process_resumes_with_the_saved_streams(tmp_path):
    """A two-stream run stopped and resumed is the uninterrupted two-stream run, stream states and all."""
    cfg = TrainConfig(**{**CONFIG, "data_streams": 2})
    full = train(cfg, tmp_path / "a", progress=False)
    train(cfg, tmp_path / "b", progress=False, stop_at=8)
    rest = train(TrainConfig(**CONFIG), tmp_path / "b", resume=True, progress=False)  # data_streams 0: as saved
    assert rest.config.data_streams == 2 and rest.losses == full.losses[8:]
    with pytest.raises(ValueError, match="2 data streams"):
        train(TrainConfig(**{**CONFIG, "data_streams": 4}), tmp_path / "b", resume=True, progress=False)
