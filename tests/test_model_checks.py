"""A model is checked before a run starts (``lstm_jax.training.model_checks``): what a
library caller gets when a module of their own fails."""

import traceback

import flax.linen as fnn
import pytest

from lstm_jax import linen as lnn
from lstm_jax.training import ConfigError, model_checks


class _Mistake(Exception):
    pass


class _Broken(fnn.Module):
    @fnn.compact
    def __call__(self, x):
        raise _Mistake("a bug in the user's module")


def test_a_failing_module_is_one_message_with_its_own_exception_as_the_cause():
    with pytest.raises(ConfigError, match="_Broken cannot read inputs.*_Mistake") as info:
        model_checks.check_model(_Broken(), (28, 28), 10, masked=False)
    cause = info.value.__cause__
    assert isinstance(cause, _Mistake)
    frames = traceback.extract_tb(cause.__traceback__)
    assert any(f.name == "__call__" and f.filename == __file__ for f in frames)


def test_the_lessons_classifier_passes_and_says_how_it_is_called():
    calls = model_checks.check_model(lnn.Classifier(), (28, 28), 10, masked=True)
    assert calls.switch == "deterministic" and calls.takes_mask and calls.collections == ()
