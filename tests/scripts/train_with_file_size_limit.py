"""``train.py`` on fake data where no file may grow past LIMIT bytes, as on a full disk
(writes fail with EFBIG rather than ENOSPC; SIGXFSZ is ignored so that the write fails, not
the process).

python train_with_file_size_limit.py LIMIT [train.py flags]
"""

import pathlib
import resource
import signal
import sys

import jax
import tensorflow_datasets as tfds

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # train.py
import train  # noqa: E402

# Not the session's compilation cache (tests/conftest.py): under the limit its entries would be
# written truncated, and every other test process would then read them.
jax.config.update("jax_enable_compilation_cache", False)
limit = int(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
with tfds.testing.mock_data(num_examples=512):
    sys.exit(train.main(sys.argv[2:]))
