"""Checkpoints and exact resume with LoRA adapters."""

import pytest
import torch

from finetune_lib import LayerFreezer
from finetune_lib.adapters import LoRA
from finetune_lib.testing import StopAt

from .helpers import llama_and_tokenizer, text_records, tuner


def make(out, callbacks=(), adapter=None, **kw):
    model, tok = llama_and_tokenizer(attention_dropout=0.1)
    settings = dict(epochs=2, batch_size=8, gradient_accumulation=2, warmup_steps=1, precision="auto")
    settings.update(kw)
    return tuner(model, tok, adapter=adapter or LoRA(r=4, alpha=8, dropout=0.1), freezer=LayerFreezer(train_last=2),
                 output_dir=out, callbacks=list(callbacks), **settings)


def test_resume_with_lora_is_bit_for_bit(tmp_path):
    data = text_records(32)  # 4 steps per epoch, 2 epochs: stop after 2 steps, resume for the other 6
    full = make(tmp_path / "full")
    full.fit(data)
    first = make(tmp_path / "cut", callbacks=[StopAt(2)])
    first.fit(data)
    assert first.state.step == 2
    second = make(tmp_path / "cut")
    second.fit(data, resume=True)

    losses = lambda h: [(r["step"], r["train/loss"]) for r in h if "train/loss" in r]  # noqa: E731
    assert len(losses(full.history)) == 8 and losses(second.history) == losses(full.history)
    a, b = full.model.state_dict(), second.model.state_dict()
    assert a.keys() == b.keys() and any("lora_A" in k for k in a)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_the_run_fingerprint_holds_the_adapter(tmp_path):
    data = text_records(16)
    make(tmp_path / "run", save_every=1, max_steps=1).fit(data)
    other = make(tmp_path / "run", adapter=LoRA(r=8, alpha=8, dropout=0.1), max_steps=2)
    with pytest.raises(ValueError, match=r"other settings than now[\s\S]*adapter"):
        other.fit(data, resume=True)
