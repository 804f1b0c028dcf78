"""``train.py`` with its arguments, on TFDS's fake data (512 examples).

python train_on_fake_data.py [train.py flags]
"""

import pathlib
import sys

import tensorflow_datasets as tfds

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # train.py
import train  # noqa: E402

with tfds.testing.mock_data(num_examples=512):
    sys.exit(train.main(sys.argv[1:]))
