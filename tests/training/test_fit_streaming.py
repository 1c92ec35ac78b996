"""FineTuner on a stream (a JSON Lines file read with datasets' streaming): max_steps, epochs as passes
over the stream, and an exact resume from the saved data position."""

from __future__ import annotations

import json

import pytest
import torch

datasets = pytest.importorskip("datasets")

from finetune_lib import DatasetBuilder, FineTuner  # noqa: E402
from finetune_lib.data.streaming import StreamingRecords  # noqa: E402
from finetune_lib.testing import StopAt  # noqa: E402

from .helpers import classification_records, generation_records, model_and_tokenizer  # noqa: E402


def jsonl_stream(tmp_path, records, buffer_size=16):
    path = tmp_path / "train.jsonl"
    if not path.exists():
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    ds = datasets.load_dataset("json", data_files=str(path), split="train", streaming=True)
    return StreamingRecords(ds, buffer_size=buffer_size)


def make(arch, task, out, callbacks=(), **kw):
    model, tok = model_and_tokenizer(arch, task, dropout=0.1, **({"num_labels": 2} if task == "classification" else {}))
    settings = dict(max_steps=9, batch_size=8, gradient_accumulation=2, learning_rate=2e-3, log_every=1,
                    warmup_steps=2, progress=False, save_every=1, keep_checkpoints=2)
    settings.update(kw)
    return FineTuner(model, task, tokenizer=tok, output_dir=out, callbacks=list(callbacks), **settings)


def losses(history):
    return [(r["step"], r["train/loss"]) for r in history if "train/loss" in r]


def test_trains_max_steps_over_passes_of_the_stream(tmp_path):
    train = jsonl_stream(tmp_path, classification_records(44))  # 44 rows: 11 micro-batches of 4 an epoch
    tuner = make("bert", "classification", None, save_every="epoch", max_steps=9)
    history = tuner.fit(train, classification_records(12, seed=1))
    assert tuner.state.step == 9 and len(losses(history)) == 9
    assert tuner.state.epoch == 1  # 6 steps an epoch (the last one of one micro-batch), then the stream restarts
    assert [r["epoch"] for r in history if "train/loss" in r][:7] == [0.0] * 5 + [1.0, round(1 + 2 / 11, 4)]
    assert any("validation/loss" in r for r in history)  # validation: a normal split, evaluated per epoch


@pytest.mark.parametrize("arch,task,stop", [
    ("bert", "classification", 3),  # mid-buffer
    ("bert", "classification", 6),  # at the end of the first pass
    ("gpt2", "causal_lm", 5),       # token-normalized loss, in the second buffer
])
def test_resume_is_bit_for_bit(tmp_path, arch, task, stop):
    data = classification_records(44) if task == "classification" else generation_records(40)
    full = make(arch, task, tmp_path / "full")
    full.fit(jsonl_stream(tmp_path, data))

    first = make(arch, task, tmp_path / "cut", callbacks=[StopAt(stop)])
    first.fit(jsonl_stream(tmp_path, data))
    assert first.state.step == stop
    second = make(arch, task, tmp_path / "cut")
    second.fit(jsonl_stream(tmp_path, data), resume=True)

    assert losses(second.history) == losses(full.history)
    for (n, a), (_, b) in zip(full.model.state_dict().items(), second.model.state_dict().items()):
        assert torch.equal(a, b), n


def test_a_changed_buffer_size_is_refused_on_resume(tmp_path):
    data = classification_records(44)
    make("bert", "classification", tmp_path / "run", callbacks=[StopAt(2)]).fit(jsonl_stream(tmp_path, data))
    with pytest.raises(ValueError, match=r"buffer_size of 16.*buffer_size=16"):
        make("bert", "classification", tmp_path / "run").fit(jsonl_stream(tmp_path, data, buffer_size=32),
                                                             resume=True)


def test_a_stream_needs_max_steps_before_any_model_is_loaded(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in classification_records(8)))
    stream = DatasetBuilder.from_hf(path, streaming=True)
    tuner = FineTuner(str(tmp_path / "no-such-model"), "classification", epochs=2, progress=False)
    with pytest.raises(ValueError, match=r"needs max_steps.*FineTuner\(\.\.\., max_steps=N\)"):
        tuner.fit(stream)
    assert tuner.model is None
    raw = datasets.load_dataset("json", data_files=str(path), split="train", streaming=True)
    with pytest.raises(ValueError, match="needs max_steps"):
        tuner.fit(raw)  # a datasets.IterableDataset as it is


def test_an_iterable_dataset_and_a_streaming_builder_train_alike(tmp_path):
    records = classification_records(24)
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    raw = datasets.load_dataset("json", data_files=str(path), split="train", streaming=True)
    a = make("bert", "classification", None, max_steps=4, save_every="epoch").fit(raw)
    b = make("bert", "classification", None, max_steps=4, save_every="epoch").fit(
        DatasetBuilder.from_hf(path, streaming=True))
    assert losses(a) == losses(b) and len(losses(a)) == 4


def test_packing_works_within_each_buffer(tmp_path):
    from finetune_lib import Preprocessor

    model, tok = model_and_tokenizer("gpt2", "causal_lm")
    tuner = FineTuner(model, "causal_lm", tokenizer=tok, preprocessor=Preprocessor(pack=True, max_length=32),
                      max_steps=3, batch_size=2, progress=False, log_every=1)
    history = tuner.fit(jsonl_stream(tmp_path, generation_records(40)))
    assert len(losses(history)) == 3 and tuner.preprocessor.stats["train"].packed_rows < 16
