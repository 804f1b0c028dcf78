"""Float64 NumPy references written from the textbook equations, one gate at a time.

Deliberately independent of ``lstm_jax``: each gate gets its own weight slices, named as in
the equations, and the loops run in Python over time and carry masking by hand.
"""

import numpy as np


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def lstm_step(params, h, c, x):
    """i, f, g, o from their own weight blocks (Keras order i, f, c, o)."""
    W, U, b = (np.asarray(params[k], np.float64) for k in ("kernel", "recurrent_kernel", "bias"))
    u = U.shape[0]
    Wi, Wf, Wc, Wo = (W[:, k * u : (k + 1) * u] for k in range(4))
    Ui, Uf, Uc, Uo = (U[:, k * u : (k + 1) * u] for k in range(4))
    bi, bf, bc, bo = (b[k * u : (k + 1) * u] for k in range(4))
    i = sigmoid(x @ Wi + h @ Ui + bi)
    f = sigmoid(x @ Wf + h @ Uf + bf)
    g = np.tanh(x @ Wc + h @ Uc + bc)
    o = sigmoid(x @ Wo + h @ Uo + bo)
    c = f * c + i * g
    h = o * np.tanh(c)
    return h, c


def gru_step(params, h, x):
    """Keras reset_after=True: r multiplies (h U_h + b_hh)."""
    W, U, b = (np.asarray(params[k], np.float64) for k in ("kernel", "recurrent_kernel", "bias"))
    u = U.shape[0]
    Wz, Wr, Wh = (W[:, k * u : (k + 1) * u] for k in range(3))
    Uz, Ur, Uh = (U[:, k * u : (k + 1) * u] for k in range(3))
    bxz, bxr, bxh = (b[0, k * u : (k + 1) * u] for k in range(3))
    bhz, bhr, bhh = (b[1, k * u : (k + 1) * u] for k in range(3))
    z = sigmoid(x @ Wz + bxz + h @ Uz + bhz)
    r = sigmoid(x @ Wr + bxr + h @ Ur + bhr)
    h_tilde = np.tanh(x @ Wh + bxh + r * (h @ Uh + bhh))
    return z * h + (1 - z) * h_tilde


def simple_rnn_step(params, h, x):
    W, U, b = (np.asarray(params[k], np.float64) for k in ("kernel", "recurrent_kernel", "bias"))
    return np.tanh(x @ W + h @ U + b)


def run(cell, params, x, *, initial_state=None, go_backwards=False, mask=None):
    """Returns (outputs [B, T, U] in processing order, final states tuple)."""
    x = np.asarray(x, np.float64)
    batch, time, _ = x.shape
    units = np.shape(params["recurrent_kernel"])[0]
    n_states = 2 if cell == "lstm" else 1
    if initial_state is None:
        states = [np.zeros((batch, units)) for _ in range(n_states)]
    else:
        states = [np.asarray(s, np.float64) for s in initial_state]
    steps = range(time - 1, -1, -1) if go_backwards else range(time)
    outputs = []
    for t in steps:
        if cell == "lstm":
            new = list(lstm_step(params, *states, x[:, t]))
        elif cell == "gru":
            new = [gru_step(params, states[0], x[:, t])]
        else:
            new = [simple_rnn_step(params, states[0], x[:, t])]
        if mask is not None:
            m = np.asarray(mask)[:, t][:, None]
            new = [np.where(m, n, s) for n, s in zip(new, states, strict=True)]
        states = new
        outputs.append(states[0])
    return np.stack(outputs, axis=1), tuple(states)


def assert_trees_close(got, want, *, atol=0.0, rtol=0.0):
    """Same tree structure, and every leaf within ``atol + rtol * |want|``."""
    import jax

    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, atol=atol, rtol=rtol)
