"""Model folders sent with a load request (RepositoryModelLoad's ``file:<path>`` parameters).

As in Triton, the files form the model's folder for that load, beside the ``config`` override
the request must carry: ``file:1/model.onnx`` is version 1's model file. The folder is private
to the server (a temporary directory, never the repository), kept while a version loaded from
it may serve, and removed when the model is loaded again, unloaded, or the server stops.

Names are checked before anything is written: relative, no ``..`` or hidden parts, no
backslashes or NUL, the first part a version number; the total size is bounded
(``--max-load-file-bytes``).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from ..protocol.errors import InvalidArgument, ResourceExhausted

PREFIX = "file:"
MAX_FILES = 1024
MAX_NAME_BYTES = 255  # NAME_MAX
MAX_PATH_BYTES = 1024  # well under PATH_MAX, with the server's folder in front
DEFAULT_MAX_BYTES = 256 * 1024 * 1024  # --max-load-file-bytes


def check_files(name: str, files: Mapping[str, bytes], max_bytes: int) -> dict[PurePosixPath, bytes]:
    """The relative paths and contents of ``file:`` parameters, or the reason they are refused."""
    if len(files) > MAX_FILES:
        raise InvalidArgument(f"model '{name}': at most {MAX_FILES} 'file:' parameters are accepted")
    total = sum(len(data) for data in files.values())
    if total > max_bytes:
        raise ResourceExhausted(
            f"model '{name}': the 'file:' parameters hold {total} bytes, over the limit of {max_bytes} "
            "(--max-load-file-bytes)"
        )
    out: dict[PurePosixPath, bytes] = {}
    for key, data in files.items():
        relative = key.removeprefix(PREFIX)
        path = PurePosixPath(relative)
        parts = path.parts
        bad = (
            not relative
            or "\\" in relative
            or "\0" in relative
            or path.is_absolute()
            or any(p in ("", ".", "..") or p.startswith(".") for p in parts)
            or len(parts) < 2
            or not (parts[0].isascii() and parts[0].isdigit())
        )
        if bad:
            raise InvalidArgument(
                f"model '{name}': parameter '{key}' must name a file as 'file:<version>/<path>' inside the "
                "model folder (no absolute paths, '..' or hidden names)"
            )
        sizes = [len(p.encode("utf-8", "surrogatepass")) for p in parts]
        if max(sizes) > MAX_NAME_BYTES or sum(sizes) + len(sizes) > MAX_PATH_BYTES:
            # Refused here, not by the file system when the folder is written.
            raise InvalidArgument(
                f"model '{name}': parameter '{key[:80]}...' names a path longer than the file system allows "
                f"({MAX_NAME_BYTES} bytes a part, {MAX_PATH_BYTES} in all)"
            )
        if path in out:
            raise InvalidArgument(f"model '{name}': parameter '{key}' is given twice")
        out[path] = data
    return out


class ModelFolders:
    """The server's private folders for models loaded from ``file:`` parameters."""

    def __init__(self) -> None:
        self._root: Path | None = None
        self._count = 0

    def write(self, name: str, files: Mapping[PurePosixPath, bytes]) -> Path:
        """A new repository root holding ``<root>/<name>/...``; blocking (writes files)."""
        if self._root is None:
            self._root = Path(tempfile.mkdtemp(prefix="inferd-model-files-"))
        self._count += 1
        root = self._root / str(self._count)
        folder = root / name
        for path, data in files.items():
            target = folder.joinpath(*path.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        folder.mkdir(parents=True, exist_ok=True)
        return root

    @staticmethod
    def remove(root: Path) -> None:
        shutil.rmtree(root, ignore_errors=True)

    def close(self) -> None:
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None
