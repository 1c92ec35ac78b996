"""The tokenization cache: reused when nothing changed, never when something did, rebuilt when corrupt."""

from __future__ import annotations

import inspect
import json
import logging

import pytest

datasets = pytest.importorskip("datasets")

from finetune_lib import Preprocessor  # noqa: E402
from finetune_lib.data import encode_cache  # noqa: E402
from finetune_lib.data.arrow_features import ArrowFeatures  # noqa: E402
from finetune_lib.data.encode_cache import cache_root, encode_key  # noqa: E402
from finetune_lib.testing import tiny_tokenizer  # noqa: E402

from ..training.helpers import classification_records, generation_records  # noqa: E402

#: Preprocessor arguments that change how encoding runs, not what it gives: not in the key
NOT_IN_KEY = {"batch_size": 7, "num_proc": 2, "cache_dir": "elsewhere"}


class TokenizerSpy:
    """Counts calls of the tokenizer class (the instance's __call__ is looked up on its type)."""

    def __init__(self, monkeypatch, tok):
        self.calls = 0
        original = type(tok).__call__

        def spy(this, *args, **kwargs):
            self.calls += 1
            return original(this, *args, **kwargs)

        monkeypatch.setattr(type(tok), "__call__", spy)


@pytest.fixture
def data():
    records = classification_records(80)
    return records, datasets.Dataset.from_list(records)


def _pre(tok, records, cache, task="classification", **kw):
    return Preprocessor(cache_dir=cache, **kw).setup(tok, task, records)


def test_second_encode_reads_the_cache_without_tokenizing(tmp_path, data, monkeypatch):
    records, ds = data
    tok = tiny_tokenizer(kind="encoder")
    first = _pre(tok, records, tmp_path, max_length=8).encode(ds)
    spy = TokenizerSpy(monkeypatch, tok)
    pre = _pre(tok, records, tmp_path, max_length=8)
    again = pre.encode(ds)
    assert spy.calls == 0
    assert isinstance(again, ArrowFeatures) and list(again) == list(first)
    assert pre.stats["train"].truncated == first_stats_truncated(tok, records) > 0  # statistics come back too
    assert len([p for p in tmp_path.iterdir()]) == 1  # one entry, no temporary folder left
    # the same data in another Dataset object (same content) hits the same entry
    spy.calls = 0
    _pre(tok, records, tmp_path, max_length=8).encode(datasets.Dataset.from_list(records))
    assert spy.calls == 0


def first_stats_truncated(tok, records):
    pre = Preprocessor(cache_dir=False, max_length=8).setup(tok, "classification", records)
    pre.encode(records)
    return pre.stats["train"].truncated


def test_a_changed_setting_tokenizes_again(tmp_path, data, monkeypatch):
    records, ds = data
    tok = tiny_tokenizer(kind="encoder")
    _pre(tok, records, tmp_path).encode(ds)
    spy = TokenizerSpy(monkeypatch, tok)
    changed = _pre(tok, records, tmp_path, max_length=6).encode(ds)
    assert spy.calls > 0 and max(changed.lengths()) == 6
    assert len(list(tmp_path.iterdir())) == 2


def _keys_for(task, records, tok, variants):
    ds = datasets.Dataset.from_list(records)
    base = Preprocessor().setup(tok, task, records)
    keys = {"base": encode_key(base, ds, None)}
    for name, value in variants.items():
        pre = Preprocessor(**{name: value}).setup(tok, task, records)
        keys[name] = encode_key(pre, ds, None)
    return keys


def test_every_setting_that_changes_the_output_changes_the_key():
    tok = tiny_tokenizer(kind="decoder")
    tok.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
    generation = {"clean": ["whitespace"], "max_length": 16, "strict": True, "prompt_template": "Q: {prompt}",
                  "use_chat_template": True, "pack": True, "pack_length": 32,
                  "chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}", "train_on": "all",
                  "label_all_subtokens": True}
    classification = {"labels": ["positive", "negative"]}
    covered = set(generation) | set(classification) | set(NOT_IN_KEY)
    params = set(inspect.signature(Preprocessor.__init__).parameters) - {"self"}
    assert params == covered, f"a new Preprocessor setting must be in the cache key (or NOT_IN_KEY): {params - covered}"
    for task, records, variants in [("causal_lm", generation_records(10), generation),
                                    ("classification", classification_records(10), classification)]:
        keys = _keys_for(task, records, tok, variants)
        assert len(set(keys.values())) == len(keys), keys
    same = _keys_for("classification", classification_records(10), tok, NOT_IN_KEY)
    assert len(set(same.values())) == 1


def test_task_data_and_tokenizer_are_in_the_key():
    records = classification_records(20)
    tok = tiny_tokenizer(kind="encoder")
    ds = datasets.Dataset.from_list(records)
    key = encode_key(Preprocessor().setup(tok, "classification", records), ds, None)
    other_data = datasets.Dataset.from_list(records[:-1])
    assert encode_key(Preprocessor().setup(tok, "classification", records), other_data, None) != key
    assert encode_key(Preprocessor().setup(tok, "classification", records), ds.select(range(19)), None) != key
    assert encode_key(Preprocessor().setup(tok, "regression", None), ds, None) != key
    assert encode_key(Preprocessor().setup(tiny_tokenizer(kind="decoder"), "classification", records), ds, None) != key
    assert encode_key(Preprocessor().setup(tiny_tokenizer(300, kind="encoder"), "classification", records),
                      ds, None) != key
    tok.truncation_side = "left"
    assert encode_key(Preprocessor().setup(tok, "classification", records), ds, None) != key
    assert encode_key(Preprocessor().setup(tok, "classification", records), ds, 5) != encode_key(
        Preprocessor().setup(tok, "classification", records), ds, None)


def test_a_cleaning_callable_is_keyed_by_its_source_and_a_sourceless_one_skips_the_cache(tmp_path, data):
    records, ds = data
    tok = tiny_tokenizer(kind="encoder")

    def upper(text):
        return text.upper()

    def lower(text):
        return text.lower()

    key_upper = encode_key(_pre(tok, records, tmp_path, clean=[upper]), ds, None)
    assert key_upper is not None and key_upper != encode_key(_pre(tok, records, tmp_path, clean=[lower]), ds, None)
    sourceless = eval("lambda text: text")  # no source to read
    pre = _pre(tok, records, tmp_path, clean=[sourceless])
    assert encode_key(pre, ds, None) is None
    assert len(pre.encode(ds)) == len(records)
    assert not list(tmp_path.iterdir())


def _entry(tmp_path):
    (entry,) = [p for p in tmp_path.iterdir()]
    return entry


def _corrupt_truncate(entry):
    arrow = next(entry.glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:-40])
    meta = json.loads((entry / "meta.json").read_text())
    meta["files"][0]["bytes"] = arrow.stat().st_size  # even with sizes that agree, the file does not check out
    (entry / "meta.json").write_text(json.dumps(meta))


def _corrupt_key(entry):
    meta = json.loads((entry / "meta.json").read_text())
    meta["key"] = "0" * 32
    (entry / "meta.json").write_text(json.dumps(meta))


def _corrupt_meta(entry):
    (entry / "meta.json").write_text("{not json")


def _corrupt_bytes(entry):
    arrow = next(entry.glob("*.arrow"))
    raw = bytearray(arrow.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    arrow.write_bytes(bytes(raw))


def _remove_file(entry):
    next(entry.glob("*.arrow")).unlink()


@pytest.mark.parametrize("corrupt", [_corrupt_truncate, _corrupt_key, _corrupt_meta, _corrupt_bytes, _remove_file])
def test_a_corrupt_entry_is_detected_logged_and_rebuilt(tmp_path, data, monkeypatch, caplog, corrupt):
    records, ds = data
    tok = tiny_tokenizer(kind="encoder")
    good = list(_pre(tok, records, tmp_path).encode(ds))
    corrupt(_entry(tmp_path))
    spy = TokenizerSpy(monkeypatch, tok)
    with caplog.at_level(logging.WARNING, logger="finetune_lib.data.encode_cache"):
        rebuilt = _pre(tok, records, tmp_path).encode(ds)
    assert "corrupt" in caplog.text
    assert spy.calls > 0 and list(rebuilt) == good
    spy.calls = 0
    assert list(_pre(tok, records, tmp_path).encode(ds)) == good and spy.calls == 0  # the rebuilt entry is good


def test_a_failed_encode_leaves_no_entry_and_no_temporary_folder(tmp_path):
    tok = tiny_tokenizer(kind="encoder")
    records = classification_records(40)
    pre = _pre(tok, records, tmp_path, max_length=4, strict=True)
    with pytest.raises(ValueError, match="strict=True"):
        pre.encode(datasets.Dataset.from_list(records))
    assert not list(tmp_path.iterdir())


def test_cache_folder_from_the_environment_and_off(tmp_path, data, monkeypatch):
    records, ds = data
    tok = tiny_tokenizer(kind="encoder")
    monkeypatch.setenv("FINETUNE_LIB_CACHE", str(tmp_path / "env"))
    assert cache_root(None) == tmp_path / "env"
    assert cache_root(False) is None and cache_root(tmp_path / "x") == tmp_path / "x"
    _pre(tok, records, None).encode(ds)
    assert len(list((tmp_path / "env").iterdir())) == 1
    monkeypatch.delenv("FINETUNE_LIB_CACHE")
    assert cache_root(None).parts[-3:] == (".cache", "finetune_lib", "tokenized")
    off = _pre(tok, records, False).encode(ds)
    assert len(off) == len(records) and list(off) == _pre(tok, records, False).encode(records)


def test_a_dataset_read_from_files_is_keyed_by_its_datasets_fingerprint(tmp_path, data, monkeypatch):
    records, ds = data
    ds.save_to_disk(str(tmp_path / "ds"))
    tok = tiny_tokenizer(kind="encoder")
    loaded = datasets.load_from_disk(str(tmp_path / "ds"))
    assert loaded.cache_files
    assert encode_cache.data_fingerprint(loaded).startswith("datasets:")
    first = _pre(tok, records, tmp_path / "cache").encode(loaded)
    spy = TokenizerSpy(monkeypatch, tok)
    again = _pre(tok, records, tmp_path / "cache").encode(datasets.load_from_disk(str(tmp_path / "ds")))
    assert spy.calls == 0 and list(again) == list(first)


def test_single_process_group_fills_and_reads_the_cache(tmp_path, data, monkeypatch):
    import torch.distributed as td

    records, ds = data
    tok = tiny_tokenizer(kind="encoder")
    td.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        first = _pre(tok, records, tmp_path / "cache").encode(ds)
        spy = TokenizerSpy(monkeypatch, tok)
        again = _pre(tok, records, tmp_path / "cache").encode(ds)
    finally:
        td.destroy_process_group()
    assert spy.calls == 0 and list(again) == list(first)
