"""A crafted or damaged trainer state is refused on resume, before anything is used or written."""

import pytest
import torch

from finetune_lib import FineTuner
from finetune_lib.training.checkpoint import check_trainer_state

from .helpers import classification_records, model_and_tokenizer


def tuner(out, **kw):
    model, tok = model_and_tokenizer("bert", "classification", num_labels=2)
    return FineTuner(model, "classification", tokenizer=tok, output_dir=out, batch_size=8, save_every=2,
                     progress=False, **kw)


def tamper(path, **position):
    state = torch.load(path / "trainer_state.pt", weights_only=True)
    state["position"].update(position)
    torch.save(state, path / "trainer_state.pt")


@pytest.mark.parametrize("position,match", [
    ({"step": -5}, r"step is -5; it must be an integer >= 0"),
    ({"epoch": -1}, r"epoch is -1"),
    ({"batch_in_epoch": 2.5}, r"batch_in_epoch is 2.5"),
    ({"step": True}, r"step is True"),
    ({"step": 7}, r"its step \(7\) is not the one in the folder's name \(checkpoint-00000002\)"),
])
def test_a_crafted_position_is_refused_on_resume(tmp_path, position, match):
    tuner(tmp_path / "run", max_steps=2).fit(classification_records(32))
    checkpoint = tmp_path / "run" / "checkpoints" / "checkpoint-00000002"
    tamper(checkpoint, **position)
    before = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    with pytest.raises(RuntimeError, match=rf"trainer_state.pt is not a valid trainer state: {match}.*delete this "
                                           "checkpoint folder"):
        tuner(tmp_path / "run", max_steps=4).fit(classification_records(32), resume=True)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == before  # nothing written


def test_check_trainer_state_shapes(tmp_path):
    good = {"optimizer": {}, "schedule": {"last_step": 3}, "rng": {}, "callbacks": {},
            "position": {"step": 3, "epoch": 0, "batch_in_epoch": 3}}
    check_trainer_state(good, tmp_path / "checkpoint-00000003")
    check_trainer_state(good, tmp_path / "renamed-by-hand")  # the name is only compared when it is a step
    with pytest.raises(RuntimeError, match=r"it lacks \['position'\]"):
        check_trainer_state({k: v for k, v in good.items() if k != "position"}, tmp_path)
    with pytest.raises(RuntimeError, match=r"schedule.last_step is -1"):
        check_trainer_state({**good, "schedule": {"last_step": -1}}, tmp_path)
    with pytest.raises(RuntimeError, match="holds a list"):
        check_trainer_state([], tmp_path)
