"""``train.py`` as on a machine without TensorFlow and TensorFlow Datasets: every import
finder answers that they are not installed (``import`` raises ``ModuleNotFoundError``,
``importlib.util.find_spec`` gives ``None``). ``python train_without_tensorflow.py [train.py
flags]``; it fails if either was imported all the same."""

import pathlib
import sys

ABSENT = ("tensorflow", "tensorflow_datasets")


class WithoutTensorFlow:
    """An import finder that finds what ``finder`` finds, less ``ABSENT``."""

    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ABSENT:
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, name):  # invalidate_caches, find_distributions, ...
        return getattr(self.finder, name)


sys.meta_path[:] = [WithoutTensorFlow(f) for f in sys.meta_path]
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # train.py
import train  # noqa: E402

code = train.main(sys.argv[1:])
imported = sorted(m for m in sys.modules if m.split(".")[0] in ABSENT)
assert not imported, imported
sys.exit(code)
