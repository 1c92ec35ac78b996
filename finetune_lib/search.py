"""`hyperparameter_search`: try settings of a `FineTuner` with Optuna, pruning bad trials early.

Optuna is an optional dependency (``pip install 'finetune_lib[optuna]'``), imported when a search
starts. Each trial calls your `build` with the values it picked, trains the `FineTuner` it returns on
`train` and scores it with `evaluate(validation)`. A trial is pruned at an evaluation during `fit`
(the `Callback` here reports the metric to optuna at `eval_end` and, when the pruner says so, ends
training through `TrainState.should_stop`, the documented way to stop a run).

Example:
    >>> def build(learning_rate, train_last):
    ...     return FineTuner("path/to/model", freezer=LayerFreezer(train_last=train_last),
    ...                      learning_rate=learning_rate, epochs=2, eval_every=20, progress=False)
    >>> study = hyperparameter_search(build, splits.train, splits.validation,
    ...                               {"learning_rate": (1e-5, 1e-3, "log"), "train_last": [1, 2, 4]},
    ...                               n_trials=8, metric="accuracy")
    >>> study.best_params, study.best_value
    ({'learning_rate': 0.00031, 'train_last': 2}, 0.91)
"""

from __future__ import annotations

import gc
import logging
import os
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .events import Callback, TrainState
from .search_space import check_build, check_space

if TYPE_CHECKING:  # pragma: no cover
    import optuna

    from .training.finetuner import FineTuner

__all__ = ["hyperparameter_search"]

log = logging.getLogger(__name__)

#: the study name used with `storage` when none is given, so a second call finds the first one's trials
DEFAULT_STUDY_NAME = "finetune_lib-search"
_COUNTED = ("COMPLETE", "PRUNED")  # the trials that count toward n_trials (a failed one is run again)


def _import_optuna() -> Any:
    try:
        import optuna
    except ImportError as error:
        raise ImportError("hyperparameter_search needs optuna: pip install 'finetune_lib[optuna]' "
                          "(or pip install 'optuna>=3.4').") from error
    return optuna


class _TrialReporter(Callback):
    """Reports `metric` to the optuna trial at each evaluation during `fit`; stops the run when the
    pruner says the trial is worse than the others were at that step."""

    def __init__(self, trial: Any, metric: str):
        self.trial, self.key = trial, f"validation/{metric}"
        self.pruned_step: int | None = None

    def on_eval_end(self, state: TrainState) -> None:
        record = state.record or {}
        if self.key not in record:
            if any(str(k).startswith("validation/") for k in record):
                names = sorted(str(k)[len("validation/"):] for k in record if str(k).startswith("validation/"))
                raise ValueError(f"metric {self.key[len('validation/'):]!r} is not among the evaluation results; "
                                 f"choose one of {', '.join(map(repr, names))}.")
            return
        self.trial.report(float(record[self.key]), state.step)
        if self.trial.should_prune():
            self.pruned_step = state.step
            state.should_stop = True  # fit ends after this step, releasing its run folder as usual


def _metric_key(metric: str) -> str:
    if not isinstance(metric, str) or not metric:
        raise ValueError(f"metric must be the name of an evaluation result, e.g. 'accuracy' or 'loss'; got {metric!r}.")
    split, _, name = metric.rpartition("/")
    if split not in ("", "validation") or not name:
        raise ValueError(f"metric {metric!r}: trials are scored on the validation data; write the result's "
                         f"name, e.g. 'accuracy' or 'validation/accuracy'.")
    return name


def _direction(direction: str | None, metric: str) -> str:
    if direction is None:
        from .regularizers.early_stopping import infer_mode

        return "minimize" if infer_mode(metric) == "min" else "maximize"
    if direction not in ("maximize", "minimize"):
        raise ValueError(f"direction must be 'maximize' or 'minimize' (or None: 'minimize' for losses, "
                         f"perplexity and error rates, else 'maximize'); got {direction!r}.")
    return direction


def _storage_url(storage: str | os.PathLike[str] | None) -> str | None:
    """A local path becomes a SQLite URL (its folder created); a URL (``"sqlite:///..."``,
    ``"postgresql://..."``) is used as it is."""
    if storage is None:
        return None
    text = os.fspath(storage)
    if "://" in text:
        return text
    path = Path(text).expanduser().resolve()
    if path.is_dir():
        raise ValueError(f"storage {text!r} is a folder; give a file path such as {str(path / 'study.db')!r}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def _trials_so_far(optuna: Any, url: str | None, name: str | None) -> int:
    if url is None or name not in optuna.get_all_study_names(storage=url):
        return 0
    return len(optuna.load_study(study_name=name, storage=url).trials)


def _check_resumed(study: Any, direction: str, metric: str) -> None:
    if study.direction.name.lower() != direction:
        raise ValueError(f"study {study.study_name!r} in this storage {study.direction.name.lower()}s; this call "
                         f"asks to {direction}. Use the same direction, or another study_name to start anew.")
    stored = study.user_attrs.get("metric")
    if stored is not None and stored != metric:
        raise ValueError(f"study {study.study_name!r} in this storage scores {stored!r}; this call asks for "
                         f"{metric!r}. Use the same metric, or another study_name to start anew.")


def hyperparameter_search(build: Callable[..., FineTuner], train: Any, validation: Any, space: Mapping[str, Any],
                          n_trials: int, metric: str = "loss", direction: str | None = None, *,
                          pruning: bool = True, pruner: Any = None, sampler: Any = None, seed: int = 0,
                          storage: str | os.PathLike[str] | None = None, study_name: str | None = None,
                          output_dir: str | os.PathLike[str] | None = None, timeout: float | None = None,
                          plot: bool = True) -> optuna.Study:
    """Search the settings of a `FineTuner` with Optuna; returns the study (`best_params`, `best_value`).

    Args:
        build: a function taking the space's parameters by name and returning a new `FineTuner` (with a
            freshly loaded model: pass a path, or build the model inside). When it has an `output_dir`
            parameter and the search an `output_dir`, it gets ``<output_dir>/trial-<n>``; otherwise the
            trials keep their runs in memory (or wherever `build` puts them, one folder per trial).
        train: the training records of every trial.
        validation: the records each trial is evaluated on, during `fit` (for pruning) and after it.
        space: parameter name -> ``(low, high)`` (a float; an int when both are ints),
            ``(low, high, "log")`` (log scale), ``[a, b, c]`` (a choice) or a fixed value. A key
            `build` does not take, or a parameter `build` needs that the space lacks, is refused
            before any trial.
        n_trials: the trials the study should hold when the call returns: completed and pruned ones
            count, including those of earlier calls on the same `storage` and `study_name`.
        metric: the evaluation result to optimize, e.g. "accuracy", "f1" or "loss" (with or
            without "validation/"). A name the evaluation does not give fails at the first
            evaluation, naming those it does give.
        direction: "maximize" or "minimize"; None infers it from `metric` (losses, perplexity and
            error rates are minimized, everything else maximized).
        pruning: stop unpromising trials at an evaluation during `fit` (optuna's `MedianPruner` unless
            `pruner` is given). Needs evaluations during `fit`: set `eval_every` in `build`.
        pruner: an optuna pruner instead of the default (e.g. `optuna.pruners.ThresholdPruner`).
        sampler: an optuna sampler instead of the default `TPESampler` seeded with `seed`, which picks at
            random for the first half of `n_trials` (at most 10, at least 2) and models the results after.
        seed: the sampler's seed. A resumed search seeds it with ``seed + trials already in the
            study``, so it does not repeat the first trials' choices. Each trial's `FineTuner` keeps
            its own `seed` setting.
        storage: a file path for a SQLite database (e.g. "runs/search/study.db") or an SQLAlchemy
            URL. With it the study survives the process: a second call with the same `study_name`
            continues it and runs only the trials missing to reach `n_trials`.
        study_name: the study's name in `storage` (default "finetune_lib-search").
        output_dir: where `search.json` (every trial: params, value, state, evaluations) and
            `search.png` go, and the trials' folders when `build` takes `output_dir`.
        timeout: stop starting new trials after this many seconds.
        plot: write `search.png` (needs matplotlib; skipped with a log line without it).

    Returns:
        The `optuna.Study`: `best_params` are `build`'s arguments (fixed values included) for the best
        `best_value`, and `trials` holds every trial with its state (COMPLETE, PRUNED, FAIL).

    Raises:
        ImportError: optuna is not installed (before anything runs).
        ValueError: a space, metric, direction or `build` signature that cannot work (before any trial).

    Example:
        >>> study = hyperparameter_search(build, train, validation, {"learning_rate": (1e-5, 1e-3, "log")},
        ...                               n_trials=6, metric="f1", storage="runs/search/study.db")
        >>> tuner = build(**study.best_params)   # train the best settings again, e.g. on train + validation
    """
    optuna = _import_optuna()
    # 1. check everything before the first trial: the space, build's parameters, the metric, the run
    specs = check_space(space)
    gives_output_dir = check_build(build, list(specs), output_dir is not None)
    key = _metric_key(metric)
    direction = _direction(direction, key)
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise ValueError(f"n_trials must be a positive integer, got {n_trials!r}.")
    if validation is None:
        raise ValueError("hyperparameter_search scores trials on `validation`: give validation records.")
    if not pruning and pruner is not None:
        raise ValueError("pruning=False with a pruner: drop the pruner, or set pruning=True.")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RuntimeError("hyperparameter_search runs in one process; start it without torchrun.")
    out = Path(output_dir) if output_dir is not None else None
    # 2. the study: new, or continued from `storage`, with a seeded sampler and the pruner
    url = _storage_url(storage)
    name = study_name or (DEFAULT_STUDY_NAME if url is not None else None)
    earlier = _trials_so_far(optuna, url, name)
    if sampler is None:
        sampler = optuna.samplers.TPESampler(seed=seed + earlier, n_startup_trials=min(10, max(2, n_trials // 2)))
    if pruner is None:
        pruner = optuna.pruners.MedianPruner() if pruning else optuna.pruners.NopPruner()
    study = optuna.create_study(storage=url, study_name=name, direction=direction, sampler=sampler, pruner=pruner,
                                load_if_exists=True)
    _check_resumed(study, direction, key)
    study.set_user_attr("metric", key)
    done = sum(t.state.name in _COUNTED for t in study.trials)
    remaining = max(0, n_trials - done)
    if done:
        log.info("study %r already holds %d finished trials; running %d more (n_trials=%d)", name, done,
                 remaining, n_trials)
    # 3. the trials; each one's FineTuner is dropped (and memory collected) before the next starts
    objective = _Objective(build, specs, key, train, validation, out if gives_output_dir else None)
    from .search_plot import write_search_outputs

    def after_trial(study: Any, trial: Any) -> None:
        if out is not None:  # search.json stays current, so an interrupted search still has its summary
            write_search_outputs(study, key, out, plot=False)

    try:
        if remaining:
            study.optimize(objective, n_trials=remaining, timeout=timeout, callbacks=[after_trial])
    finally:
        if out is not None:
            write_search_outputs(study, key, out, plot=plot)
    if any(t.state.name == "COMPLETE" for t in study.trials):
        log.info("best trial %d: %s = %.6g with %s", study.best_trial.number, key, study.best_value,
                 study.best_params)
    else:
        log.warning("no trial of study %r completed (all pruned or failed): study.best_params is not available.",
                    name)
    return study


class _Objective:
    """One trial: build with the trial's values, fit with pruning, evaluate on validation."""

    def __init__(self, build: Callable[..., Any], specs: dict[str, Any], metric: str, train: Any, validation: Any,
                 output_dir: Path | None):
        self.build, self.specs, self.metric = build, specs, metric
        self.train, self.validation, self.output_dir = train, validation, output_dir
        self.models: weakref.WeakSet[Any] = weakref.WeakSet()  # model objects of earlier trials
        self.run_dirs: set[Path] = set()

    def __call__(self, trial: Any) -> float:
        params = {name: spec.suggest(trial, name) for name, spec in self.specs.items()}
        kwargs = dict(params)
        if self.output_dir is not None:
            kwargs["output_dir"] = self.output_dir / f"trial-{trial.number}"
        tuner = self.build(**kwargs)
        try:
            self._check(tuner, trial)
            reporter = _TrialReporter(trial, self.metric)
            tuner.user_callbacks.append(reporter)  # FineTuner's callbacks list, read when fit starts
            tuner.fit(self.train, self.validation)
            if reporter.pruned_step is not None:
                import optuna

                raise optuna.TrialPruned(f"pruned at step {reporter.pruned_step}")
            results = tuner.evaluate(self.validation)
            if self.metric not in results:
                raise ValueError(f"metric {self.metric!r} is not among the evaluation results; choose one of "
                                 f"{', '.join(map(repr, sorted(results)))}.")
            trial.set_user_attr("results", {k: float(v) for k, v in results.items()
                                            if isinstance(v, (int, float)) and not isinstance(v, bool)})
            return float(results[self.metric])
        finally:
            tuner = None  # noqa: F841 - the model, optimizer and data go before the next trial starts
            gc.collect()
            _empty_accelerator_cache()

    def _check(self, tuner: Any, trial: Any) -> None:
        from .training.finetuner import FineTuner

        if not isinstance(tuner, FineTuner):
            raise TypeError(f"build must return a FineTuner, got {type(tuner).__name__}.")
        source = tuner.model_source
        if hasattr(source, "parameters"):  # a model object: it must be a new one, or trials train on each other
            if source in self.models:
                raise ValueError("build returned a FineTuner over the same model object as an earlier trial, "
                                 "which would continue that trial's training. Create the model inside build "
                                 "(or pass FineTuner a path or hub id).")
            self.models.add(source)
        if tuner.output_dir is not None:
            run_dir = tuner.output_dir.resolve()
            if run_dir in self.run_dirs:
                raise ValueError(f"build gave trial {trial.number} the output_dir of an earlier trial ({run_dir}). "
                                 f"Give build an `output_dir` parameter and pass it to FineTuner: the search then "
                                 f"gives each trial <output_dir>/trial-<n>.")
            self.run_dirs.add(run_dir)
            trial.set_user_attr("output_dir", str(tuner.output_dir))


def _empty_accelerator_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
