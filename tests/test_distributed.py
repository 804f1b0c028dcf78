"""Several processes as one run, on JAX's distributed runtime: two processes on 127.0.0.1
with one CPU device each, Gloo between them, on small fake data (TFDS's mock_data)."""

import itertools
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from lstm_jax._process import distributed
from lstm_jax.training import runs
from lstm_jax.training.checkpoints import finished_epochs
from tests import reference

ROOT = pathlib.Path(__file__).resolve().parents[1]
FAKE_TRAIN = ROOT / "tests" / "scripts" / "train_on_fake_data.py"
HELD_TRAIN = ROOT / "tests" / "scripts" / "train_held.py"
SMALL = ("--units", "8", "--batch-size", "64", "--no-progress", "--seed", "3")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(tmp_path, *args, process_id=None, port=None, processes=2, held=None):
    """``train.py`` on fake data as one process of a run; with ``held``, held at that point
    of ``tests/scripts/train_held.py`` (``"none"``: the same program, never held)."""
    hosts = ()
    if process_id is not None:
        hosts = ("--coordinator-address", f"127.0.0.1:{port}", "--num-processes", processes)
        hosts += ("--process-id", process_id)
    script = (FAKE_TRAIN,) if held is None else (HELD_TRAIN, held)
    return subprocess.Popen(
        [sys.executable, *script, "--data-dir", tmp_path / "tfds", *map(str, args + hosts)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _two_processes(tmp_path, *args):
    """``train.py`` as processes 0 and 1 of one run; returns both ``(code, out, err)``."""
    port = _free_port()
    started = [_start(tmp_path, *args, "--cpu-devices", 1, process_id=i, port=port) for i in (0, 1)]
    ended = []
    try:
        for p in started:
            out, err = p.communicate(timeout=240)
            ended.append((p.returncode, out, err))
    finally:
        for p in started:  # each is a supervisor and its child: SIGTERM reaches both
            if p.poll() is None:
                p.terminate()
                p.communicate()
    for code, out, err in ended:
        assert code == 0, out[-2000:] + err[-3000:]
    return ended


def _own_lines(out: str) -> list[str]:
    """The lines a process printed, less the one Gloo prints when it connects."""
    return [line for line in out.splitlines() if line.strip() and not line.startswith("[Gloo]")]


def _params(workdir):
    return jax.tree.leaves(jax.device_get(runs.load_run(workdir).params))


@pytest.fixture(scope="module")
def one_process_two_devices(tmp_path_factory):
    """The reference: the same run in one process with two CPU devices, 2 epochs."""
    tmp = tmp_path_factory.mktemp("one_process")
    p = _start(tmp, *SMALL, "--epochs", 2, "--cpu-devices", 2, "--workdir", tmp / "run")
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    return tmp / "run"


@pytest.mark.slow
def test_two_processes_train_what_one_process_with_two_devices_does(
    tmp_path, one_process_two_devices, record_largest
):
    run = tmp_path / "run"
    (code0, out0, _), (_, out1, err1) = _two_processes(
        tmp_path, *SMALL, "--epochs", 2, "--workdir", run
    )
    assert "devices: 2 x cpu (cpu), 2 process(es)" in out0
    assert "epoch 2/2:" in out0 and "run files:" in out0
    assert _own_lines(out1) == [] and err1.strip() == ""  # process 0 alone reports
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["processes"] == 2 and len(metrics["devices"]) == 2
    assert sorted(p.name for p in run.iterdir() if p.suffix in (".json", ".png")) == [
        "curves.png",
        "metrics.json",
    ]
    reference_metrics = json.loads((one_process_two_devices / "metrics.json").read_text())
    assert reference_metrics["processes"] == 1 and len(reference_metrics["devices"]) == 2
    mine, theirs = _params(run), _params(one_process_two_devices)
    largest = max(float(np.max(np.abs(a - b))) for a, b in zip(mine, theirs, strict=True))
    record_largest("abs difference, 2 processes vs 1 process on 2 devices", largest)
    reference.assert_trees_close(mine, theirs, atol=1e-5)
    assert metrics["test_accuracy"] == pytest.approx(reference_metrics["test_accuracy"])


@pytest.mark.slow
def test_a_two_process_run_resumes_on_two_processes(tmp_path, one_process_two_devices):
    run = tmp_path / "run"
    _two_processes(tmp_path, *SMALL, "--epochs", 1, "--workdir", run)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["1"]
    (_, out0, _), (_, out1, _) = _two_processes(
        tmp_path, "--workdir", run, "--resume", "--epochs", 2, "--no-progress"
    )
    assert "resumed from the checkpoint of epoch 1" in out0 and "epoch 2/2:" in out0
    assert _own_lines(out1) == []
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    reference.assert_trees_close(_params(run), _params(one_process_two_devices), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("killed", [1, 0])
def test_a_killed_process_stops_the_other_with_one_line(tmp_path, killed, report):
    """Process ``killed`` is killed (SIGKILL) as epoch 2 starts, the other being in epoch 2's
    collectives; the other ends, non-zero, within 60 s, with one line that names the lost
    process; the checkpoint saved is kept."""
    port, run = _free_port(), tmp_path / "run"
    args = (*SMALL, "--epochs", 3, "--workdir", run, "--cpu-devices", 1)
    procs = [
        _start(tmp_path, *args, process_id=i, port=port, held="before:2" if i == killed else "none")
        for i in (0, 1)
    ]
    try:
        seen = iter(procs[killed].stdout.readline, "")
        printed = list(itertools.takewhile(lambda line: line != "held: before:2\n", seen))
        assert procs[killed].poll() is None, [*printed, procs[killed].communicate()]
        procs[killed].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        survivor = procs[1 - killed]
        _, err = survivor.communicate(timeout=60)
        seconds = time.monotonic() - killed_at
    finally:
        for p in procs:
            p.kill()
            p.communicate()
    assert survivor.returncode == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    assert f"process {killed}" in lines[0] and f"process {1 - killed} stops too" in lines[0]
    assert "Continue with --resume, all 2 processes started again" in lines[0]
    assert finished_epochs(run / "checkpoints")  # what was saved is kept
    report(f"process {killed} of 2 killed: the other ended in {seconds:.1f} s: {lines[0]}")


@pytest.mark.slow
def test_a_missing_coordinator_or_a_wrong_process_id_is_one_line(tmp_path):
    port = _free_port()
    alone = _start(
        tmp_path,
        *SMALL,
        "--workdir",
        tmp_path / "run",
        "--join-timeout",
        3,
        process_id=1,
        port=port,
    )
    _, err = alone.communicate(timeout=120)
    assert alone.returncode == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err[-3000:]
    assert lines[0].startswith(
        f"error: process 1 of 2 found no coordinator at 127.0.0.1:{port} within the join timeout"
    )
    wrong = _start(tmp_path, *SMALL, "--workdir", tmp_path / "run", process_id=2, port=port)
    _, err = wrong.communicate(timeout=120)
    assert wrong.returncode == 2
    assert err.strip() == (
        "error: --process-id must be from 0 to 1 (--num-processes 2); got 2 (python train.py "
        "--help lists the flags)"
    )


def test_distributed_arguments_are_checked_before_anything_starts():
    for args, expected in [
        (("10.0.0.1:1234", 2, None), "go together: give all three"),
        (("10.0.0.1", 2, 0), "must be HOST:PORT"),
        (("10.0.0.1:1234", 0, 0), "num_processes must be 1 or more; got 0"),
        (("10.0.0.1:1234", 2, -1), "process_id must be from 0 to 1"),
    ]:
        with pytest.raises(distributed.DistributedError, match=expected):
            distributed.check_arguments(*args)
    distributed.check_arguments(None, None, None)
    distributed.check_arguments("node-1.cluster:1234", 4, 3)


def _all_stop_with_one_line(tmp_path, report, case: str, *starts, processes=2) -> list[str]:
    """Processes started as ``starts`` (each ``(process_id, own flags)``) of a run of
    ``processes``; each process's one ``error:`` line, each having exited 1 within 60 s of
    its start."""
    port, started = _free_port(), time.monotonic()
    procs = [
        _start(
            tmp_path, *SMALL, "--cpu-devices", 1, *own, process_id=i, port=port, processes=processes
        )
        for i, own in starts
    ]
    lines = []
    try:
        for p in procs:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 1, err[-3000:]
            seconds = time.monotonic() - started
            assert seconds < 60
            own = [line for line in err.splitlines() if line.strip()]
            assert len(own) == 1 and own[0].startswith("error: "), err[-3000:]
            lines.append(own[0])
    finally:
        for p in procs:
            p.kill()
            p.communicate()
    report(f"{case}: every process exited 1 within {seconds:.1f} s of their start: {lines}")
    return lines


def _both_stop_with_one_line(tmp_path, report, case: str, *args) -> list[str]:
    """Processes 0 and 1 started with ``args`` (a sequence of two: each one's own flags)."""
    return _all_stop_with_one_line(tmp_path, report, case, *enumerate(args))


@pytest.mark.slow
@pytest.mark.parametrize(
    "flag, values, said",
    [
        ("--seed", (0, 5), "seed: 0 on process 0, 5 on process 1"),
        ("--units", (8, 16), "units: [8] on process 0, [16] on process 1"),
        ("--dataset", ("mnist", "fashion_mnist"), 'dataset: "mnist" on process 0, "fashion_mn'),
    ],
    ids=["seed", "units", "dataset"],
)
def test_processes_started_differently_all_stop_naming_what_differs(
    tmp_path, flag, values, said, report
):
    run = tmp_path / "run"
    lines = _both_stop_with_one_line(
        tmp_path,
        report,
        f"{flag} {values[0]} and {values[1]}",
        *[("--workdir", run, flag, value) for value in values],
    )
    for line in lines:
        assert line.startswith("error: the 2 processes of the run were not started alike: ")
        assert said in line, line
    assert not run.exists()  # nothing written


@pytest.mark.slow
def test_workdirs_that_are_not_one_directory_stop_every_process(tmp_path, report):
    lines = _both_stop_with_one_line(
        tmp_path,
        report,
        "--workdir wd0 and wd1",
        *[("--workdir", tmp_path / f"wd{i}") for i in (0, 1)],
    )
    for line in lines:
        assert "is not one directory for all 2 processes: process 1 cannot read" in line, line
    assert not (tmp_path / "wd0").exists() and not (tmp_path / "wd1").exists()


@pytest.mark.slow
def test_two_processes_with_one_process_id_both_stop(tmp_path, report):
    run = tmp_path / "run"
    lines = _all_stop_with_one_line(
        tmp_path, report, "--process-id 0 twice", (0, ("--workdir", run)), (0, ("--workdir", run))
    )
    assert (
        lines
        == [
            "error: two processes started as --process-id 0: each of the 2 processes needs its "
            "own, from 0 to 1; every process stops."
        ]
        * 2
    )
    assert not run.exists()


@pytest.mark.slow
def test_a_taken_process_id_while_the_others_join_stops_every_process(tmp_path, report):
    run = tmp_path / "run"
    lines = _all_stop_with_one_line(
        tmp_path,
        report,
        "--process-id 0, 1, 1 of 3",
        *[(i, ("--workdir", run)) for i in (0, 1, 1)],
        processes=3,
    )
    assert set(lines) == {
        "error: two processes started as --process-id 1: each of the 3 processes needs its "
        "own, from 0 to 2; every process stops."
    }
    assert not run.exists()


@pytest.mark.slow
def test_a_coordinator_port_in_use_stops_every_process(tmp_path, report):
    run = tmp_path / "run"
    with socket.socket() as other_program:  # holds the port; never answers
        other_program.bind(("127.0.0.1", 0))
        other_program.listen()
        port = other_program.getsockname()[1]
        started = time.monotonic()
        procs = [
            _start(tmp_path, *SMALL, "--cpu-devices", 1, "--workdir", run, process_id=i, port=port)
            for i in (0, 1)
        ]
        ended = [p.communicate(timeout=120) + (p.returncode,) for p in procs]
        seconds = time.monotonic() - started
    lines = [[line for line in err.splitlines() if line.strip()] for _, err, _ in ended]
    assert [code for *_, code in ended] == [1, 1] and seconds < 60, lines
    assert lines[0] == [
        f"error: process 0 cannot be the coordinator at 127.0.0.1:{port}: port {port} is in "
        "use on this machine (by another program, or by a run that has begun); choose a free "
        "port and give it to every process."
    ]
    assert lines[1] == [
        f"error: process 1 of 2: what answers at 127.0.0.1:{port} is not an lstm_jax process 0 "
        "taking the roll call (another program holds the port, or the run there has begun: is "
        "--process-id 1 taken?); give each process its own --process-id and the run's free port."
    ]
    assert not run.exists()
    report(f"coordinator port in use: both processes exited 1 within {seconds:.1f} s: {lines}")


@pytest.mark.slow
def test_sigterm_ends_a_run_waiting_for_its_processes(tmp_path):
    port, run = _free_port(), tmp_path / "run"
    alone = _start(tmp_path, *SMALL, "--cpu-devices", 1, "--workdir", run, process_id=0, port=port)
    _wait_for_listener(alone, port)
    alone.send_signal(signal.SIGTERM)
    _, err = alone.communicate(timeout=60)
    assert alone.returncode == 143
    assert [line for line in err.splitlines() if line.strip()] == [
        "interrupted by SIGTERM. No checkpoint was saved. (no epoch had finished)"
    ]
    assert not run.exists()


def _wait_for_listener(process, port) -> None:
    """Until ``process`` (process 0 of a run) listens for the others' roll call (it drops a
    connection that says nothing)."""
    deadline = time.monotonic() + 120
    while True:
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            return
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.05)


@pytest.mark.slow
def test_sigterm_ends_every_process_of_a_run_mid_epoch(tmp_path, report):
    """SIGTERM to both processes while process 0 runs epoch 2 and process 1 waits in its
    collectives: both end at once, as one process does, keeping epoch 1's checkpoint."""
    port, run = _free_port(), tmp_path / "run"
    args = (*SMALL, "--epochs", 3, "--workdir", run, "--cpu-devices", 1)
    procs = [
        _start(tmp_path, *args, process_id=i, port=port, held=h)
        for i, h in enumerate(("epoch:2", "none"))
    ]
    try:
        seen = iter(procs[0].stdout.readline, "")
        printed = list(itertools.takewhile(lambda line: line != "held: epoch:2\n", seen))
        assert procs[0].poll() is None, [*printed, procs[0].communicate()]
        signalled = time.monotonic()
        for p in procs:
            p.send_signal(signal.SIGTERM)
        ended = [p.communicate(timeout=60) for p in procs]
        seconds = time.monotonic() - signalled
    finally:
        for p in procs:
            p.kill()
            p.communicate()
    assert [p.returncode for p in procs] == [143, 143], [err[-2000:] for _, err in ended]
    for _, err in ended:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("interrupted by SIGTERM. "), err[-3000:]
    assert finished_epochs(run / "checkpoints") == [1]
    report(f"SIGTERM to both processes in epoch 2: both ended in {seconds:.1f} s: {lines[0]}")
