"""LayerFreezer(cache_prefix=True): the frozen prefix runs once (epoch 1), later epochs replay its cached
output; losses, weights and evaluation match a run with the same eval-mode prefix and no cache."""

from __future__ import annotations

import pytest
import torch

from finetune_lib import Callback, FineTuner, LayerFreezer
from finetune_lib.freezing import find_parts
from finetune_lib.freezing.cache import PrefixCache
from finetune_lib.testing import sample_texts, tiny_model, tiny_tokenizer, tokenizer_kind

DROPOUT = {"bert": ("hidden_dropout_prob", "attention_probs_dropout_prob"),
           "gpt2": ("resid_pdrop", "embd_pdrop", "attn_pdrop"), "llama": ("attention_dropout",)}


def _records(task: str, n: int = 40) -> list[dict]:
    texts = sample_texts(n, seed=0, max_words=12)
    if task == "classification":
        good = {"great", "excellent", "perfectly", "helpful"}
        return [{"text": t, "label": "positive" if good & set(t.split()) else "negative"} for t in texts]
    return [{"prompt": " ".join(t.split()[:2]), "target": " ".join(reversed(t.split()))} for t in texts]


def _tuner(arch: str, task: str, freezer: LayerFreezer, callbacks=(), **kw) -> FineTuner:
    tok = tiny_tokenizer(kind=tokenizer_kind(arch))
    extra = {"num_labels": 2} if task == "classification" else {}
    model = tiny_model(arch, task, vocab_size=len(tok), **{n: 0.1 for n in DROPOUT[arch]}, **extra)
    settings = dict(epochs=3, batch_size=8, learning_rate=2e-3, log_every=1, progress=False, device="cpu",
                    precision="fp32")  # compared at fp32 tolerances; auto may pick bf16 on this CPU
    settings.update(kw)
    return FineTuner(model, task, tokenizer=tok, freezer=freezer, callbacks=list(callbacks), **settings)


def _reference(**kw) -> LayerFreezer:
    """The same freezer with the eval-mode prefix but nothing cached."""
    freezer = LayerFreezer(cache_prefix=True, **kw)
    freezer.prefix_cache.reuse = False
    return freezer


class CountPrefix(Callback):
    """Counts, per epoch and during training forwards only, real computations of the embeddings
    (`F.embedding` calls) and of the frozen blocks (their parametrized leaf modules)."""

    def __init__(self, monkeypatch, frozen_blocks: int):
        self.frozen_blocks, self.on = frozen_blocks, False
        self.embedding, self.blocks, self.top = [], [], []
        original = torch.nn.functional.embedding

        def embedding(*args, **kwargs):
            if self.on:
                self.embedding[-1] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(torch.nn.functional, "embedding", embedding)

    def on_fit_start(self, state):
        parts = find_parts(state.model)  # the same blocks the freezer found
        for i, blk in enumerate(parts.blocks):
            leaves = [m for m in blk.module.modules() if not list(m.children()) and list(m.parameters(False))]
            counts = self.blocks if i < self.frozen_blocks else self.top
            leaves[0].register_forward_hook(lambda *a, c=counts: self._bump(c))

    def _bump(self, counts):
        if self.on:
            counts[-1] += 1

    def on_epoch_start(self, state):
        for counts in (self.embedding, self.blocks, self.top):
            counts.append(0)

    def on_batch_start(self, state):
        self.on = True

    def on_before_optimizer_step(self, state):
        self.on = False


CASES = [("bert", "classification"), ("gpt2", "causal_lm"), ("llama", "causal_lm")]


@pytest.mark.parametrize("arch,task", CASES)
def test_cache_matches_eval_prefix_reference(arch, task, monkeypatch):
    data, validation = _records(task, 40), _records(task, 16)[8:]
    count = CountPrefix(monkeypatch, frozen_blocks=3)
    cached = _tuner(arch, task, LayerFreezer(train_last=1, cache_prefix=True), callbacks=[count])
    cached.fit(data, validation)
    count_ref = CountPrefix(monkeypatch, frozen_blocks=3)
    ref = _tuner(arch, task, _reference(train_last=1), callbacks=[count_ref])
    ref.fit(data, validation)

    # the prefix really ran only in the first epoch (5 batches of 8); the top block in every epoch
    assert count.blocks[0] > 0 and count.blocks[1:] == [0, 0]
    assert count.embedding[0] > 0 and count.embedding[1:] == [0, 0]
    assert all(c > 0 for c in count.top) and count.top == count_ref.top
    assert all(c > 0 for c in count_ref.blocks + count_ref.embedding)
    cache = cached.freezer.prefix_cache
    assert (cache.stored_batches, cache.replayed_batches) == (5, 10)
    assert len(cache) == 0  # freed at the end of fit

    # same losses at every step, same evaluations during fit, close final weights
    train_losses = [[r["train/loss"] for r in t.history if "train/loss" in r] for t in (cached, ref)]
    assert len(train_losses[0]) == 15
    torch.testing.assert_close(torch.tensor(train_losses[0]), torch.tensor(train_losses[1]), rtol=1e-5, atol=1e-6)
    evals = [[r for r in t.history if "validation/loss" in r] for t in (cached, ref)]
    assert len(evals[0]) == 3
    for a, b in zip(*evals):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
    ref_weights = ref.model.state_dict()
    for name, value in cached.model.state_dict().items():
        torch.testing.assert_close(value, ref_weights[name], rtol=1e-4, atol=1e-6, msg=name)

    # evaluation after training runs the whole model, identically
    after = cached.evaluate(validation), ref.evaluate(validation)
    assert after[0] == pytest.approx(after[1], rel=1e-5, abs=1e-6)


def test_prefix_runs_in_eval_mode_and_cache_off_keeps_dropout(monkeypatch):
    """With cache_prefix the prefix's dropout is off (so losses differ from the default freezer)."""
    data = _records("classification", 24)
    seen = []

    class Modes(Callback):
        def on_loss_computed(self, state):
            bert = state.model.bert
            seen.append((bert.embeddings.training, bert.encoder.layer[0].training, bert.encoder.layer[3].training))

    cached = _tuner("bert", "classification", LayerFreezer(train_last=1, cache_prefix=True), callbacks=[Modes()],
                    epochs=1)
    cached.fit(data)
    assert seen and all(s == (False, False, True) for s in seen)
    seen.clear()
    plain = _tuner("bert", "classification", LayerFreezer(train_last=1), callbacks=[Modes()], epochs=1)
    plain.fit(data)
    assert seen and all(s == (True, True, True) for s in seen)


def test_gradual_unfreezing_invalidates_the_cache():
    data = _records("classification", 40)
    kw = dict(train_last=1, unfreeze_every=2, unfreeze_unit="epochs")
    cached = _tuner("bert", "classification", LayerFreezer(cache_prefix=True, **kw))
    cached.fit(data)
    ref = _tuner("bert", "classification", _reference(**kw))
    ref.fit(data)
    cache = cached.freezer.prefix_cache
    # epoch 1 stores (3 frozen blocks), epoch 2 replays, epoch 3 unfroze block 2: stores again (2 blocks)
    assert (cache.stored_batches, cache.replayed_batches) == (10, 5)
    assert cached.freezer.unfrozen_blocks == [2]
    losses = [[r["train/loss"] for r in t.history if "train/loss" in r] for t in (cached, ref)]
    torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(losses[1]), rtol=1e-5, atol=1e-6)


def test_invalid_configurations():
    with pytest.raises(ValueError, match="no_grad_prefix"):
        LayerFreezer(train_last=1, cache_prefix=True, no_grad_prefix=False)
    with pytest.raises(ValueError, match="True or False"):
        LayerFreezer(train_last=1, cache_prefix="yes")
    bert = tiny_model("bert", "classification", num_labels=2)
    with pytest.raises(ValueError, match="frozen block at the bottom"):
        LayerFreezer(train_last=4, cache_prefix=True).apply(bert)
    with pytest.raises(ValueError, match="frozen embeddings"):
        LayerFreezer(train_last=1, freeze_embeddings=False, cache_prefix=True).apply(bert)
    with pytest.raises(ValueError, match="frozen block at the bottom"):
        LayerFreezer(train_last=1, include="encoder.layer.0.*", cache_prefix=True).apply(bert)
    with pytest.raises(ValueError, match="encoder-decoder"):
        LayerFreezer(train_last=1, cache_prefix=True).apply(tiny_model("t5", "seq2seq"))


def test_repr_and_standalone_use_leave_the_model_alone():
    freezer = LayerFreezer(train_last=1, cache_prefix=True)
    assert "cache_prefix=True" in repr(freezer) and "cache" not in repr(LayerFreezer(train_last=1))
    model = tiny_model("gpt2", "causal_lm")
    before = {n for n, m in model.named_modules() if "forward" in m.__dict__}
    freezer.apply(model)
    assert isinstance(freezer.prefix_cache, PrefixCache) and freezer.prefix_cache.blocks == 3
    model.train()
    ids = torch.randint(7, 400, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()  # no FineTuner events: runs normally, stores nothing
    assert len(freezer.prefix_cache) == 0 and not model.transformer.drop.training
    freezer.remove_hooks()
    assert {n for n, m in model.named_modules() if "forward" in m.__dict__} == before
    assert model.transformer.drop.training and model.transformer.h[0].training
