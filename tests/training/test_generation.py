"""Generation of a run (issue 17, items 5 and 6): settings of the run validated and overridable per
`predict` call, seeded sampling that repeats and leaves torch's random state alone, stopping at the
chat template's end-of-turn token, `predict` on conversations, the texts of an evaluation given back
in the records' order (artifacts and generations.jsonl), and `evaluate(..., baseline=True)` against
an untouched copy of the base model evaluated by a fresh FineTuner, shown side by side in the card
and the report.

Tiny random models built from a config and a tiny tokenizer with a ChatML template set here.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from finetune_lib import FineTuner, Metric, MetricSuite
from finetune_lib.generation import stop_token_ids
from finetune_lib.metrics import BLEU, ChrF, Perplexity
from finetune_lib.reporting import write_model_card, write_report
from finetune_lib.reporting.sections import fmt
from finetune_lib.tasks import generate_texts
from finetune_lib.testing import save_tiny_pretrained, tiny_model, tiny_tokenizer

from .helpers import generation_records

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
PROMPTS = ["the phone", "a very long prompt about the battery and the screen", "hello there"]


def chat_tokenizer():
    """The tiny tokenizer (EOS `</s>`) with ChatML's special tokens and template: `<|im_end|>` ends a turn
    but is not the EOS token."""
    tok = tiny_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    return tok


def chat_llama(seed: int = 0):
    tok = chat_tokenizer()
    return tiny_model("llama", "causal_lm", vocab_size=len(tok), seed=seed).eval(), tok


def tuner_for(model, tok, **kw):
    settings = {"progress": False, "precision": "fp32", "loggers": (), "max_new_tokens": 6, "batch_size": 4}
    settings.update(kw)
    return FineTuner(model, "causal_lm", tokenizer=tok, **settings)


def conversations(n: int = 6) -> list[dict]:
    words = ["red", "blue", "old", "new", "great", "cheap", "broken", "fast"]
    out = []
    for i in range(n):
        w = words[i % len(words)]
        turns = [{"role": "user", "content": f"the {w} phone" + " and the battery" * (i % 3)},
                 {"role": "assistant", "content": f"a {w} screen"}]
        if i % 2:
            turns = [{"role": "system", "content": "be brief"}, *turns]
        out.append({"messages": turns})
    return out


# ---- 1. settings of the run, validated ----------------------------------------------------------------------------
@pytest.mark.parametrize("name,value,message", [
    ("temperature", 0, "temperature must be a positive finite number"),
    ("temperature", -1.0, "temperature must be a positive finite number"),
    ("temperature", float("nan"), "temperature must be a positive finite number"),
    ("temperature", float("inf"), "temperature must be a positive finite number"),
    ("temperature", True, "temperature must be a positive finite number"),
    ("temperature", "0.7", "temperature must be a positive finite number"),
    ("top_p", 0, r"top_p must be a number in \(0, 1\]"),
    ("top_p", 1.5, r"top_p must be a number in \(0, 1\]"),
    ("top_p", float("nan"), r"top_p must be a number in \(0, 1\]"),
    ("do_sample", 1, "do_sample must be True or False"),
    ("do_sample", "yes", "do_sample must be True or False"),
])
def test_generation_settings_are_validated(name, value, message):
    model, tok = chat_llama()
    with pytest.raises(ValueError, match=message):
        tuner_for(model, tok, **{name: value})
    tuner = tuner_for(model, tok)
    with pytest.raises(ValueError, match=message):  # the same rules for a per-call override
        tuner.predict(["the phone"], **{name: value})


def test_generation_settings_accept_their_bounds_and_numpy_numbers():
    model, tok = chat_llama()
    tuner = tuner_for(model, tok, temperature=np.float32(0.5), top_p=1.0, do_sample=True)
    assert (tuner.args.temperature, tuner.args.top_p, tuner.args.do_sample) == (0.5, 1.0, True)
    assert type(tuner.args.temperature) is float
    defaults = tuner_for(model, tok).args
    assert (defaults.temperature, defaults.top_p, defaults.do_sample) == (1.0, 1.0, False)


# ---- 2. the run's settings reach generate(), overridden per predict() call ------------------------------------------
def spy_generate(model, monkeypatch):
    calls = []
    real = model.generate

    def spy(**kw):
        calls.append({k: v for k, v in kw.items() if k not in ("input_ids", "attention_mask")})
        return real(**kw)

    monkeypatch.setattr(model, "generate", spy)
    return calls


def test_run_settings_and_per_call_overrides(monkeypatch):
    model, tok = chat_llama()
    tuner = tuner_for(model, tok, max_new_tokens=5, temperature=0.7, top_p=0.9, do_sample=True, seed=3)
    calls = spy_generate(model, monkeypatch)
    tuner.predict(["the phone"])
    assert calls[-1]["max_new_tokens"] == 5 and calls[-1]["do_sample"] is True
    assert (calls[-1]["temperature"], calls[-1]["top_p"], calls[-1]["top_k"]) == (0.7, 0.9, 0)
    tuner.predict(["the phone"], max_new_tokens=2, temperature=1.3, top_p=0.5)
    assert (calls[-1]["max_new_tokens"], calls[-1]["temperature"], calls[-1]["top_p"]) == (2, 1.3, 0.5)
    tuner.predict(["the phone"], do_sample=False)
    assert calls[-1]["do_sample"] is False and "temperature" not in calls[-1]  # greedy: no sampling options
    assert (tuner.args.max_new_tokens, tuner.args.temperature, tuner.args.do_sample) == (5, 0.7, True)  # unchanged
    greedy = tuner_for(model, tok, max_new_tokens=5)
    assert greedy.predict(PROMPTS, do_sample=False) == generate_texts(model, tok, PROMPTS, max_new_tokens=5)


def test_evaluation_generates_with_the_run_settings(monkeypatch):
    model, tok = chat_llama()
    tuner = tuner_for(model, tok, max_new_tokens=3, temperature=0.8, top_p=0.95, do_sample=True,
                      metrics=MetricSuite([BLEU()]), eval_batch_size=2)
    calls = spy_generate(model, monkeypatch)
    tuner.evaluate(conversations(4))
    assert len(calls) == 2
    for call in calls:
        assert (call["max_new_tokens"], call["do_sample"], call["temperature"], call["top_p"]) == (3, True, 0.8, 0.95)
        assert set(call["eos_token_id"]) == {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")}


# ---- 3. seeded sampling ---------------------------------------------------------------------------------------------
def test_seeded_sampling_repeats_and_leaves_torch_rng_alone():
    model, tok = chat_llama()
    torch.manual_seed(1234)
    tuner = tuner_for(model, tok, do_sample=True, temperature=2.0, max_new_tokens=8, seed=5)
    state = torch.random.get_rng_state()  # FineTuner() itself seeds (a documented part of `seed`)
    first = tuner.predict(PROMPTS)
    assert torch.equal(torch.random.get_rng_state(), state)  # sampling put the user's state back
    assert tuner.predict(PROMPTS) == first  # the same seed: the same texts
    other = tuner_for(model, tok, do_sample=True, temperature=2.0, max_new_tokens=8, seed=6).predict(PROMPTS)
    assert other != first  # another seed: other samples
    assert first != tuner.predict(PROMPTS, do_sample=False)  # really sampled (temperature 2 on a random model)


def test_sampling_equals_transformers_sampling_from_the_seed():
    """Reference: transformers' own sampling on one unpadded prompt after torch.manual_seed(seed)."""
    model, tok = chat_llama()
    enc = tok(["the phone"], return_tensors="pt")
    torch.manual_seed(11)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=8, do_sample=True, temperature=1.7, top_p=0.8, top_k=0,
                             pad_token_id=tok.pad_token_id, eos_token_id=stop_token_ids(tok, model))
    ids = [i for i in out[0, enc["input_ids"].shape[1]:].tolist() if i not in stop_token_ids(tok, model)]
    expected = tok.decode(ids, skip_special_tokens=True).strip()
    assert generate_texts(model, tok, ["the phone"], max_new_tokens=8, do_sample=True, temperature=1.7, top_p=0.8,
                          seed=11) == [expected]


# ---- 4. stopping at the end-of-turn token ---------------------------------------------------------------------------
def test_stop_token_ids_find_eos_and_end_of_turn_tokens():
    tok = chat_tokenizer()
    end = tok.convert_tokens_to_ids("<|im_end|>")
    assert stop_token_ids(tok) == [tok.eos_token_id, end]
    plain = tiny_tokenizer()
    assert stop_token_ids(plain) == [plain.eos_token_id]  # no chat tokens: EOS alone
    model = tiny_model("llama", "causal_lm", vocab_size=len(tok))
    model.generation_config.eos_token_id = [tok.eos_token_id, 7]  # e.g. Llama 3 lists <|eot_id|> there
    assert stop_token_ids(tok, model) == [tok.eos_token_id, 7, end]


def test_generation_stops_at_the_end_of_turn_token_and_leaves_it_out():
    model, tok = chat_llama()
    end = tok.convert_tokens_to_ids("<|im_end|>")
    enc = tok(["the phone"], return_tensors="pt")
    with torch.no_grad():
        free = model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    new = free[0, enc["input_ids"].shape[1]:].tolist()
    assert end not in new and tok.eos_token_id not in new
    # force <|im_end|> right after the second generated token (a bias on the LM head's output)
    model.generation_config.sequence_bias = [[[new[1], end], 100.0]]
    texts = generate_texts(model, tok, ["the phone", "hello there"], max_new_tokens=8)
    assert texts[0] == tok.decode(new[:2]).strip()  # stopped there, the token itself left out
    # with EOS alone as the stop, generation would have gone on past <|im_end|>
    longer = generate_texts(model, tok, ["the phone"], max_new_tokens=8, stop_token_ids=[tok.eos_token_id])
    assert longer[0].startswith(texts[0]) and len(longer[0]) > len(texts[0])
    tuner = tuner_for(model, tok, max_new_tokens=8)
    assert tuner.predict(["the phone"]) == texts[:1]  # predict stops the same way


def test_an_end_of_turn_token_that_is_not_skipped_in_decoding_is_cut_anyway():
    """A token the chat template writes but the tokenizer does not mark special still ends the text."""
    tok = tiny_tokenizer()
    tok.add_tokens(["<|im_end|>"])  # a plain added token: skip_special_tokens would keep it
    tok.chat_template = CHATML
    end = tok.convert_tokens_to_ids("<|im_end|>")
    assert end in stop_token_ids(tok)
    model = tiny_model("llama", "causal_lm", vocab_size=len(tok)).eval()
    model.generation_config.sequence_bias = [[[end], 100.0]]  # <|im_end|> wins every step
    assert generate_texts(model, tok, PROMPTS, max_new_tokens=4) == ["", "", ""]
    kept = generate_texts(model, tok, PROMPTS[:1], max_new_tokens=2, stop_token_ids=[tok.eos_token_id])
    assert kept == ["<|im_end|><|im_end|>"]  # what decoding alone would have left in the text


# ---- 5. predict on conversations ---------------------------------------------------------------------------------
def test_predict_on_conversations_uses_the_chat_template_and_the_generation_prompt():
    model, tok = chat_llama()
    tuner = tuner_for(model, tok, max_new_tokens=6)
    chats = [[{"role": "user", "content": "the phone"}],
             [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a very long prompt about it"}],
             [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
              {"role": "user", "content": "the battery"}]]
    rendered = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
    assert all(r.endswith("<|im_start|>assistant\n") for r in rendered)
    expected = generate_texts(model, tok, rendered, batch_size=1, max_new_tokens=6)  # one at a time, unpadded
    assert tuner.predict(chats) == expected  # lists of messages, batched with left padding
    assert tuner.predict([{"messages": c} for c in chats]) == expected  # records
    # a conversation that ends with the assistant's answer: the model answers the messages before it
    answered = [*chats[0], {"role": "assistant", "content": "a screen"}]
    assert tuner.predict([answered]) == expected[:1]


def test_predict_refuses_bad_conversations_and_a_bare_conversation():
    model, tok = chat_llama()
    tuner = tuner_for(model, tok)
    with pytest.raises(ValueError, match="unknown role"):
        tuner.predict([[{"role": "human", "content": "hi"}]])
    with pytest.raises(ValueError, match="empty content"):
        tuner.predict([[{"role": "user", "content": "  "}]])
    with pytest.raises(TypeError, match="wrap a single"):
        tuner.predict("hi")
    with pytest.raises(TypeError, match="wrap a single"):
        tuner.predict([{"role": "user", "content": "hi"}])  # one conversation, not a list of them


# ---- 6. the generations of an evaluation, in the records' order ---------------------------------------------------------
def test_generations_come_back_in_the_records_order_with_prompts_and_references(tmp_path):
    model, tok = chat_llama()
    records = generation_records(9, seed=3)
    assert len({len(r["prompt"]) for r in records}) > 3  # batches run longest first: another order
    tuner = tuner_for(model, tok, metrics=MetricSuite([Perplexity(), BLEU()]), eval_batch_size=2,
                      output_dir=tmp_path / "run")
    tuner.evaluate(records)
    rows = tuner.last_artifacts["generations"]
    pre = tuner.preprocessor
    assert [r["index"] for r in rows] == list(range(len(records)))
    assert [r["prompt"] for r in rows] == [pre.format_prompt(r) for r in records] == [r["prompt"] for r in records]
    assert [r["reference"] for r in rows] == [r["target"] for r in records]
    assert [r["generation"] for r in rows] == tuner.predict([r["prompt"] for r in records])
    assert all(r["generated"] for r in rows)
    # the BLEU metric scored exactly these texts
    bleu = tuner.metrics.metrics[1]
    assert sorted(bleu.hypotheses) == sorted(r["generation"] for r in rows)
    written = [json.loads(line) for line in (tmp_path / "run" / "generations.jsonl").read_text().splitlines()]
    assert written == rows


def test_generations_of_conversations_hold_the_rendered_prompt_and_the_last_assistant_turn():
    model, tok = chat_llama()
    chats = conversations(5)
    tuner = tuner_for(model, tok, metrics=MetricSuite([ChrF()]), eval_batch_size=2)
    tuner.evaluate(chats)
    rows = tuner.last_artifacts["generations"]
    for row, record in zip(rows, chats):
        context = record["messages"][:-1]
        assert row["prompt"] == tok.apply_chat_template(context, tokenize=False, add_generation_prompt=True)
        assert row["reference"] == record["messages"][-1]["content"]
    assert [r["generation"] for r in rows] == tuner.predict([c["messages"][:-1] for c in chats])


def test_prompts_skipped_by_the_time_budget_are_marked_in_the_generations():
    model, tok = chat_llama()
    records = generation_records(8, seed=1)
    tuner = tuner_for(model, tok, metrics=MetricSuite([BLEU()]), eval_batch_size=2, generation_time_budget=1e-9)
    results = tuner.evaluate(records)
    rows = tuner.last_artifacts["generations"]
    assert results["generated_fraction"] == pytest.approx(0.25)
    assert sum(r["generated"] for r in rows) == 2 and len(rows) == 8
    assert all(r["generation"] == "" for r in rows if not r["generated"])


def test_no_text_metric_no_generations_and_no_file(tmp_path):
    model, tok = chat_llama()
    tuner = tuner_for(model, tok, output_dir=tmp_path / "run")  # default suite: perplexity, token accuracy
    tuner.evaluate(generation_records(4))
    assert "generations" not in tuner.last_artifacts
    assert not (tmp_path / "run" / "generations.jsonl").exists()


# ---- 7. before and after ---------------------------------------------------------------------------------------------
class WordOverlap(Metric):
    """A custom text metric: the share of reference words found in the generation."""

    name = "word_overlap"
    input = "text"

    def __init__(self) -> None:
        super().__init__()
        self.add_state("found", 0.0)
        self.add_state("total", 0.0)

    def update(self, hypotheses, references) -> None:
        for h, r in zip(hypotheses, references):
            words = r.split()
            self.found += sum(w in h.split() for w in words)
            self.total += len(words)

    def compute(self) -> float:
        return float(self.found / max(self.total, 1.0))


def suite():
    return MetricSuite([Perplexity(), BLEU(), ChrF(), WordOverlap()])


def train_settings(**kw):
    settings = {"max_steps": 4, "learning_rate": 5e-3, "batch_size": 4, "metrics": suite(), "eval_batch_size": 3,
                "max_new_tokens": 5}
    settings.update(kw)
    return settings


def assert_same(results: dict, expected: dict) -> None:
    assert set(results) == set(expected)
    for key, value in expected.items():
        assert results[key] == pytest.approx(value, rel=1e-6, abs=1e-9) or (math.isnan(value) and math.isnan(results[key]))


def test_baseline_of_a_model_object_equals_a_fresh_untouched_copy():
    train, test = conversations(8), conversations(5)[::-1]
    model, tok = chat_llama(seed=4)
    tuner = tuner_for(model, tok, **train_settings())
    tuner.fit(train)
    trained = {k: v.clone() for k, v in tuner.model.state_dict().items()}
    alone = tuner.evaluate(test)
    rng = torch.random.get_rng_state()
    results = tuner.evaluate(test, baseline=True)
    assert torch.equal(torch.random.get_rng_state(), rng)
    # the trained weights were not touched, and the fine-tuned results are those of evaluate() alone
    assert all(torch.equal(v, trained[k]) for k, v in tuner.model.state_dict().items())
    assert_same({k: v for k, v in results.items() if not k.startswith("baseline/")}, alone)
    # reference: the same tiny model built again from the same seed, evaluated by a FineTuner never fitted
    base_model, base_tok = chat_llama(seed=4)
    expected = tuner_for(base_model, base_tok, **train_settings()).evaluate(test)
    assert_same({k[len("baseline/"):]: v for k, v in results.items() if k.startswith("baseline/")}, expected)
    assert results["loss"] < results["baseline/loss"]  # training did something
    rows = tuner.last_artifacts["generations"]
    fresh = tuner_for(base_model, base_tok, **train_settings())
    assert [r["baseline"] for r in rows] == fresh.predict([c["messages"] for c in test])
    assert [r["generation"] for r in rows] == tuner.predict([c["messages"] for c in test])
    assert "bleu_signature" in tuner.last_artifacts["baseline"]


def test_baseline_of_a_folder_is_loaded_again(tmp_path):
    folder = save_tiny_pretrained(tmp_path / "base", "llama", "causal_lm", seed=2)
    records, test = generation_records(8, seed=0), generation_records(5, seed=9)
    tuner = FineTuner(str(folder), "causal_lm", progress=False, precision="fp32", loggers=(), **train_settings())
    tuner.fit(records)
    results = tuner.evaluate(test, baseline=True)
    expected = FineTuner(str(folder), "causal_lm", progress=False, precision="fp32", loggers=(),
                         **train_settings()).evaluate(test)
    assert_same({k[len("baseline/"):]: v for k, v in results.items() if k.startswith("baseline/")}, expected)
    assert results["loss"] != results["baseline/loss"]


def test_baseline_before_fit_is_the_model_itself():
    model, tok = chat_llama()
    tuner = tuner_for(model, tok, **train_settings())
    results = tuner.evaluate(conversations(4), baseline=True)
    for key in ("loss", "perplexity", "bleu", "chrf", "word_overlap"):
        assert results[key] == results[f"baseline/{key}"]


def test_baseline_with_peft_adapters_switches_them_off():
    peft = pytest.importorskip("peft")
    model, tok = chat_llama(seed=7)
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                      lora_dropout=0.0, task_type="CAUSAL_LM"))
    tuner = tuner_for(lora, tok, **train_settings(learning_rate=5e-2))
    tuner.fit(conversations(8))
    results = tuner.evaluate(conversations(4), baseline=True)
    base_model, base_tok = chat_llama(seed=7)
    expected = tuner_for(base_model, base_tok, **train_settings()).evaluate(conversations(4))
    assert_same({k[len("baseline/"):]: v for k, v in results.items() if k.startswith("baseline/")}, expected)
    assert results["loss"] != results["baseline/loss"]
    assert tuner.evaluate(conversations(4))["loss"] == pytest.approx(results["loss"])  # adapters back on


def test_baseline_with_the_lora_adapter_of_the_finetuner():
    pytest.importorskip("peft")
    from finetune_lib.adapters import LoRA

    model, tok = chat_llama(seed=8)
    tuner = tuner_for(model, tok, adapter=LoRA(r=4, alpha=8, dropout=0.0), **train_settings(learning_rate=5e-2))
    tuner.fit(conversations(8))
    results = tuner.evaluate(conversations(4), baseline=True)
    base_model, base_tok = chat_llama(seed=8)
    expected = tuner_for(base_model, base_tok, **train_settings()).evaluate(conversations(4))
    assert_same({k[len("baseline/"):]: v for k, v in results.items() if k.startswith("baseline/")}, expected)
    assert results["loss"] != results["baseline/loss"]  # the adapters changed the model, and are back on


def test_card_and_report_show_base_and_fine_tuned_side_by_side(tmp_path):
    model, tok = chat_llama(seed=4)
    tuner = tuner_for(model, tok, output_dir=tmp_path / "run", **train_settings())
    tuner.fit(conversations(8))
    results = tuner.evaluate(conversations(5), baseline=True)
    rows = [json.loads(line) for line in (tmp_path / "run" / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and all("baseline" in r and "generation" in r for r in rows)
    card = write_model_card(tuner, tmp_path / "card").read_text()
    report = write_report(tuner, results, tmp_path / "report.md").read_text()
    for text in (card, report):
        assert "| metric | base model | fine-tuned | change |" in text
        for key in ("loss", "perplexity", "bleu", "chrf", "word_overlap"):
            line = next(x for x in text.splitlines() if x.startswith(f"| {key} |"))
            cells = [c.strip() for c in line.strip("|").split("|")]
            assert cells[1] == fmt(results[f"baseline/{key}"]) and cells[2] == fmt(results[key])
    assert "baseline" not in card.split("---")[1]  # the Hub's model-index: the fine-tuned results only


def test_baseline_of_a_classifier_folder_starts_from_the_same_fresh_head(tmp_path):
    from .helpers import classification_records

    folder = save_tiny_pretrained(tmp_path / "bert", "bert", "classification")
    train, test = classification_records(32, seed=0), classification_records(16, seed=5)
    settings = {"max_steps": 3, "batch_size": 8, "learning_rate": 1e-3, "progress": False, "precision": "fp32",
                "loggers": (), "seed": 3}
    tuner = FineTuner(str(folder), "classification", **settings)
    tuner.fit(train)
    results = tuner.evaluate(test, baseline=True)
    expected = FineTuner(str(folder), "classification", **settings).evaluate(test)
    assert_same({k[len("baseline/"):]: v for k, v in results.items() if k.startswith("baseline/")}, expected)
    assert results["loss"] != results["baseline/loss"]
