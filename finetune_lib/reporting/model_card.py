"""The model card (README.md) written next to a saved model by `FineTuner.save`.

It opens with YAML front matter the Hugging Face Hub reads (``library_name``, ``pipeline_tag``,
``tags``, ``base_model`` when the model came from the Hub), then: model description, intended uses
and limitations, training data, training procedure (layer freezing, hyperparameters,
regularization), validation metrics per evaluation, evaluation results with confidence intervals,
how to load the model, and framework versions.

What it reads from the tuner: ``model_source``, ``task``, ``args``, ``history``, ``preprocessor``
(label names, cleaning, ``stats``), ``freezer`` (repr and ``summary()``), ``regularizers``, and,
when present, ``data_summary`` (a `DataReport` or its ``to_dict()``), ``last_results`` (the
dict of the last ``evaluate()``) with ``last_confidence``, and the metric signatures in
``last_artifacts`` (sacrebleu's, for BLEU and chrF), shown with the results they belong to.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .document import Document
from .sections import (
    add_data,
    add_freezing,
    add_results,
    add_settings,
    add_validation,
    add_versions,
    metric_signatures,
    model_name,
    training_summary,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..training.finetuner import FineTuner

__all__ = ["PIPELINE_TAGS", "front_matter", "hub_id", "write_model_card"]

PIPELINE_TAGS = {
    "classification": "text-classification",
    "causal_lm": "text-generation",
    "seq2seq": "text2text-generation",
}
"""The Hub's `pipeline_tag` for each task."""

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def hub_id(source: Any) -> str | None:
    """`source` when it names a model on the Hub (``"org/name"`` or ``"name"``) rather than a local
    folder; otherwise None."""
    if not isinstance(source, str) or Path(source).exists() or not _HUB_ID.match(source):
        return None
    return source


def _yaml_scalar(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else str(value)


def front_matter(tuner: FineTuner, base_model: str | None = None) -> str:
    """The YAML header: library_name, pipeline_tag, tags and (for Hub models) base_model."""
    base = base_model or hub_id(tuner.model_source)
    task_tag = PIPELINE_TAGS.get(tuner.task.name)
    tags = ["finetune_lib", "fine-tuned", *([task_tag] if task_tag else [])]
    lines = ["---", "library_name: transformers"]
    if task_tag:
        lines.append(f"pipeline_tag: {task_tag}")
    if base:
        lines.append(f"base_model: {_yaml_scalar(base)}")
    lines.append("tags:")
    lines += [f"- {_yaml_scalar(t)}" for t in tags]
    lines.append("---")
    return "\n".join(lines) + "\n"


def _usage(tuner: FineTuner) -> str:
    task = tuner.task.name
    if task == "classification":
        return ('from transformers import pipeline\n\n'
                'classify = pipeline("text-classification", model="path/to/this/folder")  # or its Hub id\n'
                'print(classify("your text here"))  # [{"label": ..., "score": ...}]')
    if task == "causal_lm":
        return ('from transformers import pipeline\n\n'
                'generate = pipeline("text-generation", model="path/to/this/folder")  # or its Hub id\n'
                'print(generate("your prompt", max_new_tokens=64)[0]["generated_text"])')
    return ('from transformers import AutoModelForSeq2SeqLM, AutoTokenizer\n\n'
            'model_id = "path/to/this/folder"  # or its Hub id\n'
            'tokenizer = AutoTokenizer.from_pretrained(model_id)\n'
            'model = AutoModelForSeq2SeqLM.from_pretrained(model_id)\n'
            'ids = model.generate(**tokenizer(["your prompt"], return_tensors="pt"), max_new_tokens=64)\n'
            'print(tokenizer.batch_decode(ids, skip_special_tokens=True))')


def _description(tuner: FineTuner, base: str | None) -> str:
    what = {"classification": "text classification", "causal_lm": "text generation (causal language modeling)",
            "seq2seq": "sequence-to-sequence generation"}.get(tuner.task.name, tuner.task.name)
    source = f"[{base}](https://huggingface.co/{base})" if base else f"`{model_name(tuner)}`"
    text = f"This model is {source} fine-tuned for {what} with finetune_lib."
    labels = tuner.preprocessor.label_names
    if tuner.task.name == "classification" and labels:
        text += f" It predicts one of {len(labels)} labels: " + ", ".join(f"`{n}`" for n in labels) + "."
    return text


def write_model_card(tuner: FineTuner, folder: str | Path, results: Mapping[str, Any] | None = None, *,
                     confidence: float | None = None, data_report: Any = None, base_model: str | None = None,
                     split: str = "test") -> Path:
    """Write ``<folder>/README.md`` for the model `tuner` trained.

    Args:
        tuner: the `FineTuner` whose model was saved in `folder`.
        folder: the saved model's folder.
        results: evaluation results to report, with their ``_low`` / ``_high`` intervals (what
            ``tuner.evaluate(test, confidence=0.95)`` returns); default ``tuner.last_results`` when
            the tuner keeps them.
        confidence: the level of the intervals, for the column title; default ``tuner.last_confidence``.
        data_report: a `DataReport` of the splits (``splits.report()``), its ``to_dict()`` or a
            string; default ``tuner.data_summary``, else what the Preprocessor counted.
        base_model: the Hub id of the base model, when the model was loaded from a local copy of it
            (by default taken from the model source when that is a Hub id).
        split: the name of the split `results` come from.

    Returns:
        The path of README.md.
    """
    folder = Path(folder)
    if results is None:
        results = getattr(tuner, "last_results", None)
        if confidence is None:
            confidence = getattr(tuner, "last_confidence", None)
    if data_report is None:
        data_report = getattr(tuner, "data_summary", None)
    base = base_model or hub_id(tuner.model_source)

    doc = Document()
    short = base.rsplit("/", 1)[-1] if base else model_name(tuner)
    doc.heading(f"{short} fine-tuned for {PIPELINE_TAGS.get(tuner.task.name, tuner.task.name).replace('-', ' ')}", 1)
    doc.paragraph(_description(tuner, base))
    doc.heading("Model description", 2)
    doc.bullets([
        f"base model: `{base or (tuner.model_source if isinstance(tuner.model_source, (str, Path)) else model_name(tuner))}`",
        f"task: `{tuner.task.name}` (pipeline `{PIPELINE_TAGS.get(tuner.task.name, '-')}`)",
        *([f"labels: {', '.join(f'`{n}`' for n in tuner.preprocessor.label_names)}"]
          if tuner.preprocessor.label_names else []),
        *([f"max input length: {tuner.preprocessor.max_length} tokens"] if tuner.preprocessor.max_length else []),
        f"training: {training_summary(tuner)}",
    ])
    doc.heading("Intended uses & limitations", 2)
    doc.paragraph("Intended for inputs like the training data summarized below: same domain, language and "
                  "label set. Its quality was measured only on the held-out data reported here; check it on "
                  "your own data before relying on it, and do not use it for decisions about people without "
                  "further evaluation. The model may repeat biases and errors of its training data.")
    doc.heading("Training data", 2)
    add_data(doc, tuner, data_report)
    doc.heading("Training procedure", 2)
    doc.heading("Layer freezing", 3)
    add_freezing(doc, tuner)
    doc.heading("Hyperparameters", 3)
    add_settings(doc, tuner)
    doc.heading("Validation metrics during training", 2)
    if not add_validation(doc, tuner.history):
        doc.paragraph("No evaluation ran during training.")
    doc.heading("Evaluation results", 2)
    if results:
        doc.paragraph(f"On the held-out {split} split:")
        add_results(doc, results, confidence)
        signatures = {k: v for k, v in metric_signatures(tuner).items() if k in results}
        if signatures:
            doc.paragraph("Signatures (scores compare only under the same one): "
                          + "; ".join(f"`{k}`: `{v}`" for k, v in signatures.items()) + ".")
    else:
        doc.paragraph("Not recorded: pass the results of `tuner.evaluate(test, confidence=0.95)` to "
                      "`write_model_card(tuner, folder, results)`.")
    doc.heading("How to use", 2)
    doc.code(_usage(tuner), "python")
    doc.heading("Framework versions", 2)
    add_versions(doc)

    path = folder / "README.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(front_matter(tuner, base) + "\n" + doc.markdown(), encoding="utf-8")
    return path
