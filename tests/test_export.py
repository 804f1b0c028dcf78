"""A run exported with ``Run.export`` (``train.py --export``) serves in a Python with jax and
numpy alone, equal to ``load_run``; and wrong use is one clear error."""

import dataclasses
import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

import lstm_jax
from lstm_jax import data, training
from lstm_jax.errors import RunFileError
from tests.fakes import run_fake

ROOT = pathlib.Path(__file__).resolve().parents[1]

SERVE = "serve_exported.py"
TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 30


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three finished runs: images, sequences of given lengths, a language model."""
    root = tmp_path_factory.mktemp("runs")
    quick = dict(epochs=1, batch_size=16, progress=False)
    run_fake(root / "images", num_examples=64, units=(8,), epochs=1, batch_size=16)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 12, 3)).astype(np.float32)
    lengths = rng.integers(1, 13, 96)
    y = (x[..., 0].sum(1) > 0).astype(np.int32)
    mine = data.from_arrays(
        x[:64], y[:64], x_test=x[64:], y_test=y[64:], lengths_train=lengths[:64],
        lengths_test=lengths[64:],
    )  # fmt: skip
    sequences = training.Config(units=(8,), bidirectional=True, **quick)
    training.train_and_evaluate(sequences, root / "sequences", data=mine)
    text = training.Config(units=(16,), cell="gru", **{**quick, "batch_size": 4})
    training.train_and_evaluate(text, root / "text", data=data.from_text(TEXT, bptt=10))
    return {
        name: lstm_jax.load_run(root / workdir)
        for name, workdir in [
            ("images", "images/run"),
            ("sequences", "sequences"),
            ("text", "text"),
        ]
    }


def serve(run_script, path, calls: list[tuple], tmp_path, **generate) -> dict:
    """What ``tests/scripts/serve_exported.py`` computes from the file at ``path`` for each
    call's arguments, in a Python that cannot import lstm_jax, Flax, optax or orbax."""
    arrays = {f"call{k}_{n}": a for k, args in enumerate(calls) for n, a in enumerate(args)}
    np.savez(tmp_path / "calls.npz", **arrays, **generate)
    printed = run_script(SERVE, path, tmp_path / "calls.npz", tmp_path / "out.npz").split("\n")
    assert [f"blocked {m}" for m in ("lstm_jax", "flax", "optax", "orbax")] == printed[:4]
    assert printed[-2] == "served"
    return dict(np.load(tmp_path / "out.npz"))


@pytest.mark.slow
def test_exported_images_run_serves_without_lstm_jax(runs, tmp_path, run_script):
    run, path = runs["images"], tmp_path / "images.jaxexport"
    described = run.export(path)
    assert described["inputs"][0]["shape"] == ["b", 28, 28, 1]
    assert described == json.loads((tmp_path / "images.jaxexport.json").read_text())
    images = np.random.default_rng(0).integers(0, 256, (7, 28, 28, 1), dtype=np.uint8)
    out = serve(run_script, path, [(images[:1],), (images[:7],)], tmp_path)
    for k, n in enumerate((1, 7)):
        np.testing.assert_allclose(out[f"call{k}_0"], run.logits(images[:n]), atol=1e-6)
        np.testing.assert_allclose(out[f"call{k}_1"], run.predict_proba(images[:n]), atol=1e-6)


@pytest.mark.slow
def test_exported_sequences_take_any_batch_and_length_with_their_lengths(
    runs, tmp_path, run_script
):
    run, path = runs["sequences"], tmp_path / "sequences.jaxexport"
    described = run.export(path, platforms=["cpu"])
    assert [i["name"] for i in described["inputs"]] == ["x", "lengths"]
    assert described["inputs"][0]["shape"] == ["b", "t", 3]
    rng = np.random.default_rng(1)
    cases = [(2, 12), (5, 7)]  # (batch, length): the trained length, and a shorter one
    calls = []
    for batch, steps in cases:
        x = rng.normal(size=(batch, steps, 3)).astype(np.float32)
        calls.append((x, rng.integers(1, steps + 1, batch).astype(np.int32)))
    out = serve(run_script, path, calls, tmp_path)
    for k, (x, lengths) in enumerate(calls):
        expected = run.logits(x, lengths=lengths)
        np.testing.assert_allclose(out[f"call{k}_0"], expected, atol=1e-6)


@pytest.mark.slow
def test_exported_language_model_reads_and_writes_as_the_run_does(runs, tmp_path, run_script):
    run, path = runs["text"], tmp_path / "text.jaxexport"
    described = run.export(path, platforms=("cpu", "tpu"))
    assert described["vocabulary"] == run.vocabulary
    assert [i["name"] for i in described["inputs"]] == ["ids", "state_0"]  # a GRU's h
    prompt = "First Citizen:\nBefore"
    ids = data.text.encode(prompt, run.vocabulary)[None]
    two = np.concatenate([ids, ids[:, ::-1]])[:, :5]
    state = np.zeros((2, 16), np.float32)
    generate = dict(prompt=ids, length=40, seed=3, temperature=0.8)
    calls = [(ids, np.zeros((1, 16), np.float32)), (two, state)]
    out = serve(run_script, path, calls, tmp_path, **generate)
    np.testing.assert_allclose(out["call0_0"], run.logits(ids), atol=1e-6)
    np.testing.assert_allclose(out["call1_0"], run.logits(two), atol=1e-6)
    written = data.text.decode(out["generated"], run.vocabulary)
    assert written == run.generate(prompt, 40, temperature=0.8, seed=3)


def test_export_refuses_an_unknown_platform_an_unfinished_run_and_an_unwritable_file(
    runs, tmp_path
):
    run = runs["images"]
    with pytest.raises(ValueError, match="platforms must be one or more of cpu, cuda, rocm"):
        run.export(tmp_path / "x", platforms=("cpu", "gpu"))
    with pytest.raises(ValueError, match="platforms must be"):
        run.export(tmp_path / "x", platforms=())
    unfinished = dataclasses.replace(run, config=dataclasses.replace(run.config, epochs=3))
    with pytest.raises(ValueError, match="has not finished: its checkpoint is of epoch 1 of 3"):
        unfinished.export(tmp_path / "x")
    with pytest.raises(RunFileError, match="cannot write .*: No such file or directory"):
        run.export(tmp_path / "missing" / "x")
    with pytest.raises(RunFileError, match="it is a directory"):
        run.export(tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing left behind


@pytest.mark.slow
def test_train_py_exports_a_run(runs, tmp_path):
    workdir = runs["images"].workdir
    command = [sys.executable, "train.py", "--workdir", str(workdir), "--export"]
    out = subprocess.run(
        [*command, str(tmp_path / "m"), "--export-platforms", "cpu,cuda"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert "exported:" in out.stdout and "call(images)" in out.stdout
    assert json.loads((tmp_path / "m.json").read_text())["platforms"] == ["cpu", "cuda"]
    bad = subprocess.run(
        [*command, str(tmp_path / "n"), "--export-platforms", "gpu"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert bad.returncode != 0 and "error: --export: platforms must be" in bad.stderr


@pytest.mark.slow
@pytest.mark.parametrize("task", ["per_step", "regress"])
def test_exported_labels_per_step_and_values_are_the_runs(task, tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(64, 9, 2)).astype(np.float32)
    y = np.cumsum(x[..., 0], axis=1)
    y = (y > 0).astype(np.int32) if task == "per_step" else y[:, -1].astype(np.float32)
    config = training.Config(units=(8,), epochs=1, batch_size=16, progress=False)
    ds = data.from_arrays(x[:48], y[:48], x_test=x[48:], y_test=y[48:], task=task)
    training.train_and_evaluate(config, tmp_path / "run", data=ds)
    run = lstm_jax.load_run(tmp_path / "run")
    described = run.export(tmp_path / "f", platforms=["cpu"])
    exported = jax.export.deserialize((tmp_path / "f").read_bytes())
    names = [o["name"] for o in described["outputs"]]
    for batch, steps in ((3, 9), (6, 4)):
        out = exported.call(x[:batch, :steps])
        if task == "regress":
            assert names == ["values"] and described["outputs"][0]["shape"] == ["b", 1]
            np.testing.assert_allclose(out, run.logits(x[:batch, :steps]), atol=1e-6)
        else:
            assert names == ["logits", "probabilities"]
            assert described["outputs"][0]["shape"] == ["b", "t", 2]
            np.testing.assert_allclose(out[0], run.logits(x[:batch, :steps]), atol=1e-6)
            np.testing.assert_allclose(out[1], run.predict_proba(x[:batch, :steps]), atol=1e-6)


@pytest.mark.slow
def test_export_on_a_gpu_scans_so_the_file_serves_every_platform(runs, tmp_path, monkeypatch):
    """On a GPU, ``use_cudnn="auto"`` takes cuDNN, whose kernel lowers for CUDA only and
    asks cuDNN at lowering: ``export`` traces under ``lstm_cudnn.portable`` instead. A GPU
    is simulated (JAX's default backend said to be ``gpu``, the cuDNN kernels present)."""
    from lstm_jax import _jax_compat, lstm_cudnn

    params, x = lstm_jax.init_lstm(jax.random.key(0), 3, 4), np.zeros((2, 5, 3), np.float32)
    assert lstm_cudnn.why_not(params, x, unroll=1) is not None  # no GPU here
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(_jax_compat, "has_cudnn_rnn", lambda: True)
    assert lstm_cudnn.why_not(params, x, unroll=1) is None  # cuDNN would be taken
    with lstm_cudnn.portable():
        assert "portable" in lstm_cudnn.why_not(params, x, unroll=1)
    with pytest.raises(Exception):  # noqa: B017 - what tracing cuDNN fails with varies
        fn = jax.jit(lambda p, x: lstm_jax.lstm(p, x))
        jax.export.export(fn, platforms=["cpu", "tpu"])(params, x)
    run = runs["images"]
    run.export(tmp_path / "f", platforms=("cpu", "cuda", "tpu"))
    monkeypatch.undo()
    exported = jax.export.deserialize((tmp_path / "f").read_bytes())
    assert "cudnn" not in exported.mlir_module().lower()
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)
    np.testing.assert_allclose(exported.call(images)[0], run.logits(images), atol=1e-6)
