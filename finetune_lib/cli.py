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
import inspect
import json
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["KNOWN_KEYS", "ConfigError", "build_parser", "load_config", "main", "run_evaluate", "run_train",
           "validate_config"]

KNOWN_KEYS: dict[str, str] = {
    "model": "hub id or local folder of the pretrained model (FineTuner's first argument)",
    "tokenizer": "tokenizer id or folder, when it is not the model's",
    "task": "classification (default), causal_lm or seq2seq",
    "data": "a file path, or DatasetBuilder.from_file arguments: path, text, label, prompt, target, group, "
            "format, delimiter, has_header, ...",
    "deduplicate": "true, or DatasetBuilder.deduplicate arguments: normalized, near, threshold",
    "split": "DatasetBuilder.split arguments: validation, test, stratify, group, seed",
    "remove_leakage": "true to drop validation/test records that duplicate an earlier split",
    "preprocessor": "Preprocessor arguments: clean, max_length, prompt_template, labels, ...",
    "freezer": "LayerFreezer arguments: train_last, freeze_first, unfreeze_every, lr_decay, ...",
    "regularizers": "a list of regularizer names, or {Name: value} / {Name: {argument: value}}",
    "metrics": "a list of metric names, or {name: {argument: value}}",
    "training": "FineTuner settings: epochs, batch_size, learning_rate, precision, ... and device, overwrite",
    "output_dir": "the run folder (log.jsonl, checkpoints/, final/, results.json)",
    "resume": "true to continue from the newest checkpoint in output_dir, or a checkpoint folder",
    "evaluate_on": "test, validation or none (default: test, or validation when test is empty)",
    "save": "write the fine-tuned model to <output_dir>/final (default true)",
}

TASKS = ("classification", "causal_lm", "seq2seq")
SPLITS = ("test", "validation", "none")
# FineTuner keyword arguments that may appear under `training` besides the TrainingArgs fields
TUNER_OPTIONS = ("device", "overwrite", "progress")


class ConfigError(ValueError):
    """The configuration is invalid; the message says what to change."""


# --------------------------------------------------------------------------- reading a config


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML (`.yaml`/`.yml`) or JSON config file into a dict."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            config = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path} is not valid JSON: {err}") from None
    else:
        yaml = _yaml()
        try:
            config = yaml.load(text, Loader=_loader())
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise ConfigError(f"{path} must hold a mapping of keys ({', '.join(KNOWN_KEYS)}), "
                          f"not a {type(config).__name__}")
    return config


def _yaml() -> Any:
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - pyyaml comes with transformers
        raise ConfigError("YAML configs need PyYAML: pip install pyyaml (or write the config as .json)") from None
    return yaml


_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


def _loader() -> Any:
    """PyYAML's safe loader, reading `5e-5` as a float as YAML 1.2 does (PyYAML alone wants `5.0e-5`)."""
    yaml = _yaml()

    Loader: Any = type("Loader", (yaml.SafeLoader,), {})
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))
    return Loader


def _scalar(text: str) -> Any:
    """A command-line value as YAML reads it: 3 -> int, 0.1 -> float, true -> bool, null -> None,
    [a, b] -> list, {k: v} -> dict; anything else stays a string."""
    try:
        return _yaml().load(text, Loader=_loader())
    except Exception:
        return text


# --------------------------------------------------------------------------- validation


def _check_keys(given: Mapping[str, Any], known: Sequence[str], where: str) -> None:
    unknown = [k for k in given if k not in known]
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(map(repr, unknown))} in {where}; known keys: "
                          f"{', '.join(known)}")


def _params(fn: Callable[..., Any], skip: Sequence[str] = ()) -> list[str]:
    return [n for n, p in inspect.signature(fn).parameters.items()
            if n not in ("self", "cls", *skip) and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _mapping(config: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = config.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key!r} must be a mapping of arguments, e.g. {key}: {{...}}; got {value!r}")
    return dict(value)


def _bind(fn: Callable[..., Any], where: str, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None,
          skip: Sequence[str] = ()) -> None:
    kwargs = dict(kwargs or {})
    _check_keys(kwargs, _params(fn, skip), where)
    try:
        inspect.signature(fn).bind(*((None,) * len(skip)), *args, **kwargs)
    except TypeError as err:
        raise ConfigError(f"{where}: {err}") from None


def validate_config(config: Mapping[str, Any], command: str = "train") -> None:
    """Check every key and argument of `config` against the Python API, before anything is loaded.

    Raises:
        ConfigError: an unknown key (the message lists the known ones), a missing `model` or `data`,
            or arguments that a class does not take.
    """
    _check_keys(config, list(KNOWN_KEYS), "the config")
    for key in ("model", "data"):
        if config.get(key) in (None, ""):
            raise ConfigError(f"the config has no {key!r}; give it in the config file or as --{key}")
    task = config.get("task", "classification")
    if task not in TASKS:
        raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    evaluate_on = config.get("evaluate_on")
    if evaluate_on is not None and evaluate_on not in SPLITS:
        raise ConfigError(f"evaluate_on must be one of {', '.join(SPLITS)}, got {evaluate_on!r}")

    from .data.builder import DatasetBuilder

    data = _data_args(config)
    _bind(DatasetBuilder.from_file, "data", kwargs=data)
    if isinstance(config.get("deduplicate"), Mapping):
        _bind(DatasetBuilder.deduplicate, "deduplicate", kwargs=config["deduplicate"], skip=("self",))
    elif not isinstance(config.get("deduplicate", False), bool):
        raise ConfigError(f"deduplicate must be true/false or a mapping of arguments, got {config['deduplicate']!r}")
    _bind(DatasetBuilder.split, "split", kwargs=_mapping(config, "split"), skip=("self",))
    _check_training(_mapping(config, "training"))


def _data_args(config: Mapping[str, Any]) -> dict[str, Any]:
    data = config.get("data")
    if isinstance(data, (str, Path)):
        return {"path": str(data)}
    if not isinstance(data, Mapping):
        raise ConfigError(f"data must be a file path or a mapping with 'path', got {data!r}")
    data = dict(data)
    if "path" not in data:
        raise ConfigError("data needs a 'path' (the file to load), e.g. data: {path: train.jsonl, text: text}")
    return data


def _check_training(training: Mapping[str, Any]) -> None:
    from .training.args import TrainingArgs

    fields = list(TrainingArgs.__dataclass_fields__)
    _check_keys(training, fields + list(TUNER_OPTIONS), "training")
    args = TrainingArgs(**{k: v for k, v in training.items() if k in fields})
    try:
        args.validate()
    except ValueError as err:
        raise ConfigError(f"training: {err}") from None


# --------------------------------------------------------------------------- building the objects


def _registry(module: Any, base: type) -> dict[str, type]:
    """Classes of `module.__all__` deriving from `base`, by normalized class name and `name` attribute."""
    found: dict[str, type] = {}
    for attr in module.__all__:
        obj = getattr(module, attr)
        if isinstance(obj, type) and issubclass(obj, base) and obj is not base:
            found[_norm(obj.__name__)] = obj
            found.setdefault(_norm(str(getattr(obj, "name", ""))), obj)
    found.pop("", None)
    return found


def _norm(name: str) -> str:
    return name.replace("_", "").replace("-", "").lower()


def _build(spec: Any, registry: Mapping[str, type], kind: str) -> Any:
    """One object from `Name`, `{Name: value}`, `{Name: [args]}` or `{Name: {argument: value}}`."""
    if isinstance(spec, str):
        name, value = spec, None
    elif isinstance(spec, Mapping) and len(spec) == 1:
        name, value = next(iter(spec.items()))
    else:
        raise ConfigError(f"each of {kind} is a name or a one-key mapping {{Name: arguments}}, got {spec!r}")
    cls = registry.get(_norm(str(name)))
    if cls is None:
        names = sorted({c.__name__ for c in registry.values()})
        raise ConfigError(f"unknown {kind[:-1]} {name!r}; known: {', '.join(names)}")
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    if isinstance(value, Mapping):
        kwargs = dict(value)
    elif isinstance(value, list):
        args = value
    elif value is not None:
        args = [value]
    where = f"{kind[:-1]} {cls.__name__}"
    if not any(p.kind == p.VAR_KEYWORD for p in inspect.signature(cls).parameters.values()):
        _bind(cls, where, args, kwargs)
    try:
        return cls(*args, **kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from None


def _construct(cls: type, kwargs: Mapping[str, Any], where: str) -> Any:
    _bind(cls, where, kwargs=kwargs)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from None


def build_components(config: Mapping[str, Any]) -> dict[str, Any]:
    """The Preprocessor, LayerFreezer, regularizers and MetricSuite a config describes (no data or model)."""
    from . import metrics as metrics_module
    from . import regularizers as regularizers_module
    from .data.preprocessor import Preprocessor
    from .freezing import LayerFreezer
    from .metrics import Metric, MetricSuite
    from .regularizers import Regularizer

    out: dict[str, Any] = {"preprocessor": _construct(Preprocessor, _mapping(config, "preprocessor"), "preprocessor")}
    freezer = config.get("freezer")
    out["freezer"] = _construct(LayerFreezer, _mapping(config, "freezer"), "freezer") if freezer else None
    regs = config.get("regularizers") or []
    if not isinstance(regs, list):
        raise ConfigError(f"regularizers must be a list, e.g. [WeightDecay: 0.01], got {regs!r}")
    registry = _registry(regularizers_module, Regularizer)
    out["regularizers"] = [_build(spec, registry, "regularizers") for spec in regs]
    mets = config.get("metrics")
    if mets is None:
        out["metrics"] = None
    else:
        if not isinstance(mets, list) or not mets:
            raise ConfigError(f"metrics must be a non-empty list, e.g. [accuracy, f1], got {mets!r}")
        registry = _registry(metrics_module, Metric)
        built = [_build(spec, registry, "metrics") for spec in mets]
        try:
            out["metrics"] = MetricSuite(built)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"metrics: {err}") from None
    return out


# --------------------------------------------------------------------------- running


def _load_splits(config: Mapping[str, Any], split: bool) -> Any:
    from .data.builder import DatasetBuilder, Splits

    builder = DatasetBuilder.from_file(**_data_args(config))
    dedup = config.get("deduplicate")
    if dedup:
        builder.deduplicate(**(dict(dedup) if isinstance(dedup, Mapping) else {}))
    if not split:
        return Splits(builder.records, dropped=dict(builder.dropped), dedup_counts=dict(builder.dedup_counts))
    splits = builder.split(**_mapping(config, "split"))
    if config.get("remove_leakage"):
        splits = splits.remove_leakage()
    return splits


def _tuner(config: Mapping[str, Any], parts: Mapping[str, Any]) -> Any:
    from .training.finetuner import FineTuner

    return FineTuner(config["model"], task=config.get("task", "classification"), tokenizer=config.get("tokenizer"),
                     preprocessor=parts["preprocessor"], freezer=parts["freezer"],
                     regularizers=parts["regularizers"], metrics=parts["metrics"],
                     output_dir=config.get("output_dir"), **_mapping(config, "training"))


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
    log = logging.getLogger("finetune_lib")
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
    parts = build_components(config)
    splits = _load_splits(config, split="split" in config)
    name = "train" if "split" not in config else (config.get("evaluate_on") or "test")
    if name == "none":
        raise ConfigError("evaluate_on: none leaves nothing to evaluate")
    records = splits[name]
    if not len(records):
        raise ConfigError(f"the {name} split is empty; nothing to evaluate")
    training = {k: v for k, v in _mapping(config, "training").items() if k != "overwrite"}
    tuner = _tuner({**config, "output_dir": None, "training": training}, parts)
    results = {"task": tuner.task.name, "model": str(config["model"]), "evaluated_on": name if "split" in config
               else "all", "size": len(records), "metrics": tuner.evaluate(records)}
    return _finish(results, config.get("output_dir"))


# --------------------------------------------------------------------------- the command line

_DATA_FLAGS = ("text", "label", "prompt", "target", "group", "format")


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
                g.add_argument(f"--{name.replace('_', '-')}", dest=f"training.{name}", type=_scalar,
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
        config.setdefault("regularizers", []).append({name: _scalar(value)} if value else name)
    for name in ns.metric or []:
        config.setdefault("metrics", []).append(name)
    for key, value in values.items():
        if key.startswith("training.") and value is not None:
            put(key, value)
    for item in ns.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set takes KEY=VALUE (e.g. training.seed=1), got {item!r}")
        put(key.strip(), _scalar(value))
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
        _check_keys(config, list(KNOWN_KEYS), "the config")
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
