"""The model card (README.md) written next to a saved model by `FineTuner.save`.

It opens with the metadata the Hugging Face Hub reads, written by `huggingface_hub`'s
`ModelCardData` (``library_name``, ``pipeline_tag``, ``tags``, ``base_model`` when the model came
from the Hub, and ``model-index`` with the evaluation results), then: model description (with the
``max_length`` used in training and, for generation models, the prompt format), intended uses and
limitations, training data, training procedure (layer freezing, the settings actually used,
regularization), validation metrics per evaluation (the row of the saved weights marked), evaluation
results with confidence intervals, how to load the model (a snippet that truncates inputs as
training did), and framework versions.

It reads a `RunInfo` (plain data about the run, see `finetune_lib.reporting.run_info`); a
`FineTuner` passed instead is converted with `finetune_lib.reporting.tuner_info.run_info_from_tuner`.
No path of the training machine is written: a local base model shows as its folder name.
"""

from __future__ import annotations

import math
import string
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from .document import Document
from .run_info import RunInfo, hub_id, split_baseline
from .sections import (
    add_data,
    add_freezing,
    add_results,
    add_settings,
    add_validation,
    add_versions,
    freezing_heading,
    split_results,
    training_summary,
)
from .tuner_info import as_run_info

__all__ = ["PIPELINE_TAGS", "card_data", "front_matter", "hub_id", "usage_snippet", "write_model_card"]

PIPELINE_TAGS = {
    "classification": "text-classification",
    "causal_lm": "text-generation",
    "seq2seq": "text2text-generation",
    "multilabel_classification": "text-classification",
    "regression": "text-classification",
    "token_classification": "token-classification",
}
"""The Hub's `pipeline_tag` for each task."""

_NEW_TOKENS = 64
"""Tokens the usage snippet of a generation model generates."""


def _short(run: RunInfo, base: str | None) -> str:
    return base.rsplit("/", 1)[-1] if base else run.base_model


def card_data(run: Any, results: Mapping[str, Any] | None = None, *, base_model: str | None = None,
              model_name: str | None = None, dataset: str | None = None, split: str = "test") -> Any:
    """The card's metadata as a `huggingface_hub.ModelCardData`: library, pipeline tag, tags,
    ``base_model`` (a Hub id) and, with `results`, one `EvalResult` per overall metric (the
    ``model-index`` the Hub shows).

    Args:
        run: a `RunInfo` (or a `FineTuner`).
        results: evaluation results (``<metric>`` keys; intervals and slices are left to the body).
        base_model: the base model's Hub id (default: `run.base_model_hub_id`).
        model_name: the name in ``model-index`` (default ``"<base>-finetuned-<task>"``).
        dataset: the Hub id of the evaluation data, when it is on the Hub (else "custom").
        split: the split the results come from.
    """
    from huggingface_hub import EvalResult, ModelCardData

    run = as_run_info(run)
    base = base_model or run.base_model_hub_id
    task_tag = PIPELINE_TAGS.get(run.task)
    evals = []
    results, _ = split_baseline(results)  # model-index: the fine-tuned model's results only
    if results:
        overall, _ = split_results(results)
        for name, (value, _low, _high) in overall.items():
            if hasattr(value, "item"):
                value = value.item()
            if (name in ("generated_fraction", "count") or isinstance(value, bool)
                    or not isinstance(value, (int, float)) or not math.isfinite(value)):
                continue
            evals.append(EvalResult(task_type=task_tag or run.task, dataset_type=dataset or "custom",
                                    dataset_name=dataset or f"held-out {split} split", dataset_split=split,
                                    metric_type=name, metric_name=name, metric_value=round(float(value), 6)))
    return ModelCardData(
        library_name="peft" if (run.adapter or {}).get("saved_as") == "adapter" else "transformers",
        pipeline_tag=task_tag,
        base_model=base,
        datasets=[dataset] if dataset else None,
        tags=["finetune_lib", "fine-tuned", *([task_tag] if task_tag else [])],
        model_name=(model_name or f"{_short(run, base)}-finetuned-{run.task}") if evals else model_name,
        eval_results=evals or None,
    )


def front_matter(run: Any, base_model: str | None = None, results: Mapping[str, Any] | None = None,
                 **kwargs: Any) -> str:
    """The YAML header (between ``---`` lines) of `card_data`."""
    return "---\n" + card_data(run, results, base_model=base_model, **kwargs).to_yaml() + "\n---\n"


def _template_fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name and name != "prompt"]


def _prompt_lines(run: RunInfo) -> list[str]:
    """Lines that build `prompt` in the training format."""
    template = run.prompt_template or "{prompt}"
    lines = []
    if template == "{prompt}":
        lines.append('prompt = "your prompt"')
    else:
        extra = "".join(f', {f}="..."' for f in dict.fromkeys(_template_fields(template)))
        lines.append(f'prompt = {template!r}.format(prompt="your prompt"{extra})  # the training format')
    if run.use_chat_template:
        lines.append('prompt = [{"role": "user", "content": prompt}]  # rendered with the chat template, as in training')
    return lines


def usage_snippet(run: Any) -> str:
    """Python code that loads the saved model and runs it on one input, cut to the ``max_length`` of
    training (a longer input would otherwise overflow the model's positions or leave the lengths it
    was trained on). Replace ``path/to/this/folder`` with the folder or its Hub id."""
    run = as_run_info(run)
    n = run.max_length
    if run.task in ("multilabel_classification", "regression"):
        return _head_snippet(run, n)
    if run.task == "token_classification":
        return ('from transformers import pipeline\n\n'
                'tag = pipeline("token-classification", model="path/to/this/folder",  # or its Hub id\n'
                '               aggregation_strategy="simple")  # entities grouped from the B-/I- tags\n'
                "# aggregation_strategy='first' takes each word's tag from its first sub-token, as training\n"
                "# and evaluation did\n"
                'print(tag("Angela Merkel visited Paris."))  # [{"entity_group": ..., "word": ..., "start": ...}]')
    if run.task == "classification":
        call = 'classify("your text here"' + (f", truncation=True, max_length={n}" if n else ", truncation=True") + ")"
        return ('from transformers import pipeline\n\n'
                'classify = pipeline("text-classification", model="path/to/this/folder")  # or its Hub id\n'
                + (f"# inputs are cut to the {n} tokens used in training\n" if n else "")
                + f'print({call})  # [{{"label": ..., "score": ...}}]')
    new = min(_NEW_TOKENS, n // 2) if n else _NEW_TOKENS
    prompt = "\n".join(_prompt_lines(run))
    if run.task == "causal_lm":
        keep = (f'tokenizer_encode_kwargs={{"truncation": True, "max_length": {n - new}}}') if n else ""
        return ('from transformers import AutoTokenizer, pipeline\n\n'
                'model_id = "path/to/this/folder"  # or its Hub id\n'
                + (f"# training saw at most {n} tokens of prompt and reply together; a longer prompt keeps its\n"
                   "# end, as in training\n" if n else "")
                + 'tokenizer = AutoTokenizer.from_pretrained(model_id, truncation_side="left")\n'
                'generate = pipeline("text-generation", model=model_id, tokenizer=tokenizer)\n'
                f'{prompt}\n'
                f'out = generate(prompt, max_new_tokens={new}, return_full_text=False'
                + (f",\n               {keep}" if keep else "") + ')\n'
                'print(out[0]["generated_text"])')
    chat = run.use_chat_template
    encode = ("tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_dict=True, "
              "return_tensors=\"pt\"" if chat else 'tokenizer([prompt], return_tensors="pt"')
    encode += f", truncation=True, max_length={n})" if n else ")"
    return ('from transformers import AutoModelForSeq2SeqLM, AutoTokenizer\n\n'
            'model_id = "path/to/this/folder"  # or its Hub id\n'
            'tokenizer = AutoTokenizer.from_pretrained(model_id)\n'
            'model = AutoModelForSeq2SeqLM.from_pretrained(model_id)\n'
            f'{prompt}\n'
            + (f"# the input is cut to the {n} tokens used in training\n" if n else "")
            + f'inputs = {encode}\n'
            f'ids = model.generate(**inputs, max_new_tokens={new})\n'
            'print(tokenizer.batch_decode(ids, skip_special_tokens=True))')


def _head_snippet(run: RunInfo, n: int | None) -> str:
    """The pipeline call of a multi-label model (every label's probability) or a regression model (the value)."""
    cut = f", truncation=True, max_length={n}" if n else ", truncation=True"
    if run.task == "regression":
        return ('from transformers import pipeline\n\n'
                'predict = pipeline("text-classification", model="path/to/this/folder")  # or its Hub id\n'
                '# function_to_apply="none": the raw output is the predicted value, in the targets\' units\n'
                f'print(predict("your text here", function_to_apply="none"{cut})[0]["score"])')
    return ('import json\nfrom pathlib import Path\n\nfrom transformers import pipeline\n\n'
            'folder = "path/to/this/folder"\n'
            'classify = pipeline("text-classification", model=folder)\n'
            '# the pipeline gives every label\'s probability; the thresholds of training are in config.json\n'
            'thresholds = json.loads(Path(folder, "config.json").read_text())["finetune_lib_thresholds"]\n'
            f'scores = classify("your text here", top_k=None{cut})\n'
            'print([s["label"] for s in scores if s["score"] >= thresholds[s["label"]]])')


def _description(run: RunInfo, base: str | None) -> str:
    what = {"classification": "text classification", "causal_lm": "text generation (causal language modeling)",
            "seq2seq": "sequence-to-sequence generation", "multilabel_classification": "multi-label text classification",
            "regression": "text regression (one number per text)",
            "token_classification": "token classification (one tag per word)"}.get(run.task, run.task)
    source = f"[{base}](https://huggingface.co/{base})" if base else f"`{run.base_model}`"
    text = f"This model is {source} fine-tuned for {what} with finetune_lib."
    if run.task == "classification" and run.label_names:
        text += f" It predicts one of {len(run.label_names)} labels: " + ", ".join(f"`{n}`" for n in run.label_names) + "."
    if run.task == "token_classification" and run.label_names:
        types = sorted({str(n)[2:] for n in run.label_names if str(n) != "O"})
        text += (f" It tags each word with one of {len(run.label_names)} IOB2 tags, for the entity types "
                 + ", ".join(f"`{t}`" for t in types) + ".")
    if run.task == "multilabel_classification" and run.label_names:
        text += (f" It predicts any number of {len(run.label_names)} labels (a label when its probability reaches "
                 "its threshold): " + ", ".join(f"`{n}`" for n in run.label_names) + ".")
    return text


def write_model_card(run: Any, folder: str | Path, results: Mapping[str, Any] | None = None, *,
                     confidence: float | None = None, data_report: Any = None, base_model: str | None = None,
                     split: str = "test", dataset: str | None = None, model_name: str | None = None) -> Path:
    """Write ``<folder>/README.md`` for the model of a run.

    Args:
        run: a `RunInfo`, or the `FineTuner` whose model was saved in `folder` (converted with
            `finetune_lib.reporting.tuner_info.run_info_from_tuner`).
        folder: the saved model's folder.
        results: evaluation results to report, with their ``_low`` / ``_high`` intervals (what
            ``tuner.evaluate(test, confidence=0.95)`` returns); default ``run.results`` (the
            tuner's last ``evaluate()``). ``baseline/<key>`` keys (``evaluate(test, baseline=True)``),
            or ``run.baseline_results`` by default, put the base model's results beside them.
        confidence: the level of the intervals, for the column title; default ``run.confidence``.
        data_report: a `DataReport` of the splits (``splits.report()``), its ``to_dict()`` or a
            string; default ``run.data_summary``, else what the Preprocessor counted.
        base_model: the Hub id of the base model, when the model was loaded from a local copy of it
            (by default taken from the model source when that is a Hub id).
        split: the name of the split `results` come from.
        dataset: the Hub id of the evaluation data set, when it is on the Hub (for ``model-index``).
        model_name: the model's name in ``model-index`` (default ``"<base>-finetuned-<task>"``).

    Returns:
        The path of README.md.

    Example:
        >>> write_model_card(tuner, "runs/a/final", tuner.evaluate(test, confidence=0.95),
        ...                  confidence=0.95, data_report=splits.report())          # doctest: +SKIP
    """
    from huggingface_hub import ModelCard

    run = as_run_info(run)
    folder = Path(folder)
    if run.adapter:  # what the folder holds: peft's adapter folder, or the adapter merged into the weights
        saved_as = "adapter" if (folder / "adapter_config.json").is_file() else "merged"
        run = replace(run, adapter={**run.adapter, "saved_as": saved_as})
    results, baseline = split_baseline(results)
    if results is None:
        results, baseline = run.results, run.baseline_results
        if confidence is None:
            confidence = run.confidence
    base = base_model or run.base_model_hub_id
    task_tag = PIPELINE_TAGS.get(run.task, run.task)

    doc = Document()
    doc.heading(f"{_short(run, base)} fine-tuned for {task_tag.replace('-', ' ')}", 1)
    doc.paragraph(_description(run, base))
    doc.heading("Model description", 2)
    doc.bullets([
        f"base model: `{base or run.base_model}`",
        f"task: `{run.task}` (pipeline `{PIPELINE_TAGS.get(run.task, '-')}`)",
        *([f"labels: {', '.join(f'`{n}`' for n in run.label_names)}"] if run.label_names else []),
        *([f"max input length: {run.max_length} tokens, as in training (longer inputs were truncated; "
           "the snippet below truncates the same way)"] if run.max_length else []),
        *([f"prompt format: {run.prompt_format}"] if run.prompt_format else []),
        f"training: {training_summary(run)}",
    ])
    doc.heading("Intended uses & limitations", 2)
    doc.paragraph("Intended for inputs like the training data summarized below: same domain, language and "
                  "label set. Its quality was measured only on the held-out data reported here; check it on "
                  "your own data before relying on it, and do not use it for decisions about people without "
                  "further evaluation. The model may repeat biases and errors of its training data.")
    doc.heading("Training data", 2)
    add_data(doc, run, data_report)
    doc.heading("Training procedure", 2)
    doc.heading(freezing_heading(run), 3)
    add_freezing(doc, run)
    doc.heading("Hyperparameters", 3)
    add_settings(doc, run)
    doc.heading("Validation metrics during training", 2)
    if not add_validation(doc, run.history, run.weights_step):
        doc.paragraph("No evaluation ran during training.")
    doc.heading("Evaluation results", 2)
    if results:
        doc.paragraph(f"On the held-out {split} split" + (", the base model before fine-tuning and the fine-tuned "
                                                          "model, with the same metrics and generation settings:"
                                                          if baseline else ":"))
        add_results(doc, results, confidence, baseline)
        signatures = {k: v for k, v in run.metric_signatures.items() if k in results}
        if signatures:
            doc.paragraph("Signatures (scores compare only under the same one): "
                          + "; ".join(f"`{k}`: `{v}`" for k, v in signatures.items()) + ".")
    else:
        doc.paragraph("Not recorded: pass the results of `tuner.evaluate(test, confidence=0.95)` to "
                      "`write_model_card(tuner, folder, results)`.")
    doc.heading("How to use", 2)
    doc.code(usage_snippet(run), "python")
    doc.heading("Framework versions", 2)
    add_versions(doc)

    meta = front_matter(run, base, results, split=split, dataset=dataset, model_name=model_name)
    card = ModelCard(meta + "\n" + doc.markdown())
    path = folder / "README.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(str(card), encoding="utf-8")
    return path
