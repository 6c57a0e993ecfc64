"""Two optional native extensions; everything else is declared in pyproject.toml.

- The native gRPC front end (native/grpc_frontend.cc), built when grpc++ is installed: without
  its headers (Debian: libgrpc++-dev) the build skips it and the server uses the grpc.aio front
  end (`inferd serve --grpc-frontend auto` says which one runs).
- The shared-memory guard (native/shm_guard.c), plain C on Linux: without it a client that
  truncates a registered shared-memory object can still crash the server (server/shm_guard.py).

Each is built on its own: one that fails to build leaves the other, and the pure-Python paths.
"""

from __future__ import annotations

import shlex
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _pkg_config(*args: str) -> list[str] | None:
    try:
        out = subprocess.run(["pkg-config", *args, "grpc++"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return shlex.split(out.stdout)


class _OptionalBuild(build_ext):
    """A failed build of the optional extension leaves the pure-Python front end in place."""

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as e:  # noqa: BLE001 - any compiler or linker failure
            print(f"inferd: the optional extension {ext.name} was not built ({e})")


def _extensions() -> list[Extension]:
    extensions = []
    if sys.platform.startswith("linux"):
        extensions.append(
            Extension("inferd.server._shm_guard", ["native/shm_guard.c"], extra_compile_args=["-std=c11", "-O2"])
        )
    cflags, libs = _pkg_config("--cflags"), _pkg_config("--libs")
    if cflags is None or libs is None:
        return extensions
    import pybind11

    return extensions + [
        Extension(
            "inferd.server.frontends._native_grpc",
            ["native/grpc_frontend.cc"],
            include_dirs=[pybind11.get_include()],
            language="c++",
            extra_compile_args=["-std=c++17", "-O2", "-g0", "-fvisibility=hidden", *cflags],
            extra_link_args=libs,
        )
    ]


setup(ext_modules=_extensions(), cmdclass={"build_ext": _OptionalBuild})
