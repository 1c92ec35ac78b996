"""The notebooks run top to bottom (with tiny models: FINETUNE_LIB_TINY=1) and are stored without outputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
NAMES = ["quickstart_classification", "generation"]


def test_both_notebooks_exist():
    assert sorted(p.stem for p in NOTEBOOKS) == sorted(NAMES)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_stored_without_outputs(path):
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [] and cell.get("execution_count") is None, f"{path.name}: clear outputs"


@pytest.fixture
def python3_kernel(tmp_path, monkeypatch):
    """A `python3` kernelspec that runs this interpreter (the venv's), found before any other."""
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (finetune_lib tests)", "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    for name, value in {"FINETUNE_LIB_TINY": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                        "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}.items():
        monkeypatch.setenv(name, value)
    return "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, python3_kernel):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = nbformat.read(path, as_version=4)
    work = tmp_path / "work"
    work.mkdir()
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name=python3_kernel,
                                     resources={"metadata": {"path": str(work)}})
    client.execute()  # raises CellExecutionError with the failing cell and its traceback
    outputs = "".join(o.get("text", "") + json.dumps(o.get("data", {})) for c in nb.cells
                      if c.cell_type == "code" for o in c.outputs)
    assert "Traceback" not in outputs
    assert (work / "runs").is_dir()
