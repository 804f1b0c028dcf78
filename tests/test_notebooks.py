"""Every notebook runs top to bottom, in its QUICK setting, on the prepared data."""

import os
import pathlib
import re
import time

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_three_notebooks():
    assert [p.name for p in NOTEBOOKS] == [
        "01_rnns_and_lstms.ipynb",
        "02_sequential_mnist.ipynb",
        "03_counting_parameters.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stored_clean_with_badge_and_install_cell(path):
    nb = nbformat.read(path, as_version=4)
    assert "colab-badge.svg" in nb.cells[0].source and path.name in nb.cells[0].source
    assert '"google.colab" in sys.modules' in nb.cells[1].source
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "store without outputs"
    assert any("QUICK = False  # @param" in c.source for c in nb.cells)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path, report, monkeypatch):
    if not os.environ.get("TFDS_DATA_DIR") and os.environ.get("CI"):
        pytest.fail("CI runs the notebooks on the prepared data: set TFDS_DATA_DIR")
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:  # the one switch between the lesson and the small CI setting
        cell.source = cell.source.replace("QUICK = False  # @param", "QUICK = True  # @param")
    monkeypatch.setenv("MPLBACKEND", "Agg")  # plots render without a display
    start = time.perf_counter()
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    seconds = time.perf_counter() - start
    text = "\n".join(
        out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
    )
    figures = re.findall(
        r"Total params: [\d,]+|test accuracy: [\d.]+%|largest difference[^\n]*", text
    )
    report(f"notebook {path.name}: executed in {seconds:.1f} s; " + "; ".join(figures))
