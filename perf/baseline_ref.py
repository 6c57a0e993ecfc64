"""inferd as of another commit, to run beside the current one: ``--baseline-ref REF`` checks REF
out into a temporary ``git worktree`` and starts its server through a PYTHONPATH shim.

The shim is a folder holding only ``inferd/__init__.py`` whose ``__path__`` is the worktree's
root, so ``inferd.<pkg>`` resolves to the worktree's top-level folder ``<pkg>`` - whichever
exist at that commit (server, backends, clients, protocol, perf, model_repository; older
commits had no protocol/ and kept the stubs in clients/pb). A PYTHONPATH entry is searched
before the editable install's finder, which the interpreter appends to ``sys.meta_path``, so
the current checkout's modules never mix in. Both servers are given the same model repository
(the current one), so that only the code differs.

Generated protobuf stubs embed the protobuf version that generated them, and a runtime older
than that refuses to load them. When the ref's stubs do not load in this environment, they are
regenerated in the worktree by the ref's own ``proto/generate.py`` (same .proto files, this
environment's grpcio-tools): the messages and the runtime that parses them are the same.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class InferdBuild:
    """An inferd to start: a name for the tables and the environment its process needs."""

    name: str
    env: dict[str, str] = field(default_factory=dict)


CURRENT = InferdBuild("inferd")


def _git(*args: str) -> str:
    done = subprocess.run(["git", "-C", str(CHECKOUT), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def write_shim(shim: Path, tree: Path, note: str) -> None:
    package = shim / "inferd"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(f"# {note}\n__path__ = [{str(tree)!r}]\n")


def _import_error(env: dict[str, str]) -> str | None:
    """Why the server of the build in ``env`` cannot be imported here, or None."""
    argv = [sys.executable, "-c", "import inferd.server.app"]
    done = subprocess.run(argv, capture_output=True, text=True, env=dict(os.environ, **env))
    return None if done.returncode == 0 else done.stderr.strip()[-1500:]


def _build_native(tree: Path) -> None:
    """A ref with the native gRPC front end gets it built in its worktree, as the current
    checkout has it (built files are not in git): else its server would run on grpc.aio."""
    if not (tree / "native" / "grpc_frontend.cc").exists() or not (tree / "setup.py").exists():
        return
    print("# baseline: building its native gRPC front end", file=sys.stderr)
    done = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--inplace"], capture_output=True, text=True, cwd=tree
    )
    if done.returncode != 0:
        print(f"# baseline: its native gRPC front end did not build:\n{done.stderr[-1500:]}", file=sys.stderr)


def prepare(tree: Path, env: dict[str, str]) -> None:
    _build_native(tree)
    if _import_error(env) is None:
        return
    generate = tree / "proto" / "generate.py"
    if generate.exists():
        print("# baseline: regenerating its protobuf stubs for this environment's runtime", file=sys.stderr)
        subprocess.run([sys.executable, str(generate)], capture_output=True, text=True, cwd=tree)
    error = _import_error(env)
    if error is not None:
        raise SystemExit(f"the baseline's server does not import in this environment:\n{error}")


@contextmanager
def checkout(ref: str) -> Iterator[InferdBuild]:
    """The build of ``ref``, checked out for the duration of the block, then removed."""
    sha = _git("rev-parse", "--verify", f"{ref}^{{commit}}")
    tmp = Path(tempfile.mkdtemp(prefix="inferd-baseline-"))
    tree = tmp / "tree"
    try:
        _git("worktree", "add", "--detach", str(tree), sha)
        write_shim(tmp / "shim", tree, f"inferd as of {ref} ({sha}), checked out at {tree}")
        print(f"# baseline: {ref} = {sha[:12]}, worktree {tree}", file=sys.stderr)
        env = {"PYTHONPATH": str(tmp / "shim")}
        prepare(tree, env)
        yield InferdBuild(f"inferd@{ref}", env)
    finally:
        if tree.exists():
            subprocess.run(
                ["git", "-C", str(CHECKOUT), "worktree", "remove", "--force", str(tree)], capture_output=True
            )
        subprocess.run(["git", "-C", str(CHECKOUT), "worktree", "prune"], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def builds(baseline_ref: str | None) -> Iterator[list[InferdBuild]]:
    """The current inferd, and the baseline's when a ref is given."""
    if baseline_ref is None:
        yield [CURRENT]
        return
    with checkout(baseline_ref) as baseline:
        yield [CURRENT, baseline]
