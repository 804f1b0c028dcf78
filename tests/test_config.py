"""``Config``'s fields say what they are, and every reader takes it from there."""

import dataclasses
import importlib.util
import pathlib

import pytest

from lstm_jax import training
from lstm_jax.training import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _train_py():
    spec = importlib.util.spec_from_file_location("train_cli", ROOT / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_field_says_its_kind_and_whether_a_resume_or_the_processes_care():
    for f in dataclasses.fields(training.Config):
        assert f.metadata["kind"] in training.KINDS, f.name
        assert set(f.metadata) == {"kind", "rule", "resumable", "agreed", "evaluate"}, f.name
    kinds = [training.settings(kind=k) for k in training.KINDS]
    assert sum(kinds, ()) == tuple(
        sorted(training.settings(), key=lambda n: [i for i, k in enumerate(kinds) if n in k])
    )
    assert training.MODEL_SETTINGS == training.settings(kind="model")
    assert training.RESUMABLE == training.settings(resumable=True)
    assert training.RESUMABLE[-1] == "resume"  # the switch itself, not a change


@pytest.mark.parametrize("name", [n for n in training.settings() if n != "resume"])
def test_check_resume_refuses_exactly_the_settings_that_may_not_change(name):
    base = training.Config()
    f = {f.name: f for f in dataclasses.fields(training.Config)}[name]
    other = {
        bool: lambda v: not v,
        int: lambda v: v + 1,
        float: lambda v: v / 2 if v else 0.1,
        str: lambda v: v + "x",
        tuple: lambda v: (*v, 8),
        type(None): lambda v: 2,
    }[type(f.default)](f.default)
    changed = dataclasses.replace(base, **{name: other}, resume=True)
    if f.metadata["resumable"]:
        config_lib.check_resume(base, changed, 0)
    else:
        with pytest.raises(training.ConfigError, match=name):
            config_lib.check_resume(base, changed, 0)


def test_train_py_groups_its_flags_by_kind_and_names_every_resumable_one():
    cli = _train_py()
    parser = cli.build_parser()
    groups = {g.title: {a.dest for a in g._group_actions} for g in parser._action_groups}
    not_settings_flags = {"resume", "distributed"}  # among the run's own flags
    library_only = {"max_train_examples"}  # for notebooks and tests
    for kind in training.KINDS:
        assert (
            set(training.settings(kind=kind)) - not_settings_flags - library_only <= (groups[kind])
        )
    resume_help = next(a.help for a in parser._actions if a.dest == "resume")
    for name in training.RESUMABLE[:-1]:
        assert cli._flag(name) in resume_help, name
    assert "--tensorboard" in resume_help


def test_the_processes_compare_what_the_run_computes_not_where_it_runs():
    agreed = set(training.settings(agreed=True))
    assert {"cell", "units", "batch_size", "seed", "dataset", "resume"} <= agreed
    assert not agreed & {"progress", "data_dir", "download", "distributed", "tensorboard"}
