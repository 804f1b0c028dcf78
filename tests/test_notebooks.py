"""Every notebook runs top to bottom, in its QUICK setting, on the prepared data, and shows
its plots on the notebook's own (inline) matplotlib backend."""

import importlib.util
import json
import os
import pathlib
import re
import time

import jax
import jax.numpy as jnp
import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

import lstm_jax
from lstm_jax import linen

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
_spec = importlib.util.spec_from_file_location("colab", ROOT / "notebooks" / "colab.py")
colab = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(colab)


def test_there_are_four_notebooks():
    assert [p.name for p in NOTEBOOKS] == [
        "01_rnns_and_lstms.ipynb",
        "02_sequential_mnist.ipynb",
        "03_counting_parameters.ipynb",
        "04_next_character.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stored_clean_with_badge_and_install_cell(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[0].source.startswith(colab.badge(path.name) + "\n")
    assert nb.cells[1].source == colab.install_cell()
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "store without outputs"
    uses_quick = any("QUICK" in c.source and "@param" not in c.source for c in nb.cells)
    defines_quick = any("QUICK = False  # @param" in c.source for c in nb.cells)
    assert uses_quick == defines_quick, "QUICK is defined where it is used, and only there"


def test_colab_headers_come_from_the_repository_address():
    assert colab.stale() == []
    assert colab.repository().startswith("https://github.com/")
    assert f'!pip install -q "lstm_jax @ git+{colab.repository()}"' in colab.install_cell()


def test_readme_links_every_notebook_with_its_badge():
    readme = (ROOT / "README.md").read_text()
    for path in NOTEBOOKS:
        assert colab.badge(path.name) in readme, path.name


# Cells the test adds around a notebook: the first records, at each ``plt.show()``, what the
# figure shows (its titles and axis labels, read from the figure objects); the last prints
# the records as one JSON line.
_RECORD_FIGURES = """
import json as _json
import matplotlib.pyplot as _plt

_figures, _show = [], _plt.show


def _recorded_show(*args, **kwargs):
    for number in _plt.get_fignums():
        figure = _plt.figure(number)
        suptitle = figure._suptitle.get_text() if figure._suptitle else ""
        axes = [
            dict(title=ax.get_title(), x=ax.get_xlabel(), y=ax.get_ylabel(), shown=ax.axison)
            for ax in figure.axes
            if ax.get_label() != "<colorbar>"
        ]
        _figures.append(dict(suptitle=suptitle, axes=axes))
    return _show(*args, **kwargs)


_plt.show = _recorded_show
"""
_PRINT_FIGURES = "print('FIGURES ' + _json.dumps(_figures))"


def execute(path: pathlib.Path, workdir: pathlib.Path) -> nbformat.NotebookNode:
    """Runs the notebook in QUICK mode in a fresh kernel, in ``workdir``, recording each
    figure it shows (``figures``)."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:  # the one switch between the lesson and the small CI setting
        cell.source = cell.source.replace("QUICK = False  # @param", "QUICK = True  # @param")
    nb.cells.insert(0, nbformat.v4.new_code_cell(_RECORD_FIGURES))
    nb.cells.append(nbformat.v4.new_code_cell(_PRINT_FIGURES))
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    ).execute()
    return nb


def figures(nb: nbformat.NotebookNode) -> list[dict]:
    """What each figure the notebook showed had: ``suptitle``, and per axes (colorbars
    aside) its ``title``, ``x`` and ``y`` labels and whether it is ``shown``."""
    line = nb.cells[-1].outputs[0]["text"]
    return json.loads(line.removeprefix("FIGURES "))


def unexplained(figure: dict) -> list[str]:
    """What a figure lacks: a title (its own or one per panel), and on every panel that
    shows its axes, both axis labels."""
    lacks = []
    if not figure["suptitle"] and not all(ax["title"] for ax in figure["axes"]):
        lacks.append("a title")
    for n, ax in enumerate(figure["axes"]):
        if ax["shown"] and not (ax["x"] and ax["y"]):
            lacks.append(f"axis labels on panel {n} ({ax['title'] or 'untitled'})")
    return lacks


def cells_missing_a_plot(nb: nbformat.NotebookNode) -> list[int]:
    """The indices of cells that call ``plt.show()`` yet output no ``image/png``."""
    return [
        n
        for n, cell in enumerate(nb.cells)
        if cell.cell_type == "code"
        and "plt.show()" in cell.source
        and not any("image/png" in out.get("data", {}) for out in cell.outputs)
    ]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes_and_shows_every_plot(path, tmp_path, report, monkeypatch):
    if not os.environ.get("TFDS_DATA_DIR") and os.environ.get("CI"):
        pytest.fail("CI runs the notebooks on the prepared data: set TFDS_DATA_DIR")
    # As in a user's notebook: no MPLBACKEND, so the kernel draws with its inline backend.
    monkeypatch.delenv("MPLBACKEND", raising=False)
    start = time.perf_counter()
    nb = execute(path, tmp_path)
    seconds = time.perf_counter() - start
    assert cells_missing_a_plot(nb) == [], "a plt.show() that showed nothing"
    shown = figures(nb)
    plot_cells = [c for c in nb.cells if c.cell_type == "code" and "plt.show()" in c.source]
    assert len(shown) == len(plot_cells), "one figure per plot cell"
    assert {n: unexplained(f) for n, f in enumerate(shown) if unexplained(f)} == {}
    text = "\n".join(
        out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
    )
    if path.name.startswith("02_"):  # the JAX training loop reaches the lesson's accuracy
        loop = float(re.search(r"the loop's test accuracy: ([\d.]+)%", text).group(1))
        assert loop >= 94.0, loop
    if path.name.startswith("04_"):  # both trainings print a loss per character and a sample
        for who in ("the loop's", "the library's"):
            loss = float(re.search(rf"{who} validation loss: ([\d.]+) nats", text).group(1))
            assert loss < 3.31, (who, loss)  # below knowing only the characters' frequencies
        for header in ("temperature 0.5", "temperature 1.0", "temperature 1.5", "the library's"):
            assert re.search(rf"--- {header}[^\n]* ---\n+ROMEO:.{{150}}", text, re.DOTALL), header
    found = re.findall(
        r"Total params: [\d,]+|test accuracy: [\d.]+%|largest difference[^\n]*"
        r"|validation loss: [\d.]+ nats[^\n]*|differ by [^\n]*|validation loss: state[^\n]*",
        text,
    )
    titles = [f["suptitle"] or " / ".join(ax["title"] for ax in f["axes"]) for f in shown]
    report(
        f"notebook {path.name}: executed in {seconds:.1f} s; "
        + "; ".join(found)
        + f"; figures: {titles}"
    )


def test_notebook_04_trains_in_view_then_with_the_library_and_writes():
    nb = nbformat.read(ROOT / "notebooks" / "04_next_character.ipynb", as_version=4)
    code = "\n".join(cell.source for cell in nb.cells if cell.cell_type == "code")
    for used in ("jax.value_and_grad", "@jax.jit", "return_state=True", "initial_state=state"):
        assert used in code, used
    for used in ("training.train_and_evaluate(config, workdir)", "run.generate(", "temperature"):
        assert used in code, used
    assert "## Exercises" in nb.cells[-1].source


def test_notebook_04s_keras_code_runs_and_is_the_jax_model():
    """The Keras model 04 shows beside its JAX one trains, and has the same parameters."""
    keras = pytest.importorskip("keras")  # a test dependency, and Colab's
    nb = nbformat.read(ROOT / "notebooks" / "04_next_character.ipynb", as_version=4)
    markdown = "\n".join(cell.source for cell in nb.cells if cell.cell_type == "markdown")
    block = re.search(r"```python\n(.*?)```", markdown, re.DOTALL).group(1)
    x = np.random.default_rng(0).integers(0, 65, (32, 50)).astype(np.int32)
    namespace = {"x_windows": x, "y_windows": np.roll(x, -1, axis=1)}
    with jax.numpy_rank_promotion("allow"):  # Keras's optimizers broadcast by rank
        exec(block, namespace)
    assert isinstance(namespace["model"], keras.Sequential)
    shape = jax.ShapeDtypeStruct((1, 50), jnp.int32)
    model = linen.LanguageModel(vocab_size=65, embed=64, units=(256,))
    variables = jax.eval_shape(model.init, jax.random.key(0), shape)
    assert namespace["model"].count_params() == lstm_jax.count_params(variables) == 349_569
    assert "349,569" in markdown


def test_notebook_02_ends_by_loading_its_run_and_predicting():
    nb = nbformat.read(ROOT / "notebooks" / "02_sequential_mnist.ipynb", as_version=4)
    code = [cell.source for cell in nb.cells if cell.cell_type == "code"]
    assert "training.train_and_evaluate(config, workdir)" in "\n".join(code)
    assert "jax.value_and_grad" in "\n".join(code) and "@jax.jit" in "\n".join(code)
    assert "lstm_jax.load_run(workdir)" in code[-1] and "run.predict(" in code[-1]
