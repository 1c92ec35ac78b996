"""DDP on 2 CPU processes (gloo) gives the same result as 1 process with the same effective batch."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .ddp_worker import run

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
    port = str(free_port())
    procs = []
    for rank in range(2):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": "2", "RANK": str(rank),
               "LOCAL_RANK": str(rank), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
        procs.append(subprocess.Popen([sys.executable, "-m", "tests.integration.ddp_worker", str(tmp_path / "ddp"),
                                       str(tmp_path / "run")], env=env, cwd=ROOT,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(outputs)[-4000:]

    single, weights = run(None)
    ddp = json.loads((tmp_path / "ddp.json").read_text())
    ddp_weights = torch.load(tmp_path / "ddp.pt", weights_only=True)
    for key in ("loss", "accuracy", "f1"):
        assert ddp[key] == pytest.approx(single[key], rel=1e-4, abs=1e-5), key
    for name, value in weights.items():
        torch.testing.assert_close(ddp_weights[name], value, rtol=1e-4, atol=1e-5, msg=name)
    # rank 0 alone wrote the log and the checkpoints
    log = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert len(log) == len({json.loads(line)["step"] for line in log if "train/loss" in line}) + 2
    assert (tmp_path / "run" / "checkpoints").is_dir()
