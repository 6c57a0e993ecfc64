"""The native gRPC front end (native/grpc_frontend.cc), built when grpc++ is installed.

Everything else is declared in pyproject.toml. The extension is optional: without grpc++'s
headers (Debian: libgrpc++-dev) the build skips it and the server uses the grpc.aio front end
(`inferd serve --grpc-frontend auto` says which one runs).
"""

from __future__ import annotations

import shlex
import subprocess

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

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:  # noqa: BLE001 - any compiler or linker failure
            print(f"inferd: the native gRPC front end was not built ({e}); grpc.aio serves gRPC")


def _extensions() -> list[Extension]:
    cflags, libs = _pkg_config("--cflags"), _pkg_config("--libs")
    if cflags is None or libs is None:
        return []
    import pybind11

    return [
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
