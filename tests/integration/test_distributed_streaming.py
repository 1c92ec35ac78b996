"""A stream under 2 CPU processes (gloo): each process trains on its own share of every micro-batch (no
example twice), and the weights equal 1 process's with the same effective batch."""

import json

import pytest
import torch

datasets = pytest.importorskip("datasets")

from tests.training.helpers import classification_records  # noqa: E402

from .launch import run_two_processes  # noqa: E402
from .stream_worker import run  # noqa: E402


def test_two_processes_share_a_stream_and_match_one(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in classification_records(40)))
    run_two_processes("tests.integration.stream_worker", str(path), str(tmp_path / "ddp"))

    weights, single_ids = run(str(path))
    ranks = [json.loads((tmp_path / f"ddp.{r}.json").read_text()) for r in (0, 1)]
    # the first pass (40 rows: 10 micro-batches of 4, 2 examples each per process): disjoint, covering every row
    assert not set(ranks[0][:20]) & set(ranks[1][:20])
    assert sorted(ranks[0][:20] + ranks[1][:20]) == sorted(single_ids[:40]) == list(range(40))
    assert sorted(ranks[0] + ranks[1]) == sorted(single_ids)  # 8 steps (into the second pass): what 1 process saw
    ddp_weights = torch.load(tmp_path / "ddp.pt", weights_only=True)
    for name, value in weights.items():
        torch.testing.assert_close(ddp_weights[name], value, rtol=1e-4, atol=1e-5, msg=name)
