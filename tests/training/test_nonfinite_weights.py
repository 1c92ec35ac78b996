"""No NaN/inf ever reaches a checkpoint or a saved model, NaN gradients are caught without clipping,
and the non-finite error only calls a checkpoint intact when it was checked finite."""

import pytest
import torch
from safetensors.torch import load_file

from finetune_lib import Callback
from finetune_lib.training.checkpoint import list_checkpoints, save_checkpoint
from finetune_lib.training.guards import (
    DeviceFiniteGuard,
    NonFiniteLossError,
    gradient_norm,
    nonfinite_tensors,
)

from .helpers import classification_records
from .test_guards import make


class NanGradientAt(Callback):
    """A tensor hook on the classifier's weight returns a NaN gradient during optimizer step `step`."""

    def __init__(self, step):
        self.step, self.armed, self.before, self.handle = step, False, None, None

    def on_fit_start(self, state):
        weight = state.model.classifier.weight
        self.handle = weight.register_hook(lambda g: g * float("nan") if self.armed else g)

    def on_batch_start(self, state):
        self.armed = state.step + 1 == self.step and self.before is None  # once: a skipped step is not retried
        if self.armed:
            self.before = {k: v.clone() for k, v in state.model.state_dict().items()}

    def on_fit_end(self, state):
        self.handle.remove()


class DivergeAt(Callback):
    """An absurd learning rate for optimizer step `step` only: the loss stays finite, the weights become inf."""

    def __init__(self, step):
        self.step = step

    def on_before_optimizer_step(self, state):
        if state.step + 1 == self.step:
            for group in state.optimizer.param_groups:
                group["lr"] = 1e38  # AdamW's first steps divide by 1 - beta1 ** t: the update overflows


@pytest.mark.parametrize("device_path", [False, True])
def test_nan_gradient_without_clipping_stops_before_the_weights_change(device_path):
    hook = NanGradientAt(3)
    tuner = make(callbacks=[hook], max_grad_norm=None, dropout=0.0)
    if device_path:  # what CUDA does: the fused kernel skips the step, counted on the device
        tuner._host_reads_free, tuner._device_guard = False, True
    match = "skipped on the device" if device_path else r"gradient norm is not finite at step 3"
    with pytest.raises(NonFiniteLossError, match=match):
        tuner.fit(classification_records(48))
    for k, v in tuner.model.state_dict().items():
        assert torch.equal(v, hook.before[k]), k


def test_nan_gradient_without_clipping_can_be_skipped():
    tuner = make(callbacks=[NanGradientAt(3)], max_grad_norm=None, on_nonfinite="skip")
    history = tuner.fit(classification_records(48))
    assert history[-1]["train/skipped_steps"] == 1
    assert all(torch.isfinite(p).all() for p in tuner.model.parameters())


def test_diverged_weights_are_never_checkpointed_and_the_message_is_true(tmp_path):
    tuner = make(tmp_path / "run", callbacks=[DivergeAt(3)], save_every=2, dropout=0.0)
    with pytest.raises(NonFiniteLossError) as error:
        tuner.fit(classification_records(48))
    message = str(error.value)
    root = tmp_path / "run" / "checkpoints"
    kept = list_checkpoints(root)
    assert [p.name for p in kept] == ["checkpoint-00000002"]  # nothing written after the divergence
    for path in kept:
        assert all(torch.isfinite(t).all() for t in load_file(str(path / "model.safetensors")).values())
    assert "already hold NaN or inf values" in message  # not "the weights are those before this step" alone
    assert "checkpoint-00000002) is intact: its weights and optimizer state were checked finite" in message


def test_a_checkpoint_with_nonfinite_weights_is_refused_at_once(tmp_path):
    tuner = make(tmp_path / "run", callbacks=[DivergeAt(1)], save_every=1, dropout=0.0, max_steps=3)
    with pytest.raises(NonFiniteLossError, match=r"checkpoint-00000001 was not written: the weights .* hold NaN or "
                                                 r"inf.*no earlier checkpoint"):
        tuner.fit(classification_records(48))
    assert not list((tmp_path / "run" / "checkpoints").glob("*"))  # no folder, not even a temporary one


def test_save_refuses_nonfinite_weights(tmp_path):
    tuner = make(max_steps=1)
    tuner.fit(classification_records(16))
    with torch.no_grad():
        tuner.model.classifier.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"not saved to .*final.*classifier.weight"):
        tuner.save(tmp_path / "final")
    assert not (tmp_path / "final").exists()


def test_save_checkpoint_checks_weights_and_optimizer_state(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    state = {"optimizer": opt.state_dict()}
    save_checkpoint(tmp_path, 1, model, state, {}, keep=None)
    opt.state[model.bias]["exp_avg"][0] = float("inf")
    with pytest.raises(NonFiniteLossError, match=r"checkpoint-00000002 was not written: the optimizer state .*exp_avg"
                                                 r".*newest complete checkpoint is checkpoint-00000001"):
        save_checkpoint(tmp_path, 2, model, {"optimizer": opt.state_dict()}, {}, keep=None)
    with pytest.raises(ValueError, match="step must be an integer >= 0"):
        save_checkpoint(tmp_path, -3, model, state, {})
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-00000001"]


def test_gradient_norm_and_nonfinite_tensors():
    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(1))]
    assert gradient_norm(params) is None
    params[0].grad, params[1].grad = torch.ones(3), torch.full((2,), 2.0)
    assert float(gradient_norm(params)) == pytest.approx((3 + 8) ** 0.5)
    params[1].grad[1] = float("nan")
    assert not torch.isfinite(gradient_norm(params))
    assert nonfinite_tensors([("a", torch.ones(2)), ("b", torch.tensor([1.0, float("-inf")])),
                              ("steps", torch.tensor(3))]) == ["b"]
    guard = DeviceFiniteGuard(torch.device("cpu"))
    opt = torch.optim.SGD(params, lr=0.1)
    assert not bool(guard.mark(opt, torch.tensor(1.0), gradient_norm(params)))
