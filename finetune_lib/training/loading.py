"""Loading models and tokenizers, and checking that they fit the task and the data."""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer

from ..data.arrow_data import distinct_label_records, is_arrow, record_keys
from ..data.records import json_list
from ..tasks import TASKS, Task, get_task
from .gguf import is_gguf, load_gguf_model, load_gguf_tokenizer

log = logging.getLogger(__name__)

REQUIRED_KEYS = {"classification": ("text", "label"), "causal_lm": ("target",), "seq2seq": ("prompt", "target")}
REQUIRED_KEYS.update({"multilabel_classification": ("text", "label"), "regression": ("text", "label")})


def as_records(data: Any, split: str, task: str, need_labels: bool = True) -> list[dict[str, Any]]:
    """Accept a Records/list of dicts, a pandas DataFrame, a DatasetBuilder or an HF Dataset.

    Checks that the records carry the keys the task needs, and are not empty. Conversation records
    (`{"messages": [...]}`, causal_lm only) are checked by `finetune_lib.data.chat.check_conversations`;
    token classification records are checked, and given `tokens` and IOB2 `tags`, by
    `finetune_lib.data.token_labels` (`check_tagged_records`, `normalize_tagged`).
    """
    if data is None:
        raise ValueError(f"The {split} data is None. Pass a list of records or a split from DatasetBuilder.")
    if hasattr(data, "records") and not isinstance(data, Mapping) and is_arrow(data.records):
        data = data.records  # a DatasetBuilder over Arrow
    if is_arrow(data) and not (task in TASKS and get_task(task).label_kind == "tags"):
        return check_arrow_records(data, split, task, need_labels)  # stays Arrow: checked column by column
    if hasattr(data, "to_dict") and hasattr(data, "columns"):  # pandas DataFrame
        data = data.to_dict("records")
    elif hasattr(data, "records") and not isinstance(data, Mapping):  # DatasetBuilder
        data = data.records
    if isinstance(data, (str, Path)):
        raise TypeError(f"The {split} data is a path ({data!s}); load it first: "
                        f"DatasetBuilder.from_file({str(data)!r}, text=..., label=...).")
    if not isinstance(data, Iterable):
        raise TypeError(f"The {split} data must be a sequence of records (dicts), not {type(data).__name__}.")
    records = [dict(r) for r in data]
    if not records:
        raise ValueError(f"The {split} split is empty (0 records). Check the filters and the split sizes "
                         "given to DatasetBuilder.split().")
    if not isinstance(records[0], dict):
        raise TypeError(f"{split} records must be dicts with keys like 'text' and 'label'.")
    if task in TASKS and get_task(task).label_kind == "tags":  # words and tags, or a text and its spans
        from ..data.token_labels import check_tagged_records, normalize_tagged

        check_tagged_records(records, split, need_tags=need_labels)
        return [normalize_tagged(r) for r in records]  # tokens and IOB2 tags (spans turned into tags)
    if task in TASKS and get_task(task).label_kind == "classes":  # multi-label: a JSON list in a CSV cell
        for r in records:
            r["label"] = json_list(r.get("label"))  # records not loaded by DatasetBuilder
    needed = REQUIRED_KEYS[task]
    if task == "causal_lm":
        needed = ("target",) if "target" in records[0] else ("text",)
    if any("messages" in r for r in records):
        needed = ()  # conversations: check_value_types checks them
    if not need_labels:
        needed = tuple(k for k in needed if k not in ("label", "target"))
    for i, r in enumerate(records):
        missing = [k for k in needed if k not in r]
        if missing:
            hint = ", ".join(f"{k}='<your column>'" for k in missing)
            raise ValueError(f"Record {i} of {split} has no {missing} field for task {task!r}; its keys are "
                             f"{sorted(r)}. Rename the columns, e.g. DatasetBuilder.from_records(data, {hint}).")
    check_value_types(records, split, task, need_labels)
    return records


def check_arrow_records(data: Any, split: str, task: str, need_labels: bool = True) -> Any:
    """Arrow-backed records (a `datasets.Dataset`, `ArrowRecords`) checked column-wise, and returned as
    they are: the columns the task needs are there, texts are strings with no nulls, labels have a
    type the task takes (`check_value_types`' rules). Conversations are checked record by record, a chunk
    at a time."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from ..data.arrow_data import arrow_column, column_names, hf_dataset, record_chunks

    ds = hf_dataset(data)
    names = column_names(data)
    if len(ds) == 0:
        raise ValueError(f"The {split} split is empty (0 records). Check the filters and the split sizes "
                         "given to DatasetBuilder.split().")
    if "messages" in names:
        for first, chunk in record_chunks(data, 10_000):
            try:
                check_value_types(chunk, split, task, need_labels)
            except ValueError as error:
                raise ValueError(f"{error} (Record numbers count from row {first}.)") from error
        return data
    kind = get_task(task).label_kind if task in TASKS else None
    needed = list(REQUIRED_KEYS[task])
    if task == "causal_lm":
        needed = ["target"] if "target" in names else ["text"]
    if not need_labels:
        needed = [k for k in needed if k not in ("label", "target")]
    missing = [k for k in needed if k not in names]
    if missing:
        hint = ", ".join(f"{k}='<your column>'" for k in missing)
        raise ValueError(f"The {split} data has no {missing} column for task {task!r}; its columns are {sorted(names)}. "
                         f"Rename the columns, e.g. dataset.rename_column('<your column>', {missing[0]!r}), or "
                         f"DatasetBuilder.from_hf(data, {hint}).")
    problems = []
    for key in [k for k in ("text", "prompt", "target") if k in names and (k in needed or k == "prompt")]:
        column = ds.data.column(key)  # the whole table's: its type, and no nulls means none in the selection either
        if column.null_count:
            column = arrow_column(data, key)  # the selected rows, in order (one take)
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
                or (pa.types.is_null(column.type) and key == "prompt")):
            problems.append(f"column {key!r} holds {column.type}, not strings")
        elif key != "prompt" and column.null_count:
            rows = pc.indices_nonzero(pc.is_null(column)).to_pylist()[:5]
            problems.append(f"column {key!r} has {column.null_count} missing values (rows {rows})")
    if kind is not None and need_labels and "label" in names:
        label = arrow_column(data, "label")
        base = label.type.value_type if kind == "classes" and pa.types.is_list(label.type) else label.type
        numeric = pa.types.is_integer(base) or pa.types.is_floating(base)
        ok_type = {"class": numeric or pa.types.is_boolean(base) or pa.types.is_string(base)
                   or pa.types.is_large_string(base),
                   "classes": pa.types.is_list(label.type) and (pa.types.is_integer(base) or pa.types.is_string(base)),
                   "value": numeric}[kind]
        if not ok_type:
            problems.append(f"column 'label' holds {label.type}")
        elif label.null_count:
            rows = pc.indices_nonzero(pc.is_null(label)).to_pylist()[:5]
            problems.append(f"column 'label' has {label.null_count} missing values (rows {rows})")
        elif kind == "classes" and pc.min(pc.list_value_length(label)).as_py() == 0:
            problems.append("column 'label' has empty lists")
        elif pa.types.is_floating(base) and kind != "classes":
            values = label.to_numpy()
            bad = ~np.isfinite(values) if kind == "value" else ~(np.isfinite(values) & (values == np.round(values)))
            if bad.any():
                problems.append(f"column 'label' has {int(bad.sum())} values that are not "
                                f"{'finite' if kind == 'value' else 'whole numbers'} (rows {np.flatnonzero(bad)[:5].tolist()})")
    if problems:
        fix = LABEL_FIXES[kind] if kind is not None and any("label" in p for p in problems) else ""
        raise ValueError(f"The {split} data has the wrong types for task {task!r}: {'; '.join(problems)}. Texts must be "
                         f"strings (drop or fill the missing ones, e.g. dataset.filter(...)). {fix}".rstrip())
    return data


def _describe(value: Any) -> str:
    shown = repr(value)
    return f"{type(value).__name__} {shown[:40]}{'...' if len(shown) > 40 else ''}"


def _label_ok(value: Any) -> bool:
    """A class name (str) or id (int, bool, or an integral float such as pandas' 1.0); never None or NaN."""
    if isinstance(value, (str, bool, numbers.Integral)):
        return True
    return isinstance(value, numbers.Real) and math.isfinite(float(value)) and float(value).is_integer()


def _labels_ok(value: Any) -> bool:
    """A non-empty list (or tuple) of class names or ids: a multi-label record's labels."""
    return isinstance(value, (list, tuple)) and bool(value) and all(_label_ok(v) for v in value)


def _value_ok(value: Any) -> bool:
    """A finite number (not a bool): a regression target."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))


LABEL_CHECKS = {"class": _label_ok, "classes": _labels_ok, "value": _value_ok}
LABEL_FIXES = {
    "class": "A label must be a class name (str) or id (int): missing labels (None, NaN) are refused; drop or fix "
             "these records. For several labels per text use task='multilabel_classification', for numbers "
             "task='regression'.",
    "classes": "A multi-label record's label must be a non-empty list of label names (str) or ids (int), e.g. "
               "['sports', 'politics']: an empty list teaches nothing and hides a labelling gap, so it is refused. "
               "Drop these records, or give them an explicit label (e.g. ['none']) and train on it. In a CSV/TSV "
               "file write the cell as a JSON list (\"[\"\"sports\"\", \"\"politics\"\"]\"), or split a delimited "
               "text yourself: [{**r, 'label': r['label'].split(';')} for r in builder].",
    "value": "A regression label must be a finite number (int or float): NaN, inf, None, text and lists are "
             "refused; drop or fix these records (e.g. float() on numeric strings, or fill the missing values).",
}


def check_value_types(records: list[dict[str, Any]], split: str, task: str, need_labels: bool = True) -> None:
    """Every text the task reads is a string, and every label a class name or id, before any work.

    `text`, `prompt` and `target` must be `str` (a `prompt` may also be None: no prompt); None, NaN
    (pandas' missing value, or a bare `NaN` in a JSONL file), numbers and lists are refused, since
    they would be trained on as the texts "None", "nan" or "[...]". A classification `label` must be a
    str, an int or a bool (an integral float such as 1.0 passes as an id); a multi-label one a non-empty
    list of those; a regression one a finite number (NaN and inf refused). The error names the
    records (index in `split`) and the fix. Conversations (causal_lm) must be lists of messages with a
    known role and non-empty string content, with an assistant turn to learn when `need_labels`,
    and not mixed with other records (`finetune_lib.data.chat.check_conversations`).
    """
    if any("messages" in r for r in records):
        from ..data.chat import check_conversations

        if task != "causal_lm":
            raise ValueError(f"The {split} data holds conversations (messages), which task {task!r} cannot read: "
                             "use task='causal_lm', or give text/label (classification) or prompt/target (seq2seq) "
                             "records.")
        check_conversations(records, split, need_assistant=need_labels)
        return
    kind = get_task(task).label_kind if task in TASKS else None  # "class", "classes", "value" or None
    if kind is not None:
        keys = ["text"]
    elif task == "causal_lm" and "target" not in records[0]:
        keys = ["text"]
    else:
        keys = ["prompt", "target"]
    if not need_labels:
        keys = [k for k in keys if k != "target"]
    labels = kind is not None and need_labels
    bad_text: list[str] = []
    bad_label: list[str] = []
    bad_keys: dict[str, None] = {}
    count = 0
    for i, r in enumerate(records):
        for key in keys:
            value = r.get(key, "")
            if isinstance(value, str) or (key == "prompt" and value is None):
                continue
            count += 1
            bad_keys[key] = None
            if len(bad_text) < 5:
                bad_text.append(f"record {i}: {key} is {_describe(value)}")
        if labels and "label" in r and not LABEL_CHECKS[kind](r["label"]):
            count += 1
            if len(bad_label) < 5:
                bad_label.append(f"record {i}: label is {_describe(r['label'])}")
    if not count:
        return
    fixes = []
    if bad_text:
        fixes.append(f"A {' or '.join(bad_keys)} must be a string, or it is trained on as the text 'None', 'nan' or "
                     "'[...]': drop or fill these records (DatasetBuilder.from_records(...) drops empty ones and "
                     "counts them), or convert them on purpose with str().")
    if bad_label:
        fixes.append(LABEL_FIXES[kind])
    shown = "; ".join(bad_text + bad_label) + (" ..." if count > len(bad_text) + len(bad_label) else "")
    raise ValueError(f"{count} value(s) of the {split} data have the wrong type for task {task!r}: {shown}. "
                     + " ".join(fixes))


# above this many characters in all, only exact matches are looked for (normalizing costs ~0.1 s per million)
OVERLAP_NORMALIZE_LIMIT = 20_000_000


def check_overlap(train: list[dict[str, Any]], validation: list[dict[str, Any]] | None,
                  normalize_limit: int = OVERLAP_NORMALIZE_LIMIT) -> dict[str, Any]:
    """Warn when validation records repeat training texts, which makes validation scores optimistic.

    Compares each record's content key (`text`, or `prompt` and `target`: the key that
    `DatasetBuilder.deduplicate()` and `Splits.leakage()` use) exactly, through a hash set, and after
    the same normalization as `Splits.leakage()` (case, punctuation, whitespace) unless the data
    holds more than `normalize_limit` characters. Returns the counts in `Splits.leakage()`'s form,
    ``{"train/validation": {"exact": 3, "normalized": 1, "near": 0, "examples": [...]}}`` (empty
    without validation data); logs one warning when some are shared.
    """
    from ..data.dedup import normalize_for_dedup

    if validation is None or not len(validation):
        return {}
    train_keys = set(record_keys(train))  # column-wise for Arrow-backed records
    val_keys = record_keys(validation)
    exact = [i for i, k in enumerate(val_keys) if k in train_keys]
    normalized: list[int] = []
    checked_normalized = sum(map(len, train_keys)) + sum(map(len, val_keys)) <= normalize_limit
    if checked_normalized:
        train_norm = {normalize_for_dedup(k) for k in train_keys}
        shared = set(exact)
        normalized = [i for i, k in enumerate(val_keys) if i not in shared and normalize_for_dedup(k) in train_norm]
    found = sorted(exact + normalized)
    examples = [val_keys[i] for i in found[:3]]
    pair: dict[str, Any] = {"exact": len(exact), "normalized": len(normalized), "near": 0, "examples": examples}
    if found:
        kinds = f"{len(exact)} exact" + (f", {len(normalized)} after normalizing case, punctuation and whitespace"
                                         if checked_normalized else "; only exact matches were looked for")
        log.warning("%d of the %d validation records (%.1f%%) share their text with the training data (%s), e.g. %s: "
                    "validation scores will be optimistic. Remove them with splits.remove_leakage() (see "
                    "splits.leakage()), or call DatasetBuilder.deduplicate() before split().",
                    len(found), len(validation), 100 * len(found) / len(validation), kinds,
                    [k[:60] for k in examples])
    return {"train/validation": pair}


def max_positions(config: Any) -> int | None:
    """The longest sequence a model's position embeddings allow (None when unbounded, like T5)."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def load_tokenizer(source: Any, tokenizer: Any) -> Any:
    if tokenizer is not None:
        return AutoTokenizer.from_pretrained(tokenizer) if isinstance(tokenizer, (str, Path)) else tokenizer
    if is_gguf(source):  # the tokenizer stored in the GGUF file
        return load_gguf_tokenizer(source)
    if isinstance(source, (str, Path)):
        return AutoTokenizer.from_pretrained(str(source))
    raise ValueError("A model object was passed without a tokenizer. Pass tokenizer=... (a tokenizer object "
                     "or a hub id / folder), or pass the model as a hub id or folder.")


def load_model(source: Any, task: Task, labels: dict[str, Any] | None, **options: Any) -> torch.nn.Module:
    """`from_pretrained` with the right head (and label names for classification), or the object itself.

    A head whose size is fixed (a model object, or a folder fine-tuned for named labels) must fit the
    data's labels; that is checked here, before any weights are loaded or trained. A path to a `.gguf`
    file loads a plain float32 model from it (`finetune_lib.training.gguf`). `options` go to
    `from_pretrained` (QLoRA's `quantization_config` and `device_map`).
    """
    problem_type = getattr(task, "problem_type", None)  # multi-label and regression heads say so in their config
    if isinstance(source, torch.nn.Module):
        model = source
        if task.has_classes and labels:
            check_fixed_head(model.config, labels, "The model")
            model.config.id2label, model.config.label2id = labels["id2label"], labels["label2id"]
        if task.label_kind == "value":
            check_regression_head(model.config)
        if problem_type:
            model.config.problem_type = problem_type
        return model
    kwargs: dict[str, Any] = {}
    if task.has_classes and labels:
        config = _try_config(source)
        if config is not None and head_label_names(config) is not None:  # a fine-tuned classifier
            check_fixed_head(config, labels, repr(str(source)), source=str(source))
        kwargs = {"num_labels": len(labels["id2label"]), "id2label": labels["id2label"],
                  "label2id": labels["label2id"], "ignore_mismatched_sizes": True}
    if task.label_kind == "value":  # one output; a classifier's head is rebuilt
        kwargs = {"num_labels": 1, "ignore_mismatched_sizes": True}
    if problem_type:
        kwargs["problem_type"] = problem_type
    if is_gguf(source):
        return load_gguf_model(source, task.auto_class, **kwargs)
    try:
        return task.auto_class.from_pretrained(str(source), **kwargs, **options)
    except OSError as e:
        raise OSError(f"Could not load a model from {source!r}: {e}. Give a local folder written by "
                      "save_pretrained()/FineTuner.save(), or a hub id (with network access).") from e
    except ValueError as e:
        if "Unrecognized configuration class" in str(e):
            raise ValueError(f"{source!r} has no {task.name} head ({e}). Choose a task this architecture "
                             "supports: encoders for classification, decoders for causal_lm, "
                             "encoder-decoders for seq2seq.") from e
        raise


def check_fixed_head(config: Any, labels: dict[str, Any], what: str, source: str | None = None) -> None:
    """The data's labels must fit a classification head that is not rebuilt for them.

    A head fine-tuned for named labels accepts only those names; a head with generic `LABEL_i` names
    must have one output per label, and integer labels must index it. The error lists the labels
    that do not fit.
    """
    have = int(getattr(config, "num_labels", 0) or 0)
    names = head_label_names(config)
    data = [str(v) for v in labels["id2label"].values()]
    seen = list(labels.get("observed", []))
    new_head = (f"AutoModelForSequenceClassification.from_pretrained({source or '<its folder or hub id>'!r}, "
                f"num_labels={len(data)}, ignore_mismatched_sizes=True)")
    if names is not None:
        unknown = [v for v in seen if str(v) not in set(names)] or [n for n in data if n not in set(names)]
        if unknown:
            raise ValueError(f"{what} has a classification head fine-tuned for the {len(names)} labels "
                             f"{_show(names)}, but the training data has labels it cannot predict: {_show(unknown)}. "
                             "Train on records with the head's labels only, or give the model a new head for the "
                             f"data's {len(data)} labels and pass that object: {new_head}.")
        if len(data) == have:
            return
    if len(data) != have:
        bad = [v for v in seen if isinstance(v, int) and not 0 <= v < have]
        hint = ""
        if bad and seen and min(seen) == 1 and max(seen) == have:
            hint = " The labels look 1-based (1..K): subtract 1 so they run from 0, or use names."
        raise ValueError(f"{what} has a head for {have} labels but the data has {len(data)} ({_show(data)})"
                         + (f"; out of range for this head: {_show(bad)}." if bad else ".") + hint +
                         " Pass the model as a hub id or folder so the head is built for the data, give it a "
                         f"head of the right size ({new_head}), or fix the labels.")


def check_regression_head(config: Any) -> None:
    """A regression head given as a model object must have one output."""
    have = int(getattr(config, "num_labels", 0) or 0)
    if have != 1:
        raise ValueError(f"task='regression' needs a head with one output, and the model's has {have}. Pass the "
                         "model as a hub id or folder (the head is rebuilt), or build it with "
                         "AutoModelForSequenceClassification.from_pretrained(<its folder or hub id>, num_labels=1, "
                         "ignore_mismatched_sizes=True).")


def _show(values: list[Any], limit: int = 10) -> str:
    shown = ", ".join(map(repr, values[:limit]))
    return f"[{shown}{f', ... ({len(values)} in all)' if len(values) > limit else ''}]"


def _try_config(source: Any) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(source))
    except (OSError, ValueError):
        return None  # from_pretrained will say what is wrong


def check_token_ids(features: list[dict[str, Any]], model: torch.nn.Module, split: str) -> None:
    """Token ids must index the model's embedding table (a tokenizer from another model would not)."""
    emb = model.get_input_embeddings()
    size = emb.num_embeddings if emb is not None else None
    if size is None or not len(features):
        return
    if hasattr(features, "max_token_id"):  # ArrowFeatures: one column-wise max
        worst = features.max_token_id()
    else:
        worst = max((max(f["input_ids"]) if f["input_ids"] else 0) for f in features)
    if worst >= size:
        raise ValueError(f"{split} has token id {worst} but the model's embedding table has {size} rows: the "
                         "tokenizer does not belong to this model. Use the model's own tokenizer, or call "
                         "model.resize_token_embeddings(len(tokenizer)) if you added tokens on purpose.")


def head_label_names(config: Any) -> list[str] | None:
    """The label names of a fine-tuned classification head (None for generic `LABEL_i` names)."""
    id2label = getattr(config, "id2label", None) or {}
    names = [str(id2label[i]) for i in sorted(id2label)]
    if not names or all(n == f"LABEL_{i}" for i, n in enumerate(names)):
        return None
    return names


def labels_from_model(source: Any) -> list[Any] | None:
    """Label names of an already fine-tuned classifier (None for generic `LABEL_i` names)."""
    config = getattr(source, "config", None)
    if config is None and isinstance(source, (str, Path)):
        config = _try_config(source)
    return head_label_names(config)


def fit_labels(pre: Any, model_or_source: Any, records: list[dict[str, Any]] | None, task: Any = None) -> None:
    """Give the Preprocessor its label mapping: from the training `records`, in the order of a
    fine-tuned head's own labels when they cover the data; with no records (evaluate/predict before
    fit), the head's labels alone. For token classification (`task.label_kind == "tags"`) the records'
    tag names (`finetune_lib.data.token_labels.tag_label_records`)."""
    model_labels = labels_from_model(model_or_source)
    if records is not None and is_arrow(records):
        records = distinct_label_records(records)  # each label once, read column-wise
    if records and getattr(task, "label_kind", None) == "tags":
        from ..data.token_labels import tag_label_records, tag_names

        if model_labels and pre.label_names is None and set(tag_names(records)) <= set(model_labels):
            pre.label_names = list(model_labels)  # a fine-tuned tagger's own order
        records = tag_label_records(pre, records)
    if records is None:
        if model_labels is None:
            raise RuntimeError("The label names are unknown: call fit() first, or load a fine-tuned model.")
        pre.label_names = model_labels
        records = [{"label": n} for n in model_labels]
    elif model_labels and {str(r["label"]) for r in records} <= {str(n) for n in model_labels}:
        pre.label_names = [type(records[0]["label"])(n) for n in model_labels]  # keep the head's order
    pre.fit_labels(records)
