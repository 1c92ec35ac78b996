"""Under torchrun (2 CPU processes, gloo) the generations of an evaluation come back whole, in the
records' order, as in one process, and rank 0 alone writes generations.jsonl."""

import json

import pytest

from .generation_worker import run
from .launch import run_two_processes


def test_generations_of_two_processes_match_one(tmp_path):
    run_two_processes("tests.integration.generation_worker", str(tmp_path / "ddp.json"), str(tmp_path / "run"))
    single, rows = run(None)
    ddp = json.loads((tmp_path / "ddp.json").read_text())
    assert ddp["rows"] == rows  # every record, in order, with the base model's texts
    assert [r["index"] for r in rows] == list(range(7))
    for key in ("loss", "perplexity", "bleu", "baseline/loss", "baseline/bleu"):
        assert ddp["results"][key] == pytest.approx(single[key], rel=1e-4, abs=1e-5), key
    written = [json.loads(line) for line in (tmp_path / "run" / "generations.jsonl").read_text().splitlines()]
    assert written == rows
