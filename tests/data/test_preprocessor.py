"""Preprocessor: label mapping, truncation counts, prompt masking, EOS, pre-flight checks, collate."""

import pytest
import torch

from finetune_lib import Preprocessor
from finetune_lib.data.collate import LengthGroupedBatches
from finetune_lib.testing import tiny_tokenizer


def setup(task="classification", records=None, **kw):
    kind = {"classification": "encoder", "seq2seq": "seq2seq"}.get(task, "decoder")
    pre = Preprocessor(**kw)
    return pre.setup(tiny_tokenizer(kind=kind), task, records)


def test_string_labels_are_mapped_in_sorted_order():
    pre = setup(records=[{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}])
    assert pre.label2id == {"neg": 0, "pos": 1} and pre.id2label == {0: "neg", 1: "pos"}
    feats = pre.encode([{"text": "a b", "label": "pos"}])
    assert feats[0]["labels"] == 1


def test_integer_labels_keep_their_values():
    pre = setup(records=[{"text": "a", "label": 2}, {"text": "b", "label": 0}, {"text": "c", "label": 1}])
    assert pre.label_names == [0, 1, 2] and pre.label2id[2] == 2
    # sparse integer labels would leave head classes that never occur: an error with the fix
    with pytest.raises(ValueError, match=r"\{0, 2\}: ids \[1\] never occur.*labels=list\(range\(3\)\)"):
        setup(records=[{"text": "a", "label": 2}, {"text": "b", "label": 0}])
    kept = setup(records=[{"text": "a", "label": 2}, {"text": "b", "label": 0}], labels=[0, 1, 2])
    assert kept.label2id[2] == 2 and kept.num_labels == 3


def test_truncation_is_counted_and_strict_mode_raises():
    long = " ".join(["battery"] * 50)
    pre = setup(records=[{"text": "a", "label": 0}], max_length=8)
    feats = pre.encode([{"text": long, "label": 0}, {"text": "short", "label": 0}], "train")
    assert len(feats[0]["input_ids"]) == 8 and pre.stats["train"].truncated == 1
    strict = setup(records=[{"text": "a", "label": 0}], max_length=8, strict=True)
    with pytest.raises(ValueError, match="longer than max_length=8"):
        strict.encode([{"text": long, "label": 0}])


def test_max_length_is_capped_by_the_model_limit(caplog):
    pre = Preprocessor(max_length=4096)
    pre.setup(tiny_tokenizer(kind="encoder"), "classification", [{"text": "a", "label": 0}], max_positions=128)
    assert pre.max_length == 128
    assert "limit of 128" in caplog.text


def test_cleaning_runs_before_tokenizing():
    pre = setup(records=[{"text": "a", "label": 0}], clean=["html", "whitespace"])
    plain = pre.encode([{"text": "great  phone", "label": 0}])[0]["input_ids"]
    messy = pre.encode([{"text": "<b>great</b>   phone  ", "label": 0}])[0]["input_ids"]
    assert plain == messy


def test_causal_lm_masks_the_prompt_and_learns_eos_even_when_pad_is_eos():
    tok = tiny_tokenizer()
    tok.pad_token = tok.eos_token  # the common GPT-2 set-up
    pre = Preprocessor(clean=[]).setup(tok, "causal_lm")
    f = pre.encode([{"prompt": "the phone", "target": "works perfectly"}])[0]
    n_prompt = len(tok("the phone")["input_ids"])
    target = tok("works perfectly", add_special_tokens=False)["input_ids"]
    assert f["labels"][:n_prompt] == [-100] * n_prompt
    assert f["labels"][n_prompt:] == target + [tok.eos_token_id]
    batch = pre.collate([f, pre.encode([{"prompt": "a", "target": "b"}])[0]])
    assert batch["labels"][1].tolist().count(tok.eos_token_id) == 1  # padding is -100, the EOS label stays


def test_prompt_is_cut_from_the_left_to_keep_the_target():
    pre = setup("causal_lm", clean=[], max_length=10)
    f = pre.encode([{"prompt": " ".join(["battery"] * 30), "target": "great phone"}], "train")[0]
    assert len(f["input_ids"]) == 10 and pre.stats["train"].truncated == 1
    assert sum(x != -100 for x in f["labels"]) >= 2


def test_preflight_fails_when_no_target_token_is_left():
    pre = setup("causal_lm", clean=[], max_length=4)
    with pytest.raises(ValueError, match="no target token left"):
        pre.encode([{"prompt": "a b c", "target": ""}, {"prompt": "", "target": ""}])


def test_prompt_template():
    pre = setup("causal_lm", clean=[], prompt_template="Q: {prompt}\nA: ")
    assert pre.format_prompt({"prompt": "where is my order"}) == "Q: where is my order\nA: "


def test_seq2seq_targets_end_with_eos():
    pre = setup("seq2seq", clean=[])
    f = pre.encode([{"prompt": "the phone", "target": "great"}])[0]
    assert f["labels"][-1] == pre.tokenizer.eos_token_id
    assert all(x != -100 for x in f["labels"])


def test_collate_pads_dynamically():
    pre = setup(records=[{"text": "a", "label": 0}])
    feats = pre.encode([{"text": "a", "label": 0}, {"text": "the phone battery lasts all day", "label": 0}])
    batch = pre.collate(feats)
    assert batch["input_ids"].shape[1] == max(len(f["input_ids"]) for f in feats)
    assert batch["attention_mask"].sum().item() == sum(len(f["input_ids"]) for f in feats)
    assert batch["labels"].shape == (2,)


def test_length_grouped_batches_are_deterministic_shuffled_and_complete():
    lengths = [i % 37 for i in range(500)]
    sampler = LengthGroupedBatches(lengths, batch_size=8, seed=3, mega=4)
    a, b = sampler.epoch(0), sampler.epoch(0)
    assert a == b and a != sampler.epoch(1)
    assert sorted(i for batch in a for i in batch) == list(range(500))
    spread = sum(max(lengths[i] for i in bt) - min(lengths[i] for i in bt) for bt in a) / len(a)
    plain = LengthGroupedBatches(lengths, batch_size=8, seed=3, group_by_length=False).epoch(0)
    plain_spread = sum(max(lengths[i] for i in bt) - min(lengths[i] for i in bt) for bt in plain) / len(plain)
    assert spread < plain_spread / 3
    firsts = [max(lengths[i] for i in bt) for bt in a[:20]]
    assert firsts != sorted(firsts, reverse=True)  # the batch order is shuffled, not long-to-short


def test_encode_before_setup_is_a_clear_error():
    with pytest.raises(RuntimeError, match="setup"):
        Preprocessor().encode([{"text": "a"}])


def test_collate_left_padding():
    from finetune_lib.data.collate import collate

    batch = collate([{"input_ids": [5, 6, 7]}, {"input_ids": [8]}], pad_token_id=0, padding_side="left")
    assert torch.equal(batch["input_ids"], torch.tensor([[5, 6, 7], [0, 0, 8]]))


# ---- chat template (use_chat_template=True) ------------------------------------------------------
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def chat_tokenizer(adds_bos=False):
    from tokenizers import processors

    tok = tiny_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    if adds_bos:  # like Llama: the tokenizer itself puts <s> in front of every text
        bos = tok.bos_token_id
        tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
        assert tok("a")["input_ids"][0] == bos
    return tok


def test_chat_template_formats_the_prompt_with_the_generation_prompt():
    pre = Preprocessor(clean=[], use_chat_template=True).setup(chat_tokenizer(), "causal_lm")
    assert pre.format_prompt({"prompt": "where is my order"}) == "<s><|user|>where is my order\n<|assistant|>"
    assert pre.format_prompt({"prompt": ""}) == ""  # no prompt: the target is learned whole, as without chat


def test_chat_template_masks_the_prompt_and_learns_the_target():
    tok = chat_tokenizer()
    pre = Preprocessor(clean=[], use_chat_template=True).setup(tok, "causal_lm")
    f = pre.encode([{"prompt": "the phone", "target": "works perfectly"}])[0]
    prompt_ids = tok("<s><|user|>the phone\n<|assistant|>")["input_ids"]
    target = tok("works perfectly", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert f["input_ids"] == prompt_ids + target
    assert f["labels"] == [-100] * len(prompt_ids) + target


@pytest.mark.parametrize("adds_bos", [False, True])
def test_chat_template_bos_is_not_added_twice(adds_bos):
    tok = chat_tokenizer(adds_bos)
    pre = Preprocessor(clean=[], use_chat_template=True).setup(tok, "causal_lm")
    ids = pre.encode([{"prompt": "the phone", "target": "works"}])[0]["input_ids"]
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1


def test_chat_template_wraps_the_prompt_template_in_the_user_message():
    pre = Preprocessor(clean=[], prompt_template="Q: {prompt} ({topic})", use_chat_template=True)
    pre.setup(chat_tokenizer(), "causal_lm")
    text = pre.format_prompt({"prompt": "where is my order", "topic": "billing"})
    assert text == "<s><|user|>Q: where is my order (billing)\n<|assistant|>"


def test_chat_template_falls_back_to_the_prompt_template_with_a_warning(caplog):
    pre = Preprocessor(clean=[], prompt_template="Q: {prompt}\nA: ", use_chat_template=True)
    pre.setup(tiny_tokenizer(), "causal_lm")  # no chat_template
    with caplog.at_level("WARNING", logger="finetune_lib.data"):
        assert pre.format_prompt({"prompt": "hi"}) == "Q: hi\nA: "
        pre.format_prompt({"prompt": "again"})
    warnings = [r for r in caplog.records if "no chat_template" in r.getMessage()]
    assert len(warnings) == 1  # said once, not once per record
