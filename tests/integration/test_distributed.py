"""DDP on 2 CPU processes (gloo) gives the same result as 1 process with the same effective batch."""

import json

import pytest
import torch

from .ddp_worker import run
from .launch import run_two_processes


def test_two_processes_match_one(tmp_path):
    run_two_processes("tests.integration.ddp_worker", str(tmp_path / "ddp"), str(tmp_path / "run"))

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
