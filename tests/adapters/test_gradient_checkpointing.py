"""gradient_checkpointing=True: the same gradients as without, with a freezer and with adapters; the
model is left as it was."""

import pytest
import torch

from finetune_lib import Callback, LayerFreezer
from finetune_lib.adapters import LoRA

from .helpers import GradientsAt, llama_and_tokenizer, text_records, tuner


class CountTopBlock(Callback):
    """Counts the forward calls of the top block's attention (twice per micro-batch when the block's activations
    are recomputed in backward; transformers checkpoints the block's `forward`, inside its hooks)."""

    def __init__(self):
        self.calls, self.handle = 0, None

    def on_fit_start(self, state):
        inner = state.model.get_base_model() if hasattr(state.model, "get_base_model") else state.model
        self.handle = inner.model.layers[-1].self_attn.register_forward_pre_hook(self._count)

    def _count(self, module, args):
        self.calls += 1

    def on_fit_end(self, state):
        self.handle.remove()


def gradients(checkpointing: bool, **kw):
    model, tok = llama_and_tokenizer()
    grads, count = GradientsAt(), CountTopBlock()
    t = tuner(model, tok, max_steps=1, batch_size=8, gradient_checkpointing=checkpointing,
              callbacks=[grads, count], **kw)
    t.fit(text_records(8))
    return grads.grads, count.calls, t


@pytest.mark.parametrize("setup", [
    {},
    {"freezer": LayerFreezer(train_last=2)},
    {"adapter": LoRA(r=4, alpha=8, dropout=0.0)},
    {"adapter": LoRA(r=4, alpha=8, dropout=0.0), "freezer": LayerFreezer(train_last=2)},
], ids=["full", "freezer", "lora", "lora+freezer"])
def test_same_gradients_with_and_without(setup):
    plain, plain_calls, _ = gradients(False, **setup)
    checked, checked_calls, tuner_ = gradients(True, **{k: (type(v)(**vars(v)) if k == "adapter" else v)
                                                        for k, v in setup.items()})
    assert plain_calls == 1 and checked_calls == 2  # the top block ran again in backward
    assert plain.keys() == checked.keys() and plain
    for name in plain:
        torch.testing.assert_close(checked[name], plain[name], rtol=0, atol=0, msg=name)
    # off again after fit: the model is left as it was
    inner = tuner_.model.get_base_model() if hasattr(tuner_.model, "get_base_model") else tuner_.model
    assert not any(getattr(m, "gradient_checkpointing", False) for m in inner.modules())


def test_a_model_without_support_is_refused_with_the_fix():
    class Plain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([torch.nn.Linear(4, 4) for _ in range(2)])

    from finetune_lib.training.model_setup import activation_checkpointing

    with pytest.raises(ValueError, match=r"does not support activation checkpointing.*gradient_checkpointing=False"):
        with activation_checkpointing(Plain()):
            pass


def test_checkpointing_already_on_stays_on():
    from finetune_lib.training.model_setup import activation_checkpointing

    model, _ = llama_and_tokenizer()
    model.activation_checkpointing_enable()
    with activation_checkpointing(model):
        pass
    assert model.model.layers[0].gradient_checkpointing
