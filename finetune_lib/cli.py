"""The command line: a run described by a YAML/JSON config file, or by flags, mapped one to one onto
the Python API.

    python -m finetune_lib train CONFIG.yaml
    python -m finetune_lib train --model PATH --task classification --data FILE --text text \\
        --label label --epochs 3 --output-dir runs/x
    python -m finetune_lib evaluate --model runs/x/final --data test.jsonl --text text --label label

A config file holds these keys (all optional except `model` and `data`); flags override them:

```yaml
model: path/or/hub-id          # FineTuner(model)
task: classification           # FineTuner(task=...)
data: {path: reviews.csv, text: review, label: sentiment}   # DatasetBuilder.from_file(**data)
deduplicate: true              # .deduplicate() (or a dict of its arguments)
split: {validation: 0.1, test: 0.1, stratify: true, seed: 0}  # .split(**split)
preprocessor: {clean: [html, whitespace], max_length: 128}    # Preprocessor(**preprocessor)
freezer: {train_last: 2}       # LayerFreezer(**freezer)
adapter: {r: 16, alpha: 32}    # FineTuner(adapter=LoRA(**adapter)), needs finetune_lib[peft]
regularizers:                  # finetune_lib.regularizers.<Name>(...)
  - WeightDecay: 0.01
  - EarlyStopping: {monitor: validation/f1, patience: 2}
metrics: [accuracy, {f1: {average: macro}}]                  # MetricSuite([...])
training: {epochs: 4, batch_size: 16, learning_rate: 5.0e-5} # FineTuner(**training)
output_dir: runs/reviews
```

The results are printed as JSON on standard output (logs go to standard error) and written to
`<output_dir>/results.json`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .runconfig import (
    KNOWN_KEYS,
    SPLITS,
    TASKS,
    ConfigError,
    build_components,
    check_keys,
    data_args,
    load_config,
    parse_scalar,
    section,
    validate_config,
)

__all__ = ["KNOWN_KEYS", "ConfigError", "build_parser", "load_config", "main", "run_evaluate", "run_train",
           "validate_config"]


def _load_splits(config: Mapping[str, Any], split: bool) -> Any:
    from .data.builder import DatasetBuilder, Splits

    builder = DatasetBuilder.from_file(**data_args(config))
    dedup = config.get("deduplicate")
    if dedup:
        builder.deduplicate(**(dict(dedup) if isinstance(dedup, Mapping) else {}))
    if not split:
        return Splits(builder.records, dropped=dict(builder.dropped), dedup_counts=dict(builder.dedup_counts))
    splits = builder.split(**section(config, "split"))
    if config.get("remove_leakage"):
        splits = splits.remove_leakage()
    return splits


def _tuner(config: Mapping[str, Any], parts: Mapping[str, Any]) -> Any:
    from .training.finetuner import FineTuner

    return FineTuner(config["model"], task=config.get("task", "classification"), tokenizer=config.get("tokenizer"),
                     preprocessor=parts["preprocessor"], freezer=parts["freezer"], adapter=parts["adapter"],
                     regularizers=parts["regularizers"], metrics=parts["metrics"],
                     output_dir=config.get("output_dir"), **section(config, "training"))


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "nan", "inf": as in log.jsonl
    if isinstance(value, Path):
        return str(value)
    return value


def _finish(results: dict[str, Any], output_dir: Any) -> dict[str, Any]:
    results = _jsonable(results)
    if output_dir:
        path = Path(output_dir) / "results.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")
        results["results_file"] = str(path)
    return results


def run_train(config: Mapping[str, Any]) -> dict[str, Any]:
    """Train as `config` says, evaluate, save; return the results (also in `<output_dir>/results.json`).

    The steps are those of a Python script: `DatasetBuilder.from_file(**data)`, `.deduplicate()`,
    `.split(**split)`, `FineTuner(model, task, preprocessor=..., freezer=..., regularizers=...,
    metrics=..., output_dir=..., **training)`, `fit(train, validation, resume=...)`,
    `evaluate(test)`, `save(output_dir / "final")`.
    """
    validate_config(config, "train")
    parts = build_components(config)
    splits = _load_splits(config, split=True)
    log = logging.getLogger(__name__)
    log.info("data: %s", splits)
    evaluate_on = config.get("evaluate_on") or ("test" if len(splits.test) else "validation")
    if evaluate_on != "none" and not len(splits[evaluate_on]):
        raise ConfigError(f"evaluate_on={evaluate_on!r} but the {evaluate_on} split is empty; set split: "
                          f"{{{evaluate_on}: 0.1}}, or evaluate_on: none")
    tuner = _tuner(config, parts)
    tuner.fit(splits.train, splits.validation if len(splits.validation) else None,
              resume=config.get("resume") or False)
    results: dict[str, Any] = {"task": tuner.task.name, "model": str(config["model"]), "sizes": splits.sizes,
                               "steps": tuner.state.step if tuner.state is not None else 0}
    if evaluate_on != "none" and len(splits[evaluate_on]):
        results["evaluated_on"] = evaluate_on
        results["metrics"] = tuner.evaluate(splits[evaluate_on])
    output_dir = config.get("output_dir")
    if output_dir and config.get("save", True):
        results["saved_model"] = str(tuner.save(Path(output_dir) / "final"))
    return _finish(results, output_dir)


def run_evaluate(config: Mapping[str, Any]) -> dict[str, Any]:
    """Evaluate a (fine-tuned) model on the data of `config`: the whole file, or with `split` given,
    the `evaluate_on` split of it."""
    validate_config(config, "evaluate")
    parts = {**build_components(config), "adapter": None}  # a saved model is evaluated as it is
    splits = _load_splits(config, split="split" in config)
    name = "train" if "split" not in config else (config.get("evaluate_on") or "test")
    if name == "none":
        raise ConfigError("evaluate_on: none leaves nothing to evaluate")
    records = splits[name]
    if not len(records):
        raise ConfigError(f"the {name} split is empty; nothing to evaluate")
    training = {k: v for k, v in section(config, "training").items() if k != "overwrite"}
    tuner = _tuner({**config, "output_dir": None, "training": training}, parts)
    results = {"task": tuner.task.name, "model": str(config["model"]), "evaluated_on": name if "split" in config
               else "all", "size": len(records), "metrics": tuner.evaluate(records)}
    return _finish(results, config.get("output_dir"))


# --------------------------------------------------------------------------- the command line

_DATA_FLAGS = ("text", "label", "prompt", "target", "group", "tokens", "tags", "spans", "format")


def _training_fields() -> dict[str, Any]:
    """`TrainingArgs` fields and defaults, read from its source so that `--help` and config errors
    do not wait for torch to import."""
    import ast

    source = Path(__file__).with_name("training") / "args.py"
    tree = ast.parse(source.read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "TrainingArgs")
    fields: dict[str, Any] = {}
    for node in cls.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            try:
                fields[node.target.id] = ast.literal_eval(node.value) if node.value is not None else None
            except ValueError:
                fields[node.target.id] = None
    return fields


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `python -m finetune_lib`."""
    parser = argparse.ArgumentParser(prog="python -m finetune_lib",
                                     description="Fine-tune pretrained language models on your own data.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,evaluate}")
    for command, text in (("train", "fine-tune a model, evaluate it and save it"),
                          ("evaluate", "evaluate a fine-tuned model on a data file")):
        p = sub.add_parser(command, help=text, description=f"{text[0].upper()}{text[1:]}. Flags override the "
                           "config file; --set KEY=VALUE sets any config key (dotted for nested keys).")
        p.add_argument("config", nargs="?", help="a YAML or JSON config file")
        g = p.add_argument_group("model and data")
        g.add_argument("--model", help="hub id or folder of the model")
        g.add_argument("--tokenizer", help="tokenizer id or folder (default: the model's)")
        g.add_argument("--task", choices=TASKS)
        g.add_argument("--data", metavar="FILE", help="JSONL, JSON, CSV, TSV, text or Parquet file")
        for name in _DATA_FLAGS:
            g.add_argument(f"--{name}", type=_column, metavar="COLUMN" if name != "format" else "FORMAT",
                           help=f"data.{name}: " + ("the file format" if name == "format"
                                                    else f"the column holding the {name} (name or 0-based position)"))
        g.add_argument("--deduplicate", action="store_true", default=None, help="remove duplicate records")
        g.add_argument("--validation", type=_number, help="split.validation: ratio or count")
        g.add_argument("--test", type=_number, help="split.test: ratio or count")
        g.add_argument("--stratify", action="store_true", default=None, help="split.stratify: keep label shares")
        g.add_argument("--evaluate-on", choices=SPLITS)
        g = p.add_argument_group("preprocessing, freezing, regularization, metrics")
        g.add_argument("--max-length", type=int, help="preprocessor.max_length")
        g.add_argument("--clean", help="preprocessor.clean: comma-separated step names ('' for none)")
        g.add_argument("--train-last", type=int, help="freezer.train_last: train the top N blocks")
        g.add_argument("--freeze-first", type=int, help="freezer.freeze_first: freeze the first N blocks")
        g.add_argument("--regularizer", action="append", metavar="NAME[=VALUE]",
                       help="add a regularizer, e.g. weight_decay=0.01 (repeatable)")
        g.add_argument("--metric", action="append", metavar="NAME", help="add a metric, e.g. f1 (repeatable)")
        if command == "train":
            g = p.add_argument_group("training (FineTuner settings)")
            for name, default in _training_fields().items():
                g.add_argument(f"--{name.replace('_', '-')}", dest=f"training.{name}", type=parse_scalar,
                               metavar="VALUE", help=f"default {default!r}")
            g.add_argument("--device", dest="training.device", help="cpu, cuda, ... (default: cuda when available)")
            g.add_argument("--overwrite", dest="training.overwrite", action="store_true", default=None,
                           help="replace a run already in --output-dir")
            g.add_argument("--resume", nargs="?", const=True, metavar="CHECKPOINT",
                           help="continue the run in --output-dir (or from CHECKPOINT)")
            g.add_argument("--no-save", dest="save", action="store_false", default=None,
                           help="do not write <output-dir>/final")
        else:
            p.add_argument("--device", dest="training.device", help="cpu, cuda, ...")
            p.add_argument("--batch-size", dest="training.eval_batch_size", type=int, help="evaluation batch size")
        p.add_argument("--output-dir", help="run folder; results.json is written there")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="set a config key, e.g. --set training.warmup_ratio=0.1 (value read as YAML)")
        p.add_argument("--quiet", action="store_true", help="only warnings on standard error")
    return parser


def _column(text: str) -> Any:
    return int(text) if text.isdigit() else text


def _number(text: str) -> float | int:
    try:
        return int(text)
    except ValueError:
        return float(text)


def config_from_args(ns: argparse.Namespace) -> dict[str, Any]:
    """The config file (if any) with the flags applied on top."""
    config = load_config(ns.config) if ns.config else {}
    values = vars(ns)

    def put(dotted: str, value: Any) -> None:
        keys = dotted.split(".")
        node = config
        for key in keys[:-1]:
            if node.get(key) is None:
                node[key] = {}
            elif key == "data" and isinstance(node[key], (str, Path)):
                node[key] = {"path": str(node[key])}
            if not isinstance(node[key], dict):
                raise ConfigError(f"cannot set {dotted}: {key!r} is {node[key]!r}, not a mapping")
            node = node[key]
        node[keys[-1]] = value

    for flag in ("model", "tokenizer", "task", "output_dir", "resume", "save"):
        if values.get(flag) is not None:
            put(flag, values[flag])
    if values.get("evaluate_on") is not None:
        put("evaluate_on", values["evaluate_on"])
    if ns.data is not None:
        put("data.path", ns.data)
    for name in _DATA_FLAGS:
        if values.get(name) is not None:
            put(f"data.{name}", values[name])
    if ns.deduplicate:
        put("deduplicate", True)
    for name in ("validation", "test", "stratify"):
        if values.get(name) is not None:
            put(f"split.{name}", values[name])
    if ns.max_length is not None:
        put("preprocessor.max_length", ns.max_length)
    if ns.clean is not None:
        put("preprocessor.clean", [s.strip() for s in ns.clean.split(",") if s.strip()])
    for name in ("train_last", "freeze_first"):
        if values.get(name) is not None:
            put(f"freezer.{name}", values[name])
    for spec in ns.regularizer or []:
        name, _, value = spec.partition("=")
        config.setdefault("regularizers", []).append({name: parse_scalar(value)} if value else name)
    for name in ns.metric or []:
        config.setdefault("metrics", []).append(name)
    for key, value in values.items():
        if key.startswith("training.") and value is not None:
            put(key, value)
    for item in ns.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set takes KEY=VALUE (e.g. training.seed=1), got {item!r}")
        put(key.strip(), parse_scalar(value))
    return config


def _setup_logging(quiet: bool) -> None:
    logger = logging.getLogger("finetune_lib")
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)


def _user_error(err: BaseException) -> bool:
    """Errors whose message tells the user what to fix: printed without a traceback."""
    if isinstance(err, (ConfigError, FileExistsError, FileNotFoundError)):
        return True
    from .data.loaders import DataError

    return isinstance(err, DataError)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 success, 2 a configuration error)."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        config = config_from_args(ns)
        # fail on unknown keys before anything is imported or loaded
        check_keys(config, list(KNOWN_KEYS), "the config")
        _setup_logging(ns.quiet)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        results = run_train(config) if ns.command == "train" else run_evaluate(config)
    except Exception as err:
        if not _user_error(err):
            raise
        print(f"{parser.prog} {ns.command}: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
