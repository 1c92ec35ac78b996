"""The documentation: its examples run, and the site builds in strict mode (broken links and
API references fail)."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
EXAMPLES = sorted(p for p in (DOCS / "examples").glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(script, tmp_path, monkeypatch):
    """Each page's code lives in docs/examples/*.py (included with snippets); run it with tiny models."""
    monkeypatch.setenv("FINETUNE_LIB_TINY", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.syspath_prepend(str(script.parent))
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(script), run_name="__main__")


def test_every_snippet_section_exists():
    """`--8<-- "file.py:section"` needs `# --8<-- [start:section]` in the file (checked here with a
    clear message; the strict build checks it too)."""
    import re

    for page in DOCS.rglob("*.md"):
        for name, section in re.findall(r'--8<-- "([\w./-]+\.py):(\w+)"', page.read_text()):
            source = (DOCS / "examples" / name).read_text()
            assert f"[start:{section}]" in source and f"[end:{section}]" in source, (page, name, section)


def test_cli_page_lists_every_config_key():
    from finetune_lib.cli import KNOWN_KEYS

    page = (DOCS / "cli.md").read_text()
    missing = [key for key in KNOWN_KEYS if f"| `{key}` |" not in page]
    assert not missing, f"docs/cli.md does not describe {missing}"


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    for page in ("index.html", "quickstart/index.html", "reference/training/index.html",
                 "howto/custom-metric/index.html"):
        assert (tmp_path / "site" / page).is_file(), page
    # the included example code made it into the page
    assert "CalibrationError" in (tmp_path / "site" / "howto" / "custom-metric" / "index.html").read_text()
