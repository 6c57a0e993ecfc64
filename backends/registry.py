"""Backend lookup by the ``platform`` or ``backend`` field of config.pbtxt.

Built-in backends are named by module path and imported only when a model needs them, so a
repository of ONNX models never imports torch or tensorflow. Third-party packages add backends
through the ``inferd.backends`` entry-point group; the entry point's name is the ``backend``
string and its value a :class:`~inferd.backends.base.Backend` subclass, e.g. in pyproject.toml::

    [project.entry-points."inferd.backends"]
    mybackend = "my_package.backend:MyBackend"
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from pathlib import Path

from ..protocol.errors import ModelLoadError
from ..protocol.pb import model_config_pb2 as mc
from .base import Backend

ENTRY_POINT_GROUP = "inferd.backends"

_BUILTIN: dict[str, str] = {
    "onnxruntime": "inferd.backends.ort:OnnxRuntimeBackend",
    "pytorch": "inferd.backends.torchscript:TorchScriptBackend",
    "tensorflow": "inferd.backends.savedmodel:SavedModelBackend",
    "tensorrt": "inferd.backends.tensorrt:TensorRTBackend",
    "python": "inferd.backends.python:PythonBackend",
}
_PLATFORMS: dict[str, str] = {
    "onnxruntime_onnx": "onnxruntime",
    "pytorch_libtorch": "pytorch",
    "tensorflow_savedmodel": "tensorflow",
    "tensorrt_plan": "tensorrt",
}
_PLATFORM_OF = {b: p for p, b in _PLATFORMS.items()}
# Used to guess the backend of a model that has no config.pbtxt.
_FILE_HINTS: dict[str, str] = {
    "model.onnx": "onnxruntime",
    "model.pt": "pytorch",
    "model.savedmodel": "tensorflow",
    "model.plan": "tensorrt",
    "model.py": "python",
}

_registered: dict[str, type[Backend]] = {}


def register(name: str, cls: type[Backend]) -> None:
    """Register a backend class in-process (entry points do this for installed packages)."""
    _registered[name] = cls


def backend_name(config: mc.ModelConfig, version_dir: Path | None, source: str) -> str:
    """Decide the backend name from ``backend``, then ``platform``, then the model file."""
    if config.backend:
        return config.backend
    if config.platform:
        if config.platform in _PLATFORMS:
            return _PLATFORMS[config.platform]
        raise ModelLoadError(
            f"{source}: unknown platform '{config.platform}'; known: {', '.join(sorted(_PLATFORMS))} (or set 'backend')"
        )
    if version_dir is not None:
        for filename, name in _FILE_HINTS.items():
            if (version_dir / filename).exists():
                return name
    raise ModelLoadError(
        f"{source}: neither 'platform' nor 'backend' is set and no known model file "
        f"({', '.join(_FILE_HINTS)}) was found to guess it from"
    )


def platform_of(name: str) -> str:
    """The ``platform`` string reported in metadata for a backend name."""
    return _PLATFORM_OF.get(name, name)


def resolve(name: str) -> type[Backend]:
    if name in _registered:
        return _registered[name]
    if name in _BUILTIN:
        module_name, _, attr = _BUILTIN[name].partition(":")
        module = importlib.import_module(module_name)
        cls: type[Backend] = getattr(module, attr)
        return cls
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            loaded = ep.load()
            if not (isinstance(loaded, type) and issubclass(loaded, Backend)):
                raise ModelLoadError(f"entry point '{ep.value}' for backend '{name}' is not a Backend subclass")
            _registered[name] = loaded
            return loaded
    known = sorted(set(_BUILTIN) | set(_registered) | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})
    raise ModelLoadError(f"unknown backend '{name}'; known backends: {', '.join(known)}")


def require(module: str, backend: str, extra: str | None) -> object:
    """Import a framework lazily, turning a missing package into an actionable load error."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        hint = f": pip install 'inferd[{extra}]'" if extra else ""
        raise ModelLoadError(
            f"backend '{backend}' needs the Python package '{module}', which is not installed{hint} ({e})"
        ) from None
