"""A real `torchrun` launch (torch.distributed.run, 2 CPU processes, gloo): the script does not set
any distributed environment itself, and gets the same result as one process."""

import json
import os
import subprocess
import sys

import pytest
import torch

from .ddp_worker import run
from .launch import ROOT, free_port

# what the user's train.py would be: the DDP worker's run, plus a record of what torchrun set up
SCRIPT = '''
import json, os, sys
import torch
from tests.integration.ddp_worker import run

torch.set_num_threads(1)
out = sys.argv[1]
results, weights = run(None, out + "/run")
dist = torch.distributed
seen = {k: os.environ.get(k) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID")}
seen.update(rank=dist.get_rank(), world_size=dist.get_world_size(), backend=dist.get_backend())
with open(f"{out}/rank{dist.get_rank()}.json", "w") as f:
    json.dump(seen, f)
if dist.get_rank() == 0:
    torch.save(weights, out + "/weights.pt")
    with open(out + "/results.json", "w") as f:
        json.dump(results, f)
'''


def test_torchrun_two_processes_match_one(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "--max_restarts", "0", str(script), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:]

    # torchrun started 2 processes, set their ranks and joined them on gloo
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [s["rank"] for s in seen] == [0, 1] and [s["RANK"] for s in seen] == ["0", "1"]
    assert all(s["world_size"] == 2 and s["WORLD_SIZE"] == "2" and s["backend"] == "gloo" for s in seen)
    assert all(s["TORCHELASTIC_RUN_ID"] for s in seen)  # set by torchrun, not by this test

    single, weights = run(None)
    got = json.loads((tmp_path / "results.json").read_text())
    for key in ("loss", "accuracy", "f1"):
        assert got[key] == pytest.approx(single[key], rel=1e-4, abs=1e-5), key
    got_weights = torch.load(tmp_path / "weights.pt", weights_only=True)
    for name, value in weights.items():
        torch.testing.assert_close(got_weights[name], value, rtol=1e-4, atol=1e-5, msg=name)
    log = (tmp_path / "run" / "log.jsonl").read_text().splitlines()  # rank 0 alone wrote it
    assert len(log) == len({json.loads(line)["step"] for line in log if "train/loss" in line}) + 2
