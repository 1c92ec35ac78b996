"""`generate_texts` (finetune_lib.tasks): batched generation equals one prompt at a time (left
padding, attention mask, position ids), the prompt is stripped, at most `max_new_tokens` tokens, the
KV cache, the tokenizer and the model's mode left as they were, empty prompts, and the time budget;
then the budget through `FineTuner.evaluate` with BLEU (skipped prompts are scored as empty outputs).

Greedy decoding in fp32 on tiny random models; the reference is transformers' own `generate` on one
unpadded prompt.
"""

from __future__ import annotations

import logging
import re

import pytest
import sacrebleu
import torch

from finetune_lib import FineTuner, MetricSuite, tasks
from finetune_lib.metrics import BLEU, Perplexity
from finetune_lib.reporting import write_model_card
from finetune_lib.tasks import GenerationBudget, generate_texts
from finetune_lib.testing import tiny_model, tiny_tokenizer

PROMPTS = [
    "the phone",
    "a very long prompt about the battery and the screen of the phone that broke after a week",
    "hello there",
    "the cat sat on the mat and then",
    "refund",
]
ARCHS = {"gpt2": ("causal_lm", "decoder"), "llama": ("causal_lm", "decoder"), "t5": ("seq2seq", "seq2seq")}


def build(arch: str, words_only: bool = False):
    task, kind = ARCHS[arch]
    tok = tiny_tokenizer(kind=kind)
    model = tiny_model(arch, task, vocab_size=len(tok)).eval()
    if words_only:  # generate only lower-case word pieces (no EOS, no stray bytes): texts re-tokenize cleanly
        model.generation_config.suppress_tokens = [
            i for i in range(len(tok)) if not re.fullmatch(r" ?[a-z]+", tok.decode([i]))]
    return model, tok


@pytest.fixture(scope="module", params=list(ARCHS))
def arch(request):
    return request.param


@pytest.fixture(scope="module")
def built(arch):
    return build(arch)


def reference(model, tok, prompt: str, max_new_tokens: int) -> tuple[str, str]:
    """(full decoded sequence, new text) from transformers' generate on one prompt, no padding."""
    enc = tok([prompt], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    full = tok.decode(out[0], skip_special_tokens=True)
    new = out[0] if model.config.is_encoder_decoder else out[0, enc["input_ids"].shape[1]:]
    return full, tok.decode(new, skip_special_tokens=True).strip()


# ---- (a) batched = one prompt at a time ---------------------------------------------------------------
def test_batched_generation_equals_one_prompt_at_a_time(built):
    model, tok = built
    assert tok.padding_side == "right"  # the tokenizer's default side must not matter
    lengths = [len(ids) for ids in tok(PROMPTS)["input_ids"]]
    assert len(set(lengths)) == len(PROMPTS)  # every batch mixes prompts of different lengths
    alone = [reference(model, tok, p, 8)[1] for p in PROMPTS]
    assert all(alone)  # something was generated for each prompt
    assert generate_texts(model, tok, PROMPTS, batch_size=len(PROMPTS), max_new_tokens=8) == alone
    assert generate_texts(model, tok, PROMPTS, batch_size=2, max_new_tokens=8) == alone
    assert generate_texts(model, tok, PROMPTS, batch_size=1, max_new_tokens=8) == alone


# ---- (b) the prompt is stripped ----------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_decoder_only_output_is_the_continuation_without_the_prompt(arch):
    model, tok = build(arch)
    texts = generate_texts(model, tok, PROMPTS, batch_size=len(PROMPTS), max_new_tokens=6)
    for prompt, text in zip(PROMPTS, texts):
        full, _ = reference(model, tok, prompt, 6)
        assert full.startswith(prompt) and len(full) > len(prompt)
        assert text == full[len(prompt):].strip()  # exactly what followed the prompt
        assert prompt not in text


# ---- (c) at most max_new_tokens -------------------------------------------------------------------------
def test_no_more_than_max_new_tokens(arch, monkeypatch):
    """Counted on the ids `model.generate` returned (re-tokenizing the stripped text is not exact:
    BPE may split "phone" differently from " phone"), and the texts are those ids decoded."""
    model, tok = build(arch, words_only=True)
    new_tokens, decoded = [], []
    real = model.generate

    def spy(**kw):
        out = real(**kw)
        width = 0 if model.config.is_encoder_decoder else kw["input_ids"].shape[1]
        for row in out[:, width:]:
            ids = [i for i in row.tolist() if i not in tok.all_special_ids]
            new_tokens.append(len(ids))
            decoded.append(tok.decode(ids).strip())
        return out

    monkeypatch.setattr(model, "generate", spy)
    short = generate_texts(model, tok, PROMPTS, batch_size=2, max_new_tokens=3)
    long = generate_texts(model, tok, PROMPTS, batch_size=2, max_new_tokens=7)
    assert new_tokens == [3] * len(PROMPTS) + [7] * len(PROMPTS)  # no EOS possible: exactly that many
    assert short + long == decoded
    for s, t in zip(short, long):
        assert s and len(t) > len(s) and t.startswith(s)  # greedy: the longer text continues the shorter one


# ---- (d) the KV cache -------------------------------------------------------------------------------------
def test_generation_uses_the_kv_cache(built):
    model, tok = built
    calls = []

    def record(module, args, kwargs):
        ids = kwargs.get("decoder_input_ids") if model.config.is_encoder_decoder else kwargs.get("input_ids")
        cache = kwargs.get("past_key_values", kwargs.get("cache"))  # the name differs between transformers versions
        calls.append((tuple(ids.shape), cache, kwargs.get("use_cache")))

    encoder_runs = []
    hooks = [model.register_forward_pre_hook(record, with_kwargs=True)]
    if model.config.is_encoder_decoder:
        hooks.append(model.get_encoder().register_forward_pre_hook(lambda m, a: encoder_runs.append(1)))
    try:
        generate_texts(model, tok, PROMPTS[:3], batch_size=3, max_new_tokens=5)
    finally:
        for h in hooks:
            h.remove()
    assert len(calls) == 5  # one forward per new token
    width = 1 if model.config.is_encoder_decoder else max(len(ids) for ids in tok(PROMPTS[:3])["input_ids"])
    assert calls[0][0] == (3, width)
    caches = [cache for _, cache, _ in calls]
    assert caches[1] is not None and all(c is caches[1] for c in caches[1:])  # one cache, carried over the steps
    for shape, _, use_cache in calls[1:]:  # after the first step: only the new token of each row is fed
        assert shape == (3, 1) and use_cache is not False
    if model.config.is_encoder_decoder:
        assert len(encoder_runs) == 1  # the encoder runs once per batch, not once per token


# ---- (e) the tokenizer and the model are left as they were ------------------------------------------------------
@pytest.mark.parametrize("side", ["right", "left"])
def test_tokenizer_padding_side_and_model_mode_are_kept(built, side, monkeypatch):
    model, tok = built
    tok.padding_side = side
    model.train()
    try:
        generate_texts(model, tok, PROMPTS[:2], max_new_tokens=2)
        assert tok.padding_side == side and model.training

        def boom(**kw):
            raise RuntimeError("generation failed")

        monkeypatch.setattr(model, "generate", boom)
        with pytest.raises(RuntimeError, match="generation failed"):
            generate_texts(model, tok, PROMPTS[:2], max_new_tokens=2)
        assert tok.padding_side == side and model.training  # also when generation raises
    finally:
        tok.padding_side = "right"
        model.eval()


# ---- empty prompts (a text-only record has one) ------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_empty_prompt_starts_from_bos(arch):
    model, tok = build(arch)
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([[tok.bos_token_id]]), max_new_tokens=5, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    expected = tok.decode(out[0, 1:], skip_special_tokens=True).strip()
    assert generate_texts(model, tok, [""], max_new_tokens=5) == [expected]  # alone: no crash on an empty batch
    batched = generate_texts(model, tok, ["", "the phone"], batch_size=2, max_new_tokens=5)
    assert batched == [expected, reference(model, tok, "the phone", 5)[1]]


# ---- (f) the time budget ------------------------------------------------------------------------------------
class FakeClock:
    """Each model.generate call takes exactly `per_call` seconds of this clock."""

    def __init__(self, model, monkeypatch, per_call: float = 1.0):
        self.now = 0.0
        real = model.generate

        def generate(**kw):
            self.now += per_call
            return real(**kw)

        monkeypatch.setattr(model, "generate", generate)
        monkeypatch.setattr(tasks, "_clock", lambda: self.now)


def test_time_budget_stops_before_the_next_batch_and_warns(monkeypatch, caplog):
    model, tok = build("gpt2")
    full = generate_texts(model, tok, PROMPTS, batch_size=1, max_new_tokens=4)
    FakeClock(model, monkeypatch)
    with caplog.at_level(logging.WARNING, logger="finetune_lib"):
        texts = generate_texts(model, tok, PROMPTS, batch_size=1, max_new_tokens=4, time_budget_s=2.5)
    # batches start at 0s, 1s and 2s (< 2.5s); the fourth would start at 3s: not started
    assert texts == full[:3] + ["", ""]
    assert "after 3 of 5 prompts" in caplog.text and "other 2 got empty strings" in caplog.text


def test_time_budget_not_spent_generates_everything(monkeypatch, caplog):
    model, tok = build("gpt2")
    full = generate_texts(model, tok, PROMPTS, batch_size=2, max_new_tokens=4)
    FakeClock(model, monkeypatch)
    with caplog.at_level(logging.WARNING, logger="finetune_lib"):
        assert generate_texts(model, tok, PROMPTS, batch_size=2, max_new_tokens=4, time_budget_s=3.5) == full
    assert "budget" not in caplog.text


def test_shared_budget_counts_over_calls_without_warning(monkeypatch, caplog):
    model, tok = build("gpt2")
    FakeClock(model, monkeypatch)
    budget = GenerationBudget(2.5)
    with caplog.at_level(logging.WARNING, logger="finetune_lib"):
        first = generate_texts(model, tok, PROMPTS[:2], batch_size=1, max_new_tokens=3, budget=budget)
        second = generate_texts(model, tok, PROMPTS[2:], batch_size=1, max_new_tokens=3, budget=budget)
    assert all(first) and second[0] and second[1:] == ["", ""]
    assert (budget.spent, budget.generated, budget.skipped, budget.exhausted) == (3.0, 3, 2, True)
    assert caplog.text == ""  # the owner of a shared budget reports it
    assert generate_texts(model, tok, ["more"], budget=budget) == [""] and budget.skipped == 3


def test_zero_budget_generates_nothing_and_bad_budgets_are_refused(monkeypatch):
    model, tok = build("gpt2")
    calls = []
    monkeypatch.setattr(model, "generate", lambda **kw: calls.append(kw))
    assert generate_texts(model, tok, PROMPTS[:2], time_budget_s=0) == ["", ""] and calls == []
    with pytest.raises(ValueError, match="time_budget_s must be >= 0"):
        generate_texts(model, tok, PROMPTS[:2], time_budget_s=-1)
    with pytest.raises(ValueError, match="not both"):
        generate_texts(model, tok, PROMPTS[:2], time_budget_s=1, budget=GenerationBudget(1))


# ---- the budget through FineTuner.evaluate ----------------------------------------------------------------------
@pytest.mark.parametrize("value", [0, -5, float("nan"), "60", True])
def test_generation_time_budget_is_validated(value):
    model, tok = build("gpt2")
    with pytest.raises(ValueError, match="generation_time_budget must be a positive number of seconds"):
        FineTuner(model, "causal_lm", tokenizer=tok, generation_time_budget=value, progress=False)


def echo_records(model, tok, n: int = 10) -> list[dict]:
    """Records whose target is what the model generates for the prompt: full-coverage BLEU is 100."""
    prompts = [f"{w} phone" for w in ["the", "a", "my", "new", "old", "this", "that", "our", "red", "blue"]][:n]
    prompts = [p + " battery" * (i % 4) for i, p in enumerate(prompts)]  # different lengths
    targets = generate_texts(model, tok, prompts, batch_size=1, max_new_tokens=4)
    assert all(targets)
    return [{"prompt": p, "target": t} for p, t in zip(prompts, targets)]


def budget_tuner(model, tok, budget):
    return FineTuner(model, "causal_lm", tokenizer=tok, metrics=MetricSuite([Perplexity(), BLEU()]),
                     max_new_tokens=4, eval_batch_size=2, precision="fp32", progress=False,
                     generation_time_budget=budget)


def test_evaluate_without_budget_pressure_generates_everything(tmp_path):
    model, tok = build("gpt2", words_only=True)
    data = echo_records(model, tok)
    tuner = budget_tuner(model, tok, 1e6)
    results = tuner.evaluate(data)
    assert results["bleu"] == pytest.approx(100.0) and results["generated_fraction"] == 1.0
    assert tuner.last_artifacts["generation"] == {"time_budget_s": 1e6, "generated": 10, "skipped": 0}
    assert "budget ran out" not in write_model_card(tuner, tmp_path / "card", results).read_text()
    assert "generated_fraction" not in budget_tuner(model, tok, None).evaluate(data)  # no budget, no key


def test_evaluate_with_spent_budget_scores_skipped_prompts_as_empty(monkeypatch, caplog, tmp_path):
    from finetune_lib.training import evaluation

    model, tok = build("gpt2", words_only=True)
    data = echo_records(model, tok)
    target_of = {r["prompt"]: r["target"] for r in data}
    seen: list[tuple[list[str], list[str]]] = []
    real = evaluation.generate_texts

    def spy(*a, **kw):
        texts = real(*a, **kw)
        seen.append((list(a[2]), texts))
        return texts

    monkeypatch.setattr(evaluation, "generate_texts", spy)
    tuner = budget_tuner(model, tok, 1e-9)  # spent by the first batch: the other 4 batches are skipped
    with caplog.at_level(logging.WARNING, logger="finetune_lib"):
        results = tuner.evaluate(data)
    assert len(seen) == 5 and all(texts == [""] * 2 for _, texts in seen[1:])
    generated = seen[0][0]
    assert seen[0][1] == [target_of[p] for p in generated]  # the first batch was really generated
    assert results["generated_fraction"] == pytest.approx(0.2)
    assert "2 of 10 prompts were generated" in caplog.text and "8 were scored as empty outputs by bleu" in caplog.text
    assert tuner.last_artifacts["generation"] == {"time_budget_s": 1e-9, "generated": 2, "skipped": 8}
    # BLEU covers all 10 examples, the skipped ones as empty hypotheses (scoring only the 2 generated
    # ones would give 100 here)
    hyps = [target_of[r["prompt"]] if r["prompt"] in generated else "" for r in data]
    expected = sacrebleu.corpus_bleu(hyps, [[r["target"] for r in data]]).score
    assert results["bleu"] == pytest.approx(expected, abs=1e-9) and results["bleu"] < 100
    assert results["perplexity"] == pytest.approx(budget_tuner(model, tok, None).evaluate(data)["perplexity"])
    # the model card says so next to the results
    card = write_model_card(tuner, tmp_path / "card", results).read_text()
    assert "| generated_fraction | 0.2000 |" in card
    assert "generation time budget ran out after 20% of the prompts" in card
