"""``train.py`` on fake data, each checkpoint save announced and held 2 s before it starts, so
that a test can signal the process while a checkpoint is being written.

python train_with_slow_save.py [train.py flags]
"""

import pathlib
import sys
import time

import tensorflow_datasets as tfds

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # train.py
import train  # noqa: E402
from lstm_jax import checkpoints  # noqa: E402

save = checkpoints.Checkpointer.save


def slow_save(self, epoch, state, meta):
    print(f"saving epoch {epoch}", flush=True)
    time.sleep(2)
    save(self, epoch, state, meta)


checkpoints.Checkpointer.save = slow_save
with tfds.testing.mock_data(num_examples=512):
    sys.exit(train.main(sys.argv[1:]))
