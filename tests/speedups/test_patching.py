"""Patched forwards: the class forward comes back, and a forward set on the instance is kept."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from finetune_lib.speedups import patched_forwards
from finetune_lib.speedups.fast_dropout import fast_dropout


def test_the_patch_is_removed_and_the_class_forward_comes_back():
    layer = nn.Linear(2, 2)
    with pytest.raises(RuntimeError), patched_forwards([layer], lambda m: lambda x: x * 0) as n:
        assert n == 1 and torch.equal(layer(torch.ones(1, 2)), torch.zeros(1, 2))
        raise RuntimeError("boom")
    assert "forward" not in vars(layer)


def test_a_forward_set_on_the_instance_is_put_back_the_same_object():
    layer = nn.Linear(2, 2)
    hooked = layer.forward  # a bound method, as accelerate's hooks wrap it

    def own(x):
        return hooked(x) + 1

    layer.forward = own
    with patched_forwards([layer], lambda m: lambda x: x):
        assert layer.forward is not own
    assert vars(layer)["forward"] is own


def test_a_forward_set_inside_the_block_by_someone_else_stays():
    layer = nn.Linear(2, 2)

    def theirs(x):
        return x

    with patched_forwards([layer], lambda m: lambda x: x * 0):
        layer.forward = theirs
    assert vars(layer)["forward"] is theirs


def test_modules_with_their_own_forward_are_not_patched():
    model = nn.Sequential(nn.Dropout(0.5), nn.Dropout(0.5))
    own = model[1].forward
    model[1].forward = own
    with fast_dropout(model) as n:
        assert n == 1 and vars(model[1])["forward"] is own
    assert "forward" not in vars(model[0]) and vars(model[1])["forward"] is own
