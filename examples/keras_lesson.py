"""The Keras lesson's script: LSTM(50) then Dense(10, softmax) on MNIST read as 28 rows of 28
pixels, Adam, batch 128, 3 epochs, validation_split=0.2; saves the model as a .keras file.

    KERAS_BACKEND=jax python examples/keras_lesson.py --out lesson.keras

MNIST comes through TFDS (``lstm_jax.data``) rather than ``keras.datasets``, so that it is
the same data ``train.py`` reads, offline too. Then, in JAX::

    module, variables = lstm_jax.from_keras(keras.models.load_model("lesson.keras"))
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from lstm_jax import data  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="lesson.keras", help="where the trained model is saved")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None, help="a TFDS data directory")
    args = p.parse_args()

    mnist = data.load("mnist", data_dir=args.data_dir)
    # The training split with the validation split put back: Keras's validation_split holds
    # out the same last 20% itself.
    x_train = np.concatenate([mnist.train.images, mnist.validation.images])[..., 0] / 255.0
    y_train = np.concatenate([mnist.train.labels, mnist.validation.labels])
    x_test, y_test = mnist.test.images[..., 0] / 255.0, mnist.test.labels

    keras.utils.set_random_seed(args.seed)
    model = keras.Sequential(
        [
            keras.Input((28, 28)),
            keras.layers.LSTM(50),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=128, epochs=args.epochs, validation_split=0.2, verbose=2)
    _, accuracy = model.evaluate(x_test, y_test, batch_size=1024, verbose=0)
    print(f"test accuracy: {accuracy:.2%}")
    model.save(args.out)
    print(f"saved: {args.out}")


if __name__ == "__main__":
    main()
