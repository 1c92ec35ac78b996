"""Hyperparameter search with Optuna (run by tests/docs with a tiny model and 3 short trials)."""
# ruff: noqa: E402  (the code shown on the page imports at the start of its section)

from _setup import model_path, tiny

from finetune_lib.demo.data import generate

records = generate(n=150 if tiny() else 1200, seed=0)   # customer-support messages, 5 intents
MODEL = model_path()
EPOCHS, TRIALS = (1, 3) if tiny() else (3, 12)

# --8<-- [start:main]
from finetune_lib import DatasetBuilder, FineTuner, LayerFreezer, Preprocessor, hyperparameter_search

splits = DatasetBuilder.from_records(records, text="text", label="label").split(
    validation=0.15, test=0.15, stratify=True, seed=0)


def build(learning_rate, train_last, output_dir):       # the space's keys, plus the trial's folder
    return FineTuner(MODEL, task="classification", preprocessor=Preprocessor(max_length=64),
                     freezer=LayerFreezer(train_last=train_last), learning_rate=learning_rate,
                     epochs=EPOCHS, batch_size=16, eval_every=10,   # evaluations during fit: pruning points
                     save_every=10_000, output_dir=output_dir, progress=False)  # no checkpoints per trial


study = hyperparameter_search(
    build, splits.train, splits.validation,
    space={"learning_rate": (1e-5, 1e-3, "log"), "train_last": [1, 2, 4]},
    n_trials=TRIALS, metric="f1",                    # maximized (a loss would be minimized)
    seed=0, output_dir="runs/search",                # search.json, search.png, trial-0/, trial-1/, ...
    storage="runs/search/study.db",                  # run it again: it continues, up to n_trials
)
print(study.best_params, study.best_value)

# train the best settings once more, and score them on the test split nobody tuned on
tuner = build(**study.best_params, output_dir="runs/search/best")
tuner.fit(splits.train, splits.validation)
print(tuner.evaluate(splits.test))
# --8<-- [end:main]
assert len(study.trials) == TRIALS
