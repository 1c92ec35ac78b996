"""The tokenization cache under 2 CPU processes (gloo): rank 0 tokenizes and fills the cache, rank 1 waits
at the barrier and reads it without running its tokenizer; both get the same features."""

import json

import pytest

pytest.importorskip("datasets")

from .launch import run_two_processes  # noqa: E402


def test_rank_zero_fills_the_cache_and_rank_one_reads_it(tmp_path):
    run_two_processes("tests.integration.cache_fill_worker", str(tmp_path / "cache"), str(tmp_path / "out"))
    zero, one = (json.loads((tmp_path / f"out.{r}.json").read_text()) for r in (0, 1))
    assert zero["tokenizer_calls"] > 0 and one["tokenizer_calls"] == 0
    assert zero["rows"] == one["rows"] and len(zero["rows"]) == 64
