"""Small data sets and model builders shared by the training tests."""

from __future__ import annotations

import random

from finetune_lib.testing import sample_texts, tiny_model, tiny_tokenizer, tokenizer_kind


def classification_records(n: int = 64, seed: int = 0) -> list[dict]:
    """A learnable task: the label says whether the text holds a 'good' word."""
    good = {"great", "excellent", "perfectly", "helpful"}
    return [{"text": t, "label": "positive" if good & set(t.split()) else "negative"}
            for t in sample_texts(n, seed=seed, max_words=12)]


def generation_records(n: int = 48, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for t in sample_texts(n, seed=seed, min_words=2, max_words=10):
        words = t.split()
        out.append({"prompt": " ".join(words[: rng.randint(1, len(words))]), "target": " ".join(reversed(words))})
    return out


def model_and_tokenizer(arch: str, task: str, dropout: float | None = None, **kw):
    tok = tiny_tokenizer(kind=tokenizer_kind(arch))
    overrides = dict(kw)
    if dropout is not None:
        names = {"bert": ("hidden_dropout_prob", "attention_probs_dropout_prob"),
                 "gpt2": ("resid_pdrop", "embd_pdrop", "attn_pdrop"),
                 "llama": ("attention_dropout",), "t5": ("dropout_rate",)}[arch]
        overrides.update({n: dropout for n in names})
    return tiny_model(arch, task, vocab_size=len(tok), **overrides), tok
