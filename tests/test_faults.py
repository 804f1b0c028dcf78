"""Faults lose nothing: a busy or crashed workdir, a changed resume, divergence, signals, a full
disk, damaged data or checkpoints, each reproduced on small fake data
(TFDS's mock_data, 512 examples) with what a user then sees and what is left on disk."""

import errno
import hashlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lstm_jax
from lstm_jax import data, training
from lstm_jax import linen as lnn
from lstm_jax.training import reporting, rundir
from tests.fakes import run_fake

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "tests" / "scripts"
SMALL = ("--units", "8", "--batch-size", "64", "--no-progress", "--cpu-devices", "1")


def _cmd(script, *args):
    return [sys.executable, str(SCRIPTS / script), *map(str, args)]


def _train_py(tmp_path, *args, script="train_on_fake_data.py", env=None, limit=None, cwd=ROOT):
    """``train.py`` on fake data in its own process; its fake TFDS directory in tmp_path."""
    first = () if limit is None else (limit,)
    return subprocess.run(
        _cmd(script, *first, "--data-dir", tmp_path / "tfds", *args),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def _start_held(tmp_path, point, *args, env=None):
    """``train.py`` on fake data in its own process, to be held at ``point`` (see
    ``tests/scripts/train_held.py``): ``_wait_for(process, "held: " + point)``, act, then
    ``_go_on(process)`` if it is to go on."""
    return subprocess.Popen(
        _cmd("train_held.py", point, "--data-dir", tmp_path / "tfds", *args),
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )


def _wait_for(process, text, timeout=120):
    """Reads the process's output until a line holds ``text``; returns what it read."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return "".join(seen)
    process.kill()
    process.communicate()
    raise AssertionError(f"never printed {text!r}; printed:\n{''.join(seen)}")


def _go_on(process) -> None:
    process.stdin.write("\n")
    process.stdin.flush()


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    return lines[0]


def _epochs_on_disk(workdir) -> list[int]:
    ckpts = pathlib.Path(workdir) / "checkpoints"
    return (
        sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) if ckpts.is_dir() else []
    )


def _digests(directory):
    return {
        p: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(pathlib.Path(directory).rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


# ------------------------------------------------------------- 1. one run per workdir


@pytest.mark.slow
def test_a_second_run_on_a_busy_workdir_is_refused_and_a_crashed_one_leaves_no_lock(tmp_path):
    run = tmp_path / "run"
    first = _start_held(tmp_path, "epoch:1", *SMALL, "--epochs", "4", "--workdir", run)
    _wait_for(first, "held: epoch:1")  # holds its workdir while the second one starts
    try:
        second = _train_py(tmp_path, *SMALL, "--epochs", "2", "--workdir", run)
    finally:
        _go_on(first)
    assert second.returncode == 1
    line = _one_error_line(second.stderr)
    assert f"--workdir {run} is in use by another run (pid {first.pid} on " in line
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr[-3000:]
    assert _epochs_on_disk(run) == [2, 3, 4]
    assert json.loads((run / "metrics.json").read_text())["config"]["epochs"] == 4

    # Killed outright (no clean-up at all): its lock goes with it, and the run resumes.
    crashed = _start_held(tmp_path, "epoch:2", *SMALL, "--workdir", tmp_path / "crashed")
    _wait_for(crashed, "held: epoch:2")  # epoch 1 is saved
    crashed.send_signal(signal.SIGKILL)
    crashed.communicate()
    resumed = _train_py(tmp_path, "--workdir", tmp_path / "crashed", "--resume", "--epochs", "2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from the checkpoint of epoch" in resumed.stdout


def test_default_workdirs_started_in_the_same_second_differ(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(rundir.time, "strftime", lambda _: "20261204-120000")  # one second
    names = [str(rundir.make_default()[0]) for _ in range(3)]
    assert len(set(names)) == 3 and all(pathlib.Path(n).is_dir() for n in names)
    assert names[1] == names[0] + "-2"


# ----------------------------------------------------------- 2. resume only what was run


@pytest.mark.slow
def test_resume_checks_the_settings_and_the_workdir(tmp_path):
    run = tmp_path / "run"
    out = _train_py(tmp_path, *SMALL, "--epochs", "3", "--workdir", run)
    assert out.returncode == 0, out.stderr[-3000:]
    before = _digests(run)

    cases = {
        ("--epochs", "2"): "error: --epochs 2 is fewer than the 3 the run has finished",
        ("--optimizer", "adamw", "--dataset", "fashion_mnist", "--seed", "5"): (
            "error: --optimizer adamw (the run's: adam); --seed 5 (the run's: 0); --dataset "
            "fashion_mnist (the run's: mnist): a resumed run keeps the settings"
        ),
        ("--validation-split", "0.1", "--batch-size", "32"): (
            "error: --batch-size 32 (the run's: 64); --validation-split 0.1 (the run's: 0.2)"
        ),
    }
    for flags, message in cases.items():
        out = _train_py(tmp_path, "--workdir", run, "--resume", *flags)
        assert out.returncode == 2 and _one_error_line(out.stderr).startswith(message), out.stderr
        assert "partial_restore" not in out.stderr
    out = _train_py(tmp_path, "--workdir", tmp_path / "mistyped", "--resume")
    assert out.returncode == 1 and "error: no run in" in _one_error_line(out.stderr)
    assert not (tmp_path / "mistyped").exists()
    assert _digests(run) == before  # nothing was trained or rewritten

    out = _train_py(
        tmp_path, "--workdir", run, "--resume", "--epochs", "4", "--learning-rate", "1e-4"
    )
    assert out.returncode == 0 and "epoch 4/4" in out.stdout, out.stderr[-3000:]
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert [h["learning_rate"] for h in history] == [1e-3, 1e-3, 1e-3, 1e-4]


# ------------------------------------------------- 3. no checkpoint of a diverged epoch


@pytest.mark.slow
@pytest.mark.parametrize(
    "flags, message",
    [
        # Adam's first step at 1e38 moves every weight by ~1e38: finite weights, and a
        # validation loss that is not (the case the issue reports).
        (
            ("--validation-split", "0.75", "--batch-size", "128", "--learning-rate", "1e38"),
            "error: the validation loss became NaN or infinite after epoch 1; training "
            "stopped and epoch 1 was not saved. No checkpoint was saved.",
        ),
    ],
    ids=["validation pass"],
)
def test_a_diverged_epoch_is_never_saved(tmp_path, flags, message):
    run = tmp_path / "run"
    out = _train_py(tmp_path, "--units", "8", "--no-progress", "--workdir", run, *flags)
    assert out.returncode == 1
    assert _one_error_line(out.stderr).startswith(message)
    assert _epochs_on_disk(run) == []


@pytest.mark.slow
def test_after_a_good_epoch_the_message_names_what_is_kept_and_resume_works(tmp_path):
    run_fake(tmp_path, epochs=1, optimizer="sgd", learning_rate=0.01)
    with pytest.raises(training.TrainingDiverged, match="The checkpoint of epoch 1 is kept"):
        run_fake(tmp_path, epochs=2, resume=True, optimizer="sgd", learning_rate=1e38)
    assert _epochs_on_disk(tmp_path / "run") == [1]
    result = run_fake(tmp_path, epochs=2, resume=True, optimizer="sgd", learning_rate=0.01)
    assert [h["epoch"] for h in result["history"]] == [1, 2]
    params = jax.tree.leaves(result["state"].params)
    assert all(np.isfinite(np.asarray(p)).all() for p in params)


# ------------------------------------------------------- 4. SIGINT and SIGTERM, any time


@pytest.mark.slow
@pytest.mark.parametrize("point", ["compiling", "epoch:1"])
def test_sigint_while_compiling_or_in_epoch_1_ends_cleanly_with_nothing_saved(tmp_path, point):
    p = _start_held(tmp_path, point, *SMALL, "--workdir", tmp_path / "run")
    _wait_for(p, f"held: {point}")  # the main thread is in JAX: tracing, or running the epoch
    p.send_signal(signal.SIGINT)
    stderr = p.communicate(timeout=60)[1]
    assert p.returncode == 130
    assert stderr.strip().endswith(
        "interrupted by SIGINT. No checkpoint was saved. (no epoch had finished)"
    ), stderr
    assert "Traceback" not in stderr
    assert _epochs_on_disk(tmp_path / "run") == []


@pytest.mark.slow
def test_sigterm_mid_epoch_keeps_the_finished_epochs_and_resumes(tmp_path):
    run = tmp_path / "run"
    p = _start_held(tmp_path, "epoch:2", *SMALL, "--epochs", "3", "--workdir", run)
    _wait_for(p, "held: epoch:2")  # epoch 1 is saved, epoch 2 is running in XLA
    p.send_signal(signal.SIGTERM)
    stderr = p.communicate(timeout=60)[1]
    assert p.returncode == 143
    assert "interrupted by SIGTERM. The checkpoint of epoch 1 is kept. Continue with: " in stderr
    assert "Traceback" not in stderr
    assert _epochs_on_disk(run) == [1]
    out = _train_py(tmp_path, "--workdir", run, "--resume", "--epochs", "2")
    assert out.returncode == 0 and "resumed from the checkpoint of epoch 1" in out.stdout


@pytest.mark.slow
def test_a_workdir_given_with_a_tilde_is_one_path_in_every_message(tmp_path):
    home = {"HOME": str(tmp_path)}  # "~/runs/x" quoted, so the shell does not expand it
    p = _start_held(tmp_path, "epoch:3", *SMALL, "--epochs", "3", "--workdir", "~/runs/x", env=home)
    _wait_for(p, "held: epoch:3")
    p.send_signal(signal.SIGTERM)
    stderr = p.communicate(timeout=60)[1]
    assert p.returncode == 143
    run = tmp_path / "runs" / "x"
    assert stderr.strip().endswith(
        "interrupted by SIGTERM. The checkpoints of epochs 1, 2 are kept. Continue with: "
        f"python train.py --workdir {run} --resume"
    ), stderr
    out = _train_py(tmp_path, "--workdir", "~/runs/x", "--resume", env=home)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith(f"run files: {run}")
    assert _epochs_on_disk(run) == [1, 2, 3] and not (ROOT / "~").exists()


@pytest.mark.slow
def test_sigint_during_a_save_finishes_that_checkpoint_first(tmp_path):
    run = tmp_path / "run"
    p = _start_held(tmp_path, "saving:1", *SMALL, "--epochs", "3", "--workdir", run)
    _wait_for(p, "held: saving:1")  # in the save, which goes on once it hears the signal
    p.send_signal(signal.SIGINT)
    stderr = p.communicate(timeout=60)[1]
    assert p.returncode == 130
    assert "interrupted by SIGINT. The checkpoint of epoch 1 is kept." in stderr, stderr
    assert "Traceback" not in stderr
    assert _epochs_on_disk(run) == [1]
    assert lstm_jax.load_run(run).epoch == 1  # whole and loadable


@pytest.mark.slow
def test_sigterm_during_a_save_that_hangs_ends_after_the_grace(tmp_path):
    run = tmp_path / "run"
    p = _start_held(tmp_path, "hung:2", *SMALL, "--epochs", "3", "--workdir", run)
    _wait_for(p, "held: hung:2")  # in a save that never ends
    signalled = time.monotonic()
    p.send_signal(signal.SIGTERM)
    stderr = p.communicate(timeout=60)[1]
    assert p.returncode == 143 and time.monotonic() - signalled < 30
    assert stderr.strip().splitlines()[-1] == (
        "interrupted by SIGTERM. The checkpoint of epoch 1 is kept. Continue with: python "
        f"train.py --workdir {run} --resume (what was being written did not finish within "
        "2 s: not kept)"
    ), stderr[-3000:]
    assert _epochs_on_disk(run) == [1]
    assert lstm_jax.load_run(run).epoch == 1


# ------------------------------------------------------- 5. files, full disks, paths


@pytest.mark.slow
def test_a_file_named_checkpoints_is_refused_before_training(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoints").write_text("my notes")
    out = _train_py(tmp_path, *SMALL, "--workdir", run)
    assert out.returncode == 1 and "epoch 1/" not in out.stdout
    assert "holds a file named checkpoints" in _one_error_line(out.stderr)
    assert (run / "checkpoints").read_text() == "my notes"


@pytest.mark.slow
def test_a_checkpoint_that_cannot_be_written_is_one_line(tmp_path):
    run = tmp_path / "run"
    # No file may grow past 4 KiB: as a full disk does, it fails the checkpoint's writes.
    out = _train_py(
        tmp_path,
        *SMALL,
        "--workdir",
        run,
        "--epochs",
        "1",
        script="train_with_file_size_limit.py",
        limit=4096,
    )
    assert out.returncode == 1, out.stderr[-3000:]
    line = _one_error_line(out.stderr)
    assert line.startswith("error: cannot save the checkpoint of epoch 1 in ")
    assert "File too large" in line and "Earlier checkpoints are kept (epochs: none)" in line
    assert _epochs_on_disk(run) == [] and not (run / "metrics.json").exists()


def test_run_files_are_written_whole_or_not_at_all(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text('{"old": true}')

    def half_then_full(tmp):
        tmp.write_text('{"new": ')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(training.RunFileError, match=r"cannot write .*metrics.json: No space left"):
        rundir.write_atomically(path, half_then_full)
    assert path.read_text() == '{"old": true}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # no temporary left

    history = [
        {"epoch": 1, "train_loss": 1.0, "val_loss": 1.1, "train_accuracy": 0.5, "val_accuracy": 0.4}
    ]
    rundir.write_atomically(tmp_path / "curves.png", lambda p: reporting.plot_curves(history, p))
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_a_disk_too_small_for_the_checkpoints_is_found_before_training(tmp_path, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(rundir.shutil, "disk_usage", lambda p: usage._replace(free=10_000))
    with pytest.raises(training.RunFileError, match=r"has 0.0 MiB free; the run needs about"):
        run_fake(tmp_path)
    assert not (tmp_path / "run").exists()  # a refused run leaves nothing


@pytest.mark.slow
def test_a_run_refused_before_training_leaves_nothing(tmp_path):
    where = tmp_path / "empty"
    where.mkdir()
    out = _train_py(tmp_path, *SMALL, "--dataset", "fashion-mnist", cwd=where)
    assert out.returncode == 1
    assert "Did you mean 'fashion_mnist'?" in _one_error_line(out.stderr)
    assert list(where.iterdir()) == []  # no runs/ left behind
    (where / "runs").mkdir()  # the user's own, empty: kept
    out = _train_py(tmp_path, *SMALL, "--dataset", "fashion-mnist", cwd=where)
    assert out.returncode == 1 and list(where.iterdir()) == [where / "runs"]


# --------------------------------------------------- 6. one line, not a traceback


@pytest.mark.slow
@pytest.mark.parametrize(
    "flags, env, code, message",
    [
        (("--seed", "-1"), {}, 2, "error: --seed must be an int from 0 to 2**32 - 1; got -1"),
        (("--seed", str(2**63)), {}, 2, "error: --seed must be an int from 0 to 2**32 - 1"),
        (("--cpu-devices", "-1"), {}, 2, "error: --cpu-devices must be 0 (one per core) or more"),
        ((), {"JAX_PLATFORMS": "gpu"}, 1, "error: JAX cannot start its devices: "),
        # jax raises AssertionError, not RuntimeError, for a platform it has no plugin for.
        ((), {"JAX_PLATFORMS": "cuda"}, 1, "error: JAX cannot start its devices: "),
    ],
    ids=["seed -1", "seed 2**63", "cpu-devices -1", "JAX_PLATFORMS=gpu", "JAX_PLATFORMS=cuda"],
)
def test_bad_settings_are_one_line(tmp_path, flags, env, code, message):
    out = _train_py(tmp_path, *flags, "--no-progress", "--workdir", tmp_path / "run", env=env)
    assert out.returncode == code
    line = _one_error_line(out.stderr)
    assert line.startswith(message), line
    if env:
        assert f"JAX_PLATFORMS={env['JAX_PLATFORMS']!r} asks for a platform" in line
    assert not (tmp_path / "run").exists()  # a refused run leaves nothing


CORRUPTIONS = {
    "truncated tfrecord": ("mnist-test.tfrecord-00000-of-00001", lambda b: b[: len(b) // 2]),
    "flipped byte": (
        "mnist-test.tfrecord-00000-of-00001",
        lambda b: b[: len(b) // 2] + bytes([b[len(b) // 2] ^ 0xFF]) + b[len(b) // 2 + 1 :],
    ),
    "empty shard": ("mnist-test.tfrecord-00000-of-00001", lambda b: b""),
    "broken dataset_info.json": ("dataset_info.json", lambda b: b[:20]),
}


@pytest.fixture(scope="module")
def prepared_mnist():
    where = pathlib.Path(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")).expanduser()
    version_dirs = sorted((where / "mnist").glob("*/dataset_info.json"))
    if not version_dirs:
        pytest.skip(f"no prepared MNIST in {where} to corrupt (set TFDS_DATA_DIR)")
    return version_dirs[-1].parent


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_damaged_tfds_files_are_one_line_naming_the_file(tmp_path, prepared_mnist, case):
    name, damage = CORRUPTIONS[case]
    copy = tmp_path / "tfds" / "mnist" / prepared_mnist.name
    shutil.copytree(prepared_mnist, copy)
    (copy / name).write_bytes(damage((copy / name).read_bytes()))
    with pytest.raises(data.DataError) as info:
        data.load("mnist", data_dir=str(tmp_path / "tfds"), download=False)
    message = str(info.value)
    assert message.startswith(f"the prepared mnist data cannot be read: {copy / name}: ")
    assert f"delete {copy} and prepare mnist again (`tfds build mnist" in message
    assert "\n" not in message


@pytest.mark.slow
def test_damaged_tfds_files_through_train_py(tmp_path, prepared_mnist):
    copy = tmp_path / "tfds" / "mnist" / prepared_mnist.name
    shutil.copytree(prepared_mnist, copy)
    shard = copy / "mnist-test.tfrecord-00000-of-00001"
    shard.write_bytes(shard.read_bytes()[:1000])
    out = subprocess.run(
        [sys.executable, "train.py", "--data-dir", tmp_path / "tfds", "--no-download"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 1
    assert _one_error_line(out.stderr).startswith(
        f"error: the prepared mnist data cannot be read: {shard}: "
    )


# -------------------------------------------------------------------- 7. API edges


@pytest.mark.slow
def test_api_edges():
    x = jnp.ones((2, 5, 3))
    key = jax.random.key(0)
    assert lnn.Classifier(units=50).units == (50,)  # as Keras's LSTM(50)
    assert lnn.Classifier(units=50).init(key, x)["params"]["LSTM_0"]["kernel"].shape == (3, 200)
    with pytest.raises(ValueError, match=r"units must hold at least one layer's size"):
        lnn.Classifier(units=()).init(key, x)
    with pytest.raises(ValueError, match="num_classes must be a positive int; got 0"):
        lnn.Classifier(num_classes=0).init(key, x)
    with pytest.raises(ValueError, match="units must be a positive int, got -5"):
        lstm_jax.lstm_param_count(28, -5)
    with pytest.raises(ValueError, match="input_dim must be a positive int, got 2.5"):
        lstm_jax.gru_param_count(2.5, 3)
    assert lstm_jax.lstm_param_count(np.int64(28), np.int64(50)) == 15_800
    params = lstm_jax.init_lstm(key, 28, units=np.int64(50))
    assert params["kernel"].shape == (28, 200)
    with pytest.raises(ValueError, match="dtype must be a floating-point dtype"):
        lstm_jax.init_lstm(key, 28, 50, dtype=jnp.int32)
    with pytest.raises(ValueError, match="units must be a positive int, got True"):
        lstm_jax.init_gru(key, 3, True)
