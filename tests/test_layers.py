"""The package's layers: imports run downwards only, and ``import lstm_jax`` is the model."""

import subprocess
import sys

import pytest

from tests import import_graph


def test_imports_run_downwards_without_cycles():
    g = import_graph.graph()
    assert "lstm_jax.training.loop" in g and "lstm_jax.linen" in g
    assert import_graph.upward(g) == []
    assert import_graph.cycles(g) == []


def test_the_checks_find_an_upward_import_and_a_cycle():
    g = {
        "lstm_jax.linen": {"lstm_jax.training.steps"},
        "lstm_jax.training.steps": {"lstm_jax.training.optim"},
        "lstm_jax.training.optim": {"lstm_jax.training.steps"},
    }
    assert import_graph.upward(g) == [
        "lstm_jax.linen (model) -> lstm_jax.training.steps (training)"
    ]
    assert import_graph.cycles(g) == [
        ["lstm_jax.training.steps", "lstm_jax.training.optim", "lstm_jax.training.steps"]
    ]


@pytest.mark.slow
def test_import_lstm_jax_loads_the_model_layer_only():
    code = (
        "import sys, lstm_jax\n"
        "heavy = ('optax', 'orbax', 'tensorflow', 'lstm_jax.training', 'lstm_jax.data',"
        " 'lstm_jax._process')\n"
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))\n"
        "lstm_jax.load_run\n"
        "print('lstm_jax.training.runs' in sys.modules, 'optax' in sys.modules)\n"
    )
    steps_only = (
        "import sys\nfrom lstm_jax.training import steps\n"
        "print('orbax' in sys.modules, 'lstm_jax.training.loop' in sys.modules)\n"
    )
    out_steps = subprocess.run(
        [sys.executable, "-c", steps_only], capture_output=True, text=True, check=True
    ).stdout
    assert out_steps == "False False\n"  # the loop and orbax load when first used
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert out[0] == "[]"
    assert out[1] == "True True"  # load_run, asked for, brings the trainer


def test_lstm_jax_nn_is_linen_under_its_former_name():
    import lstm_jax
    import lstm_jax.nn
    from lstm_jax import linen, nn

    assert nn is linen and lstm_jax.nn is linen and lstm_jax.linen.LSTM is nn.LSTM
