"""The quickstart, end to end (run by tests/docs with a tiny model)."""
# ruff: noqa: E402  (the code shown on the page imports at the start of its section)

import json
from pathlib import Path

from _setup import model_path, tiny

from finetune_lib.demo.data import generate

Path("data").mkdir(exist_ok=True)
with open("data/support.jsonl", "w") as f:  # 5 intents of customer-support messages
    for record in generate(n=200 if tiny() else 1200, seed=0):
        f.write(json.dumps(record) + "\n")
MODEL = model_path()
EPOCHS = 1 if tiny() else 3

# --8<-- [start:main]
from finetune_lib import DatasetBuilder, FineTuner, LayerFreezer, MetricSuite, Preprocessor
from finetune_lib.metrics import F1, Accuracy
from finetune_lib.regularizers import Dropout, EarlyStopping, WeightDecay

# 1. load, drop duplicates, split (stratified by label, seeded)
splits = (DatasetBuilder.from_file("data/support.jsonl", text="text", label="label")
          .deduplicate()
          .split(validation=0.1, test=0.15, stratify=True, seed=0))
print(splits, splits.dedup_counts)

# 2. assemble the run: cleaning, freezing, regularizers, metrics, settings
tuner = FineTuner(
    MODEL, task="classification",                 # a hub id or a local folder
    preprocessor=Preprocessor(clean=["unicode", "html", "urls", "whitespace"], max_length=64),
    freezer=LayerFreezer(train_last=2),           # train the top 2 blocks and the head
    regularizers=[WeightDecay(0.01), Dropout(0.1), EarlyStopping(monitor="validation/f1", patience=2)],
    metrics=MetricSuite([Accuracy(), F1(average="macro")]),
    epochs=EPOCHS, batch_size=16, learning_rate=2e-4, output_dir="runs/quickstart", overwrite=True,
)

# 3. train, evaluate on the held-out test split, predict, save
tuner.fit(splits.train, splits.validation)
print(tuner.evaluate(splits.test))                # {'loss': ..., 'accuracy': ..., 'f1': ...}
print(tuner.predict(["I was billed twice for my earbuds"]))   # [{'label': ..., 'score': ...}]
tuner.save("runs/quickstart/final")               # loadable by transformers' Auto classes
# --8<-- [end:main]
