"""Tiny Llama models, records and a GGUF writer shared by the adapter tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from finetune_lib import Callback, FineTuner
from finetune_lib.testing import sample_texts, tiny_model, tiny_tokenizer


def llama_and_tokenizer(new_tokens: tuple[str, ...] = (), **overrides):
    """A tiny Llama (4 blocks) and its tokenizer; `new_tokens` are added to the tokenizer only (the model
    keeps its original vocabulary, as a base model does when a template brings tokens)."""
    tok = tiny_tokenizer()
    model = tiny_model("llama", "causal_lm", vocab_size=len(tok), **overrides)
    if new_tokens:
        tok.add_special_tokens({"additional_special_tokens": list(new_tokens)})
    return model, tok


def text_records(n: int = 24, seed: int = 0, extra: str = "") -> list[dict]:
    return [{"text": f"{t} {extra}".strip()} for t in sample_texts(n, seed=seed, max_words=10)]


def tuner(model, tok, **kw) -> FineTuner:
    settings = dict(epochs=1, batch_size=8, learning_rate=1e-2, progress=False, log_every=1, precision="fp32")
    settings.update(kw)
    return FineTuner(model, "causal_lm", tokenizer=tok, **settings)


def logits(model, tok, text: str = "the phone battery lasts all day") -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(torch.tensor([tok(text).input_ids])).logits


class GradientsAt(Callback):
    """Keeps a copy of every gradient at the first optimizer step (before clipping changes nothing here)."""

    def __init__(self):
        self.grads: dict[str, torch.Tensor] = {}

    def on_before_optimizer_step(self, state):
        if not self.grads:
            self.grads = {n: p.grad.detach().clone() for n, p in state.model.named_parameters() if p.grad is not None}


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's row order of the q/k projections (transformers undoes it when reading a GGUF)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_LEAVES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
           "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
           "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def write_tiny_gguf(path: Path, model, tok, quantize: bool = False) -> Path:
    """Write a Llama model and its byte-level BPE tokenizer as a GGUF file, as llama.cpp's converter does
    (tensor names, q/k row order, tokenizer metadata); `quantize` stores the 2-D weights as Q8_0."""
    import gguf

    cfg = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_vocab_size(cfg.vocab_size)
    data = json.loads(tok.backend_tokenizer.to_str())
    vocab = {**data["model"]["vocab"], **{t["content"]: t["id"] for t in data["added_tokens"]}}
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = set(tok.all_special_tokens)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in special else 1 for t in tokens])
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in data["model"]["merges"]])
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_pad_token_id(tok.pad_token_id)
    if tok.chat_template:
        w.add_chat_template(tok.chat_template)
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        if name in fixed:
            target = fixed[name]
        else:
            parts = name.split(".")
            target = f"blk.{parts[2]}.{_LEAVES['.'.join(parts[3:-1])]}.weight"
        a = tensor.detach().float().numpy()
        if target.endswith("attn_q.weight"):
            a = _permute(a, cfg.num_attention_heads)
        elif target.endswith("attn_k.weight"):
            a = _permute(a, cfg.num_key_value_heads)
        if quantize and a.ndim == 2 and a.shape[1] % 32 == 0:
            q = gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(target, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(target, np.ascontiguousarray(a))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
