"""A run described as a config (a YAML/JSON file, or flags): its keys, loading, validation, and the
library objects it builds. `finetune_lib.cli` runs it; see that module for the format."""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

KNOWN_KEYS: dict[str, str] = {
    "model": "hub id or local folder of the pretrained model (FineTuner's first argument)",
    "tokenizer": "tokenizer id or folder, when it is not the model's",
    "task": "classification (default), causal_lm, seq2seq, multilabel_classification (label: a list of names) or "
            "regression (label: a number), token_classification (tokens and tags, or text and spans)",
    "data": "a file path, or DatasetBuilder.from_file arguments: path, text, label, prompt, target, group, "
            "tokens, tags, spans, format, delimiter, has_header, ...",
    "deduplicate": "true, or DatasetBuilder.deduplicate arguments: normalized, near, threshold",
    "split": "DatasetBuilder.split arguments: validation, test, stratify, group, seed",
    "remove_leakage": "true to drop validation/test records that duplicate an earlier split",
    "preprocessor": "Preprocessor arguments: clean, max_length, prompt_template, labels, ...",
    "freezer": "LayerFreezer arguments: train_last, freeze_first, unfreeze_every, lr_decay, ...",
    "adapter": "LoRA adapter arguments (finetune_lib.adapters.LoRA): r, alpha, dropout, target_modules, ...",
    "regularizers": "a list of regularizer names, or {Name: value} / {Name: {argument: value}}",
    "metrics": "a list of metric names, or {name: {argument: value}}",
    "training": "FineTuner settings: epochs, batch_size, learning_rate, precision, ... and device, overwrite, "
                "loggers",
    "output_dir": "the run folder (log.jsonl, checkpoints/, final/, results.json)",
    "resume": "true to continue from the newest checkpoint in output_dir, or a checkpoint folder",
    "evaluate_on": "test, validation or none (default: test, or validation when test is empty)",
    "save": "write the fine-tuned model to <output_dir>/final (default true)",
}

TASKS = ("classification", "causal_lm", "seq2seq")
TASKS += ("multilabel_classification", "regression")  # text and a list of labels / a number (sequence_tasks.py)
TASKS += ("token_classification",)  # words and one tag per word, or a text and its spans (token_task.py)
SPLITS = ("test", "validation", "none")
# FineTuner keyword arguments that may appear under `training` besides the TrainingArgs fields
TUNER_OPTIONS = ("device", "overwrite", "progress", "loggers")


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


def parse_scalar(text: str) -> Any:
    """A command-line value as YAML reads it: 3 -> int, 0.1 -> float, true -> bool, null -> None,
    [a, b] -> list, {k: v} -> dict; anything else stays a string."""
    try:
        return _yaml().load(text, Loader=_loader())
    except Exception:
        return text


# --------------------------------------------------------------------------- validation


def check_keys(given: Mapping[str, Any], known: Sequence[str], where: str) -> None:
    unknown = [k for k in given if k not in known]
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(map(repr, unknown))} in {where}; known keys: "
                          f"{', '.join(known)}")


def _params(fn: Callable[..., Any], skip: Sequence[str] = ()) -> list[str]:
    return [n for n, p in inspect.signature(fn).parameters.items()
            if n not in ("self", "cls", *skip) and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def section(config: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = config.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key!r} must be a mapping of arguments, e.g. {key}: {{...}}; got {value!r}")
    return dict(value)


def _bind(fn: Callable[..., Any], where: str, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None,
          skip: Sequence[str] = ()) -> None:
    kwargs = dict(kwargs or {})
    check_keys(kwargs, _params(fn, skip), where)
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
    check_keys(config, list(KNOWN_KEYS), "the config")
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

    data = data_args(config)
    _bind(DatasetBuilder.from_file, "data", kwargs=data)
    if isinstance(config.get("deduplicate"), Mapping):
        _bind(DatasetBuilder.deduplicate, "deduplicate", kwargs=config["deduplicate"], skip=("self",))
    elif not isinstance(config.get("deduplicate", False), bool):
        raise ConfigError(f"deduplicate must be true/false or a mapping of arguments, got {config['deduplicate']!r}")
    _bind(DatasetBuilder.split, "split", kwargs=section(config, "split"), skip=("self",))
    _check_training(section(config, "training"), task, config.get("adapter"))


def data_args(config: Mapping[str, Any]) -> dict[str, Any]:
    data = config.get("data")
    if isinstance(data, (str, Path)):
        return {"path": str(data)}
    if not isinstance(data, Mapping):
        raise ConfigError(f"data must be a file path or a mapping with 'path', got {data!r}")
    data = dict(data)
    if "path" not in data:
        raise ConfigError("data needs a 'path' (the file to load), e.g. data: {path: train.jsonl, text: text}")
    return data


def _check_training(training: Mapping[str, Any], task: str = "classification", adapter: Any = None) -> None:
    from .tasks import get_task
    from .training.args import REMOVED_SETTINGS, TrainingArgs
    from .training.task_settings import check_task_settings

    moved = [f"{k}: {REMOVED_SETTINGS[k]}" for k in training if k in REMOVED_SETTINGS]
    if moved:
        raise ConfigError("training: key(s) no longer taken (see CHANGELOG.md):\n  " + "\n  ".join(moved))
    fields = list(TrainingArgs.__dataclass_fields__)
    check_keys(training, fields + list(TUNER_OPTIONS), "training")
    if "loggers" in training:
        _check_loggers(training["loggers"])
    args = TrainingArgs(**{k: v for k, v in training.items() if k in fields})
    try:
        args.validate()
        check_task_settings(get_task(task), args, adapter)  # e.g. class_weights with a task without classes
    except ValueError as err:
        raise ConfigError(f"training: {err}") from None


def _check_loggers(names: Any) -> None:
    """`training: {loggers: [jsonl, csv, mlflow]}`: known names, and their packages installed."""
    from .training.loggers import LOGGERS, make_loggers

    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"training: loggers must be a list of names from {', '.join(LOGGERS)}, e.g. "
                          f"[jsonl, mlflow]; got {names!r}")
    try:
        make_loggers(names, None)  # unknown names and missing packages (wandb, mlflow) fail here
    except (ValueError, ImportError) as err:
        raise ConfigError(f"training: loggers: {err}") from None


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


def _adapter(config: Mapping[str, Any]) -> Any:
    """The LoRA adapter of `adapter: {r: 16, alpha: 32, ...}` (`adapter: true` for LoRA's defaults), or None."""
    spec = config.get("adapter")
    if spec is None or spec is False:
        return None
    if spec is True:
        spec = {}
    if isinstance(spec, Mapping) and len(spec) == 1 and _norm(str(next(iter(spec)))) == "lora":
        spec = next(iter(spec.values())) or {}  # adapter: {LoRA: {r: 8}} reads the same as adapter: {r: 8}
    if not isinstance(spec, Mapping):
        raise ConfigError(f"adapter must be a mapping of LoRA arguments, e.g. adapter: {{r: 16, alpha: 32}}, "
                          f"or true for the defaults; got {spec!r}")
    from .adapters import LoRA, require_peft

    adapter = _construct(LoRA, spec, "adapter")
    require_peft()  # before any data is read
    return adapter


def build_components(config: Mapping[str, Any]) -> dict[str, Any]:
    """The Preprocessor, LayerFreezer, LoRA adapter, regularizers and MetricSuite a config describes (no
    data or model)."""
    from . import metrics as metrics_module
    from . import regularizers as regularizers_module
    from .data.preprocessor import Preprocessor
    from .freezing import LayerFreezer
    from .metrics import Metric, MetricSuite
    from .regularizers import Regularizer

    out: dict[str, Any] = {"preprocessor": _construct(Preprocessor, section(config, "preprocessor"), "preprocessor")}
    freezer = config.get("freezer")
    out["freezer"] = _construct(LayerFreezer, section(config, "freezer"), "freezer") if freezer else None
    out["adapter"] = _adapter(config)
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
