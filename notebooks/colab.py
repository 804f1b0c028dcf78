"""The notebooks' Colab header, written from one place: the badge and the install cell.

The repository's address is ``[project.urls] Repository`` in ``pyproject.toml``; every
notebook's "Open in Colab" badge (its first line), its install cell (its second cell) and
the README's notebook links are made from it here.

    python notebooks/colab.py write            # rewrite the headers after editing the address
    python notebooks/colab.py check            # exit 1 if a notebook's header differs
    python notebooks/colab.py install SOURCE   # run the install cell's commands, with
                                               # lstm_jax from SOURCE (a pip URL) instead

``install`` is how CI's Colab leg installs the project: the install cell itself, run by
IPython on top of Colab's packages, with the checkout (``file:///...``) as the source.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def repository() -> str:
    """``https://github.com/OWNER/NAME``, from ``pyproject.toml``."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["urls"]["Repository"].rstrip("/")


def badge(notebook: str) -> str:
    """The "Open in Colab" badge of ``notebook`` (a file name in ``notebooks/``), Markdown."""
    path = repository().removeprefix("https://github.com/")
    url = f"https://colab.research.google.com/github/{path}/blob/main/notebooks/{notebook}"
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})"


def install_cell(source: str | None = None) -> str:
    """The install cell; ``source``: where pip gets lstm_jax (default: the repository).

    Outside Colab it installs nothing: it says how to, if lstm_jax cannot be imported.

    Plain ``pip install`` upgrades nothing that already satisfies lstm_jax's floors, so
    Colab's own tensorflow, keras, jax, jaxlib, numpy and protobuf stay as they are. The
    rest mends a defect seen in Colab's packages: a tensorflow-metadata built for a newer
    protobuf than Colab's, with which TFDS cannot be imported.
    """
    source = source or f"git+{repository()}"
    lines = [
        "# On Colab: install lstm_jax on top of Colab's own packages, moving none of them.",
        "# Elsewhere: says how to install lstm_jax if this kernel's Python lacks it.",
        "import importlib.metadata",
        "import importlib.util",
        "import subprocess",
        "import sys",
        "",
        'if "google.colab" in sys.modules:',
        f'    !pip install -q "lstm_jax @ {source}"',
        "    # TFDS cannot be imported where tensorflow-metadata was built for a newer protobuf",
        "    # than the one installed: then take the last tensorflow-metadata built for it.",
        '    check = [sys.executable, "-c", "import tensorflow_datasets.core"]',
        "    if subprocess.run(check, capture_output=True).returncode:",
        '        !pip install -q "tensorflow-metadata<1.21"',
    ]
    elsewhere = f"""\
elif importlib.util.find_spec("lstm_jax") is None:
    print(
        "lstm_jax is not installed in this kernel's Python. Install it, then restart the kernel:\\n"
        f"  {{sys.executable}} -m pip install 'lstm_jax @ git+{repository()}'\\n"
        "or, in a clone of the repository: pip install -e ."
    )
else:
    print("lstm_jax", importlib.metadata.version("lstm_jax"), "is installed")"""
    return "\n".join(lines) + "\n" + elsewhere


def _source(cell: dict) -> str:
    return "".join(cell["source"])


def _with_header(nb: dict, name: str) -> dict:
    """``nb`` with its badge line and install cell made here."""
    first, install = nb["cells"][0], nb["cells"][1]
    rest = _source(first).split("\n", 1)[1] if "\n" in _source(first) else ""
    first["source"] = f"{badge(name)}\n{rest}".splitlines(keepends=True)
    install["source"] = install_cell().splitlines(keepends=True)
    return nb


def stale() -> list[str]:
    """The notebooks whose header differs from what this module writes."""
    out = []
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text())
        before = [_source(c) for c in nb["cells"][:2]]
        after = [_source(c) for c in _with_header(nb, path.name)["cells"][:2]]
        if before != after:
            out.append(path.name)
    return out


def write() -> None:
    for path in NOTEBOOKS:
        nb = _with_header(json.loads(path.read_text()), path.name)
        path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


def install(source: str) -> None:
    """Runs the install cell, with lstm_jax from ``source``, as Colab would: in IPython,
    with ``google.colab`` imported and this Python's ``pip`` first on the PATH."""
    import types

    from IPython.core.interactiveshell import InteractiveShell

    os.environ["PATH"] = f"{pathlib.Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
    sys.modules.setdefault("google.colab", types.ModuleType("google.colab"))
    result = InteractiveShell.instance().run_cell(install_cell(source))
    shell_status = InteractiveShell.instance().user_ns.get("_exit_code", 0)
    if not result.success or shell_status:
        raise SystemExit(f"the install cell failed (last shell command's status {shell_status})")


def main(argv: list[str]) -> int:
    if argv[:1] == ["write"]:
        write()
    elif argv[:1] == ["check"]:
        names = stale()
        if names:
            print(f"stale Colab header in {', '.join(names)}: run python notebooks/colab.py write")
            return 1
    elif argv[:1] == ["install"] and len(argv) == 2:
        install(argv[1])
    else:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
