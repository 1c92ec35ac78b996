"""Token classification (named entities and other per-word tags): the task and its predictions.

``task="token_classification"`` trains a token-classification head (`AutoModelForTokenClassification`)
on records with one tag per word (`finetune_lib.data.token_labels` reads them, from words and tags or
from a text with character spans). The loss is the cross-entropy over the sub-tokens that carry a
label, a sum divided by their count in the accumulated batch (`finetune_lib.tasks`' contract).
Evaluation and predictions are per word: each word's tag is the model's prediction at its first
sub-token. The default metrics are entity-level precision, recall and F1 in the CoNLL sense
(`finetune_lib.metrics.entities`), tag accuracy and the per-type report.

Example:
    >>> tuner = FineTuner("bert-base-cased", task="token_classification", epochs=3)   # doctest: +SKIP
    >>> tuner.fit([{"tokens": ["Angela", "Merkel", "visited", "Paris"],
    ...             "tags": ["B-PER", "I-PER", "O", "B-LOC"]}, ...])                    # doctest: +SKIP
    >>> tuner.predict(["Olaf Scholz flew to Rome."])[0]["entities"]                    # doctest: +SKIP
    [{'type': 'PER', 'text': 'Olaf Scholz', 'start': 0, 'end': 11, 'first_word': 0, 'last_word': 1,
      'score': 0.97}, {'type': 'LOC', 'text': 'Rome', 'start': 20, 'end': 24, ...}]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from transformers import AutoModelForTokenClassification

from .task_base import IGNORE_INDEX, Task


class TokenClassificationTask(Task):
    """One label per word: a token-classification head, trained on the sub-tokens that carry a label.

    Features also carry `word_ids` (the word of each token; -1 for special tokens and padding),
    which the model never sees: evaluation reads each word's prediction at its first sub-token.
    """

    def __init__(self) -> None:
        super().__init__("token_classification", auto_class=AutoModelForTokenClassification, label_kind="tags",
                         metric_inputs=("classes", "tags"))

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Any:
        return model(**{k: v for k, v in batch.items() if k not in ("labels", "word_ids")})

    def count_targets(self, batch: dict[str, torch.Tensor]) -> int:
        """The sub-tokens that carry a label (not -100)."""
        return int((batch["labels"] != IGNORE_INDEX).sum())

    def eval_extra(self, logits: torch.Tensor, batch: dict[str, torch.Tensor], records: list[dict[str, Any]],
                   preprocessor: Any) -> dict[str, Any]:
        """``{"tags": (predicted, reference)}``: word-level tag sequences of the batch's records."""
        from .data.token_labels import normalize_tagged, word_predictions

        rows = [normalize_tagged(r) for r in records]
        names = [str(n) for n in preprocessor.label_names or []]
        predicted = word_predictions(logits.argmax(-1), batch["word_ids"], [len(r["tokens"]) for r in rows], names)
        return {"tags": (predicted, [r["tags"] for r in rows])}


def as_tagged_predict_records(items: Any) -> list[dict[str, Any]]:
    """What `FineTuner.predict` takes for token classification, as records: a text (str) becomes
    ``{"text": ...}``, a list of words ``{"tokens": [...]}``; a dict (with ``tokens`` or ``text``) is kept."""
    from .data.token_labels import check_tagged_records

    if isinstance(items, (str, Mapping)):
        raise TypeError("predict() takes a list of inputs; wrap a single text or list of words in a list, e.g. "
                        "predict(['Angela Merkel visited Paris.']) or predict([['Angela', 'Merkel']]).")
    records = []
    for item in items:
        if isinstance(item, Mapping):
            records.append(dict(item))
        elif isinstance(item, str):
            records.append({"text": item})
        elif isinstance(item, (list, tuple)):
            records.append({"tokens": list(item)})
        else:
            raise TypeError(f"predict() takes texts (str), lists of words or records; got a {type(item).__name__}.")
    check_tagged_records(records, "predict", need_tags=False)
    return records


@torch.inference_mode()
def predict_tagged(run: Any, records: list[dict[str, Any]], batch_size: int | None = None) -> list[dict[str, Any]]:
    """Per-word tags and the entities they make, for each record.

    Each result holds ``tokens`` (the words: as given, or `split_words` of the text), ``tags`` (one
    IOB2 tag per word: the prediction at the word's first sub-token; ``"O"`` for words cut by
    truncation), ``scores`` (the probability of each word's tag) and ``entities``: one dict per
    entity with its ``type``, ``text``, ``first_word`` and ``last_word`` (inclusive word indices),
    ``score`` (the mean of its words' scores) and, for a text input, ``start`` and ``end``, the
    character offsets of the entity in the text (``text[start:end]`` is the entity's text).

    Args:
        run: the `finetune_lib.training.evaluation.EvalSetup` of the tuner.
        records: ``{"tokens": [...]}`` or ``{"text": ...}`` records.
        batch_size: records per forward pass (default: the run's evaluation batch size).
    """
    from .data.collate import sequential_batches, to_device
    from .data.token_labels import first_subtokens, normalize_tagged
    from .metrics.entities import extract_entities

    model, pre = run.model, run.preprocessor
    model.eval()
    rows = [normalize_tagged({k: v for k, v in r.items() if k not in ("tags", "spans")}) for r in records]
    features = pre.encode(rows, "predict")
    names = [str(n) for n in pre.label_names or []]
    out: list[dict[str, Any]] = [{} for _ in rows]
    size = batch_size or run.batch_size
    for idx in sequential_batches(len(features), size, [pre.length(f) for f in features]):
        batch = to_device(pre.collate([features[i] for i in idx]), run.device)
        with run.autocast():
            probs = run.task.forward(model, batch).logits.float().softmax(-1).cpu()
        word_ids = batch["word_ids"].cpu()
        mask = first_subtokens(word_ids)
        for j, i in enumerate(idx):
            n = len(rows[i]["tokens"])
            tags, scores = ["O"] * n, [0.0] * n
            best, ids = probs[j][mask[j]].max(-1)
            for w, p, s in zip(word_ids[j][mask[j]].tolist(), ids.tolist(), best.tolist()):
                tags[w], scores[w] = names[p] if names else str(p), float(s)
            out[i] = {"tokens": list(rows[i]["tokens"]), "tags": tags, "scores": scores,
                      "entities": [_entity(rows[i], scores, e) for e in extract_entities(tags)]}
    return out


def _entity(row: dict[str, Any], scores: list[float], entity: tuple[str, int, int]) -> dict[str, Any]:
    type_, first, last = entity
    found: dict[str, Any] = {"type": type_, "text": " ".join(row["tokens"][first: last + 1]),
                             "first_word": first, "last_word": last,
                             "score": sum(scores[first: last + 1]) / (last - first + 1)}
    offsets = row.get("word_offsets")
    if offsets and "text" in row:
        start, end = offsets[first][0], offsets[last][1]
        found.update(text=row["text"][start:end], start=start, end=end)
    return found


__all__ = ["TokenClassificationTask", "as_tagged_predict_records", "predict_tagged"]
