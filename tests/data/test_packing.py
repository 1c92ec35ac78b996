"""Causal LM packing: same learned tokens and same per-example losses as unpacked rows."""

import random
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from finetune_lib import Callback, FineTuner, Preprocessor
from finetune_lib.data.packing import block_causal_mask, check_packing_support, packed_mask_dtype, plan_bins
from finetune_lib.tasks import get_task
from finetune_lib.testing import sample_texts, tiny_model, tiny_tokenizer

IGNORE = -100


def records(n=24, seed=0, text_only=True):
    rng = random.Random(seed)
    prompts = sample_texts(n, seed=seed, min_words=1, max_words=12)
    targets = sample_texts(n, seed=seed + 1, min_words=1, max_words=15)
    # a few text-only records (learned whole) and empty prompts, as users have them
    return [{"text": t} if text_only and i % 7 == 3 else {"prompt": p if rng.random() > 0.2 else "", "target": t}
            for i, (p, t) in enumerate(zip(prompts, targets))]


def preprocessors(tok, max_length=64, **pack_kw):
    packed = Preprocessor(clean=[], max_length=max_length, pack=True, **pack_kw).setup(tok, "causal_lm")
    plain = Preprocessor(clean=[], max_length=min(max_length, pack_kw.get("pack_length") or max_length))
    return packed, plain.setup(tok, "causal_lm")


def learned(labels):
    """(position, token) pairs that carry a loss: labels[t] is predicted from position t-1."""
    return [(t, y) for t, y in enumerate(labels) if t > 0 and y != IGNORE]


def segments(row):
    out, start = [], 0
    for n in row["seq_lengths"]:
        out.append((start, start + n))
        start += n
    return out


def test_plan_bins_fits_every_example_once_and_fills_rows():
    rng = random.Random(0)
    lengths = [rng.randint(1, 60) for _ in range(300)]
    bins = plan_bins(lengths, 64)
    assert sorted(i for b in bins for i in b) == list(range(300))
    assert all(sum(lengths[i] for i in b) <= 64 for b in bins)
    lower = -(-sum(lengths) // 64)
    assert len(bins) <= lower * 1.1 + 1  # best-fit decreasing is near the lower bound here
    assert plan_bins([5, 3, 9, 4], 10) == [[2], [0, 3], [1]]
    with pytest.raises(ValueError, match="longer than the row capacity"):
        plan_bins([11], 10)


def test_packed_rows_hold_the_same_examples_with_restarting_positions():
    tok = tiny_tokenizer()
    data = records(40)
    pre, plain = preprocessors(tok, max_length=64)
    rows, singles = pre.encode(data, "train"), plain.encode(data, "train")
    st = pre.stats["train"]
    assert len(rows) < len(singles) and st.packed_rows == len(rows) and st.examples == len(data)
    assert max(pre.length(r) for r in rows) <= 64 and all(pre.length(r) == len(r["input_ids"]) for r in rows)
    real = sum(len(f["input_ids"]) for f in singles)
    assert st.packing_efficiency == pytest.approx(real / (len(rows) * 64))
    assert plain.stats["train"].packed_rows is None
    seen = []
    for row in rows:
        assert set(row) == {"input_ids", "labels", "position_ids", "seq_lengths", "example_ids"}
        assert len(row["input_ids"]) == len(row["labels"]) == len(row["position_ids"]) == sum(row["seq_lengths"])
        for (a, b), i in zip(segments(row), row["example_ids"]):
            f = singles[i]
            assert row["input_ids"][a:b] == f["input_ids"]
            assert row["position_ids"][a:b] == list(range(b - a))
            assert row["labels"][a] == IGNORE  # never predicted from the previous example's last token
            assert learned(row["labels"][a:b]) == learned(f["labels"])
            seen.append(i)
    assert sorted(seen) == list(range(len(data)))
    # the set of learned target tokens is identical, and so is the loop's target count
    task = get_task("causal_lm")
    packed_targets = sum(task.count_targets(pre.collate([r])) for r in rows)
    assert packed_targets == sum(task.count_targets(plain.collate([f])) for f in singles)


def test_evaluation_splits_stay_unpacked():
    tok = tiny_tokenizer()
    pre, plain = preprocessors(tok)
    data = records(10)
    assert pre.encode(data, "validation") == plain.encode(data, "validation")
    assert pre.stats["validation"].packed_rows is None


def test_long_examples_are_truncated_as_unpacked_and_counted():
    tok = tiny_tokenizer()
    long = {"prompt": " ".join(["battery"] * 30), "target": " ".join(["screen"] * 30)}
    data = [long] + [{"prompt": "the phone", "target": t} for t in sample_texts(8, seed=5, max_words=4)]
    for kw in ({"max_length": 24}, {"max_length": 64, "pack_length": 24}):
        pre, plain = preprocessors(tok, **kw)
        rows, singles = pre.encode(data, "train"), plain.encode(data, "train")
        assert pre.stats["train"].truncated == plain.stats["train"].truncated == 1
        assert pre.stats["train"].truncated_indices == [0]
        row = next(r for r in rows if 0 in r["example_ids"])
        a, b = segments(row)[row["example_ids"].index(0)]
        assert row["input_ids"][a:b] == singles[0]["input_ids"] and b - a == 24
        assert max(len(r["input_ids"]) for r in rows) <= 24
    strict = Preprocessor(clean=[], max_length=64, pack=True, pack_length=24, strict=True).setup(tok, "causal_lm")
    with pytest.raises(ValueError, match="longer than pack_length=24"):
        strict.encode(data, "train")


def test_collate_builds_a_block_diagonal_causal_mask():
    mask = block_causal_mask([[2, 3], [1]], width=5)
    assert mask.shape == (2, 1, 5, 5) and mask.dtype == torch.float32
    allowed = (mask[:, 0] == 0).int()
    assert allowed[0].tolist() == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0],
                                   [0, 0, 1, 1, 1]]
    assert allowed[1].tolist() == [[1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 1, 1, 0, 0], [0, 1, 1, 1, 0],
                                   [0, 1, 1, 1, 1]]  # padding attends to padding only: no empty row
    boolean = block_causal_mask([[2, 3], [1]], width=5, dtype=torch.bool)
    assert boolean.dtype == torch.bool and torch.equal(boolean, mask == 0)  # sdpa's form: True where allowed
    tok = tiny_tokenizer()
    pre, _ = preprocessors(tok, max_length=32)
    rows = pre.encode(records(20), "train")
    batch = pre.collate(rows[:3])
    assert set(batch) == {"input_ids", "labels", "position_ids", "attention_mask"}
    width = max(len(r["input_ids"]) for r in rows[:3])
    assert batch["attention_mask"].shape == (3, 1, width, width)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("attn,mask_dtype", [("sdpa", torch.bool), ("sdpa", torch.float32), ("eager", torch.float32)])
def test_packed_losses_equal_unpacked_losses(arch, attn, mask_dtype):
    tok = tiny_tokenizer()
    model = tiny_model(arch, "causal_lm", vocab_size=len(tok)).float().eval()
    model.set_attn_implementation(attn)
    check_packing_support(model)
    assert packed_mask_dtype(model) == (torch.bool if attn == "sdpa" else torch.float32)
    task = get_task("causal_lm")
    pre, plain = preprocessors(tok, max_length=48)
    pre.packed_mask_dtype = mask_dtype
    data = records(16, seed=3)
    rows, singles = pre.encode(data, "train"), plain.encode(data, "train")
    assert len(rows) < len(singles)

    def nll_sum(logits, labels):  # the task's summed loss on one sequence
        return F.cross_entropy(logits[:-1], labels[1:], ignore_index=IGNORE, reduction="sum")

    with torch.no_grad():
        expected = {}
        for i, f in enumerate(singles):
            batch = plain.collate([f])
            expected[i] = nll_sum(task.forward(model, batch).logits[0], batch["labels"][0])
        batch = pre.collate(rows)  # all rows in one padded batch
        logits = task.forward(model, batch).logits
        assert torch.isfinite(logits).all()
        got = {}
        for r, row in enumerate(rows):
            for (a, b), i in zip(segments(row), row["example_ids"]):
                got[i] = nll_sum(logits[r, a:b], batch["labels"][r, a:b])
        total = task.loss_sum(logits, batch["labels"], smoothing=False)
    assert sorted(got) == sorted(expected)
    torch.testing.assert_close(torch.stack([got[i] for i in expected]), torch.stack(list(expected.values())),
                               rtol=1e-4, atol=1e-4)
    # the whole packed batch's loss is the sum of the examples' losses: nothing across examples
    torch.testing.assert_close(total, torch.stack(list(expected.values())).sum(), rtol=1e-4, atol=1e-3)


def test_packing_is_for_causal_lm_with_mask_aware_attention():
    with pytest.raises(ValueError, match="causal_lm"):
        Preprocessor(pack=True).setup(tiny_tokenizer(kind="encoder"), "classification")
    with pytest.raises(ValueError, match="pack_length"):
        Preprocessor(pack=True, pack_length=1)
    flash = SimpleNamespace(config=SimpleNamespace(is_encoder_decoder=False, _attn_implementation="flash_attention_2"))
    with pytest.raises(ValueError, match="attn_implementation='sdpa'"):
        check_packing_support(flash)


def test_finetuner_trains_on_packed_rows():
    tok = tiny_tokenizer()
    model = tiny_model("gpt2", "causal_lm", vocab_size=len(tok))
    tuner = FineTuner(model, "causal_lm", tokenizer=tok, preprocessor=Preprocessor(pack=True, max_length=64),
                      max_steps=12, batch_size=4, learning_rate=3e-3, log_every=1, progress=False)
    history = tuner.fit(records(48, text_only=False))
    losses = [h["train/loss"] for h in history if "train/loss" in h]
    assert len(losses) == 12 and all(map(torch.isfinite, torch.tensor(losses)))
    assert tuner.preprocessor.stats["train"].packed_rows < 48
    assert sum(losses[-3:]) / 3 < losses[0]


@pytest.mark.parametrize("attn,expected", [("sdpa", torch.bool), ("eager", torch.float32)])
def test_finetuner_gives_packed_rows_the_mask_its_attention_needs(attn, expected):
    tok = tiny_tokenizer()
    model = tiny_model("gpt2", "causal_lm", vocab_size=len(tok))
    model.set_attn_implementation(attn)
    seen = []

    class Masks(Callback):
        def on_batch_start(self, state):
            seen.append(state.batch["attention_mask"].dtype)

    tuner = FineTuner(model, "causal_lm", tokenizer=tok, preprocessor=Preprocessor(pack=True, max_length=64),
                      max_steps=2, batch_size=4, progress=False, callbacks=[Masks()])
    tuner.fit(records(24, text_only=False))
    assert seen and set(seen) == {expected}


def test_finetuner_refuses_packing_for_attention_without_4d_masks():
    tok = tiny_tokenizer()
    model = tiny_model("gpt2", "causal_lm", vocab_size=len(tok))
    model.config._attn_implementation = "flash_attention_2"  # what cannot keep packed examples apart
    tuner = FineTuner(model, "causal_lm", tokenizer=tok, preprocessor=Preprocessor(pack=True, max_length=64),
                      max_steps=2, batch_size=4, progress=False)
    with pytest.raises(ValueError, match="attn_implementation='sdpa'"):
        tuner.fit(records(24, text_only=False))
    assert tuner.state is None  # refused before training
