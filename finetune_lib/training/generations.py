"""The texts an evaluation generated, in the records' order, and what `predict` takes.

During an evaluation whose metrics read generated text (BLEU, chrF, ...), `GenerationLog` keeps one
row per record: ``{"index", "prompt", "reference", "generation", "generated"}``. The batches run
longest first (less padding), so the rows are put back in the records' order; under torchrun each
process's rows are gathered. ``generated`` is False for a prompt that `generation_time_budget`
left out (its ``generation`` is then the empty string the metrics scored). `FineTuner.evaluate`
hands the rows back as ``tuner.last_artifacts["generations"]`` and writes them to
``<output_dir>/generations.jsonl`` (one JSON object per line); with ``baseline=True`` each row also
holds the base model's text as ``baseline`` (and ``baseline_generated``).

Example:
    >>> tuner.evaluate(test)                                                        # doctest: +SKIP
    >>> tuner.last_artifacts["generations"][0]                                      # doctest: +SKIP
    {'index': 0, 'prompt': 'Where is my order?', 'reference': 'It ships today.', 'generation': 'It ships today.',
     'generated': True}
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..metrics.state import all_gather_objects

__all__ = ["GENERATIONS_FILE", "GenerationLog", "as_predict_records", "record_prompt", "record_reference",
           "with_baseline", "write_generations"]

#: the file `FineTuner.evaluate` writes the generations to, in the run folder
GENERATIONS_FILE = "generations.jsonl"


def _is_message_list(item: Any) -> bool:
    """A conversation given as a bare list of ``{"role", "content"}`` dicts."""
    return (isinstance(item, (list, tuple)) and bool(item)
            and all(isinstance(m, Mapping) and "role" in m for m in item))


def as_predict_records(texts: Any, task: str) -> list[dict[str, Any]]:
    """What `predict` takes, as records: a text becomes ``{"text": ...}`` (classification) or
    ``{"prompt": ...}``; a record (a dict: a prompt record, or a conversation ``{"messages": [...]}``)
    is kept; a bare list of messages becomes ``{"messages": [...]}``. Conversations are checked
    (roles, non-empty contents; they need no assistant turn: the model writes it). Token classification
    takes texts, lists of words and records (`finetune_lib.token_task.as_tagged_predict_records`)."""
    if task == "token_classification":
        from ..token_task import as_tagged_predict_records

        return as_tagged_predict_records(texts)
    if isinstance(texts, (str, Mapping)) or _is_message_list(texts):
        raise TypeError("predict() takes a list of inputs; wrap a single text, record or conversation in a list, "
                        "e.g. predict([[{'role': 'user', 'content': 'Hi'}]]).")
    key = "prompt" if task in ("causal_lm", "seq2seq") else "text"
    records = []
    for item in texts:
        if isinstance(item, Mapping):
            records.append(dict(item))
        elif _is_message_list(item):
            records.append({"messages": list(item)})
        else:
            records.append({key: item})
    if any("messages" in r for r in records):
        if task != "causal_lm":
            raise ValueError(f"Conversations (messages) are for task 'causal_lm', not {task!r}.")
        from ..data.chat import check_conversations

        check_conversations(records, "predict", need_assistant=False)
    return records


def record_prompt(preprocessor: Any, record: Mapping[str, Any]) -> str:
    """The text generation starts from: `Preprocessor.format_prompt` (a conversation is rendered
    with the chat template and the generation prompt)."""
    return preprocessor.format_prompt(record)


def record_reference(preprocessor: Any, record: Mapping[str, Any]) -> str:
    """The reference text of a record: `Preprocessor.reference` (the last assistant turn of a
    conversation, else `target`), or `target` / `text` for a preprocessor without it."""
    method = getattr(preprocessor, "reference", None)
    if callable(method):
        return method(record)
    return str(record.get("target", record.get("text", "")))


class GenerationLog:
    """The generations of one evaluation, by record index.

    `expect` gives the next batch's record indices, prompts and references (the evaluation loop
    calls it before handing the batch to the metrics); `add` receives the texts generated for it
    and how many of them were really generated (the rest were skipped by the time budget).
    """

    def __init__(self) -> None:
        self._pending: tuple[list[int], list[str], list[str]] | None = None
        self._rows: dict[int, dict[str, Any]] = {}

    def expect(self, indices: Sequence[int], prompts: Sequence[str], references: Sequence[str]) -> None:
        self._pending = (list(indices), list(prompts), list(references))

    def add(self, prompts: Sequence[str], texts: Sequence[str], generated: int) -> None:
        if self._pending is None or self._pending[1] != list(prompts):
            return  # a suite of your own that generates other prompts than the batch's: not logged
        indices, expected, references = self._pending
        self._pending = None
        for j, (i, prompt, reference, text) in enumerate(zip(indices, expected, references, texts)):
            self._rows[i] = {"index": i, "prompt": prompt, "reference": reference, "generation": text,
                             "generated": j < generated}

    def rows(self) -> list[dict[str, Any]]:
        """Every process's rows, in the records' order (call it on every process under torchrun)."""
        merged: dict[int, dict[str, Any]] = {}
        for part in all_gather_objects(self._rows):
            merged.update(part)
        return [merged[i] for i in sorted(merged)]


def with_baseline(rows: list[dict[str, Any]], base_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The fine-tuned model's rows, each with the base model's text of the same record as
    ``baseline`` and ``baseline_generated``."""
    base = {r["index"]: r for r in base_rows}
    out = []
    for row in rows:
        other = base.get(row["index"])
        extra = {} if other is None else {"baseline": other["generation"], "baseline_generated": other["generated"]}
        out.append({**row, **extra})
    return out


def write_generations(output_dir: str | Path | None, rows: list[dict[str, Any]] | None,
                      is_main: bool = True) -> Path | None:
    """Write `rows` to ``<output_dir>/generations.jsonl`` (replacing the file of an earlier evaluation);
    nothing without an output_dir, without rows, or on a process other than the main one."""
    if output_dir is None or not rows or not is_main:
        return None
    path = Path(output_dir) / GENERATIONS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path
