"""The walkthrough notebook runs top to bottom, headless, on CPU: the loop as a notebook user meets it."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def test_walkthrough_executes(tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(NOTEBOOKS / "walkthrough.ipynb", as_version=4)
    assert not any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), "commit the notebook without outputs"
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    text = "\n".join(out.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs)
    assert "best shape at GQA 4: d_model 2560" in text
    assert "refit on" in text
    errors = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs if out.output_type == "error"]
    assert not errors, errors


def test_notebook_source_is_generated_from_its_script():
    """notebooks/walkthrough.ipynb is written by make_walkthrough.py; the two must not drift apart."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_walkthrough", NOTEBOOKS / "make_walkthrough.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    committed = nbformat.read(NOTEBOOKS / "walkthrough.ipynb", as_version=4)
    assert [c.source for c in committed.cells] == [c.source for c in module.build().cells]
