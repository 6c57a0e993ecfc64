"""Run Python under another protobuf runtime than the one installed in the venv.

inferd supports a range of protobuf runtimes (pyproject's ``protobuf>=A,<B``); the venv holds
one of them (the newest that tritonclient allows). This installs the range's oldest or newest
release into a folder of its own (``pip install --target``, kept under the venv) and puts it
first on ``PYTHONPATH``, so ``google.protobuf`` resolves to it while everything else comes from
the venv.

    python tests/protobuf_runtime.py --oldest -- -m pytest -q tests/test_proto_stubs.py
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

RUNTIMES = Path(sys.prefix) / "protobuf-runtimes"


def supported_range() -> tuple[str, str]:
    """(oldest, upper bound) of inferd's protobuf requirement, from the installed metadata."""
    for requirement in metadata.requires("inferd") or []:
        found = re.match(r"protobuf\s*(.*)", requirement)
        if found and "extra ==" not in requirement:
            low = re.search(r">=\s*([\d.]+)", found.group(1))
            high = re.search(r"<\s*([\d.]+)", found.group(1))
            if low and high:
                return low.group(1), high.group(1)
    raise RuntimeError("inferd's metadata has no 'protobuf>=A,<B' requirement")


def install(spec: str, folder: Path) -> Path:
    """``pip install --target folder spec``; returns the folder."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "--no-deps",
            "--upgrade",
            "--target",
            str(folder),
            spec,
        ],
        check=True,
    )
    return folder


def runtime_path(which: str) -> tuple[Path, str]:
    """The folder holding the oldest or newest supported protobuf, and its version."""
    oldest, bound = supported_range()
    if which == "oldest":
        folder = RUNTIMES / oldest
        if not (folder / "google" / "protobuf").is_dir():  # a pinned release: installed once
            install(f"protobuf=={oldest}", folder)
    else:
        # The newest release is looked up each time (a folder named "newest" would go stale).
        folder = install(f"protobuf<{bound}", RUNTIMES / "newest")
    (dist,) = folder.glob("protobuf-*.dist-info")
    return folder, dist.name.removeprefix("protobuf-").removesuffix(".dist-info")


def environment(folder: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(folder), env.get("PYTHONPATH")) if p)
    return env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--oldest", action="store_const", const="oldest", dest="which")
    which.add_argument("--newest", action="store_const", const="newest", dest="which")
    parser.add_argument("python_args", nargs=argparse.REMAINDER, help="arguments for python, after --")
    args = parser.parse_args()
    folder, version = runtime_path(args.which)
    print(f"protobuf {version} ({args.which} supported) from {folder}", flush=True)
    python_args = args.python_args[1:] if args.python_args[:1] == ["--"] else args.python_args
    return subprocess.run([sys.executable, *python_args], env=environment(folder)).returncode


if __name__ == "__main__":
    sys.exit(main())
