"""The model repository folder: model names, version folders and the version policy.

Every path handed out is confined to the repository root: model names with separators or
``..`` are refused, and a symlink that resolves outside the root is refused too.
"""

from __future__ import annotations

from pathlib import Path

from ..clients.pb import model_config_pb2 as mc
from .errors import InvalidArgument, ModelLoadError, NotFound


def check_model_name(name: str) -> None:
    """Model names are single path components; anything else is the client's error."""
    if not name or not name.strip():
        raise InvalidArgument("model name is empty")
    if "/" in name or "\\" in name or "\x00" in name or name in (".", "..") or name.startswith("."):
        raise InvalidArgument(
            f"invalid model name '{name}': names are a single folder name without path "
            "separators, '..' or a leading '.'"
        )


class Repository:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def model_names(self) -> list[str]:
        """Folders of the repository that may hold a model (hidden ones are skipped)."""
        if not self.root.is_dir():
            return []
        names = []
        for entry in sorted(self.root.iterdir()):
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            if self._inside(entry):
                names.append(entry.name)
        return names

    def model_dir(self, name: str) -> Path:
        check_model_name(name)
        path = self.root / name
        if not path.is_dir():
            raise NotFound(f"model '{name}' is not in the model repository")
        if not self._inside(path):
            raise InvalidArgument(f"model folder '{name}' resolves outside the model repository")
        return path

    def _inside(self, path: Path) -> bool:
        try:
            path.resolve().relative_to(self.root)
        except ValueError:
            return False
        return True

    def available_versions(self, model_dir: Path) -> list[int]:
        versions = []
        for entry in model_dir.iterdir():
            if entry.is_dir() and entry.name.isdigit() and self._inside(entry):
                versions.append(int(entry.name))
        return sorted(versions)

    def select_versions(self, config: mc.ModelConfig, model_dir: Path) -> list[int]:
        """Apply ``version_policy`` (default: latest 1) to the version folders present."""
        available = self.available_versions(model_dir)
        source = f"{model_dir / 'config.pbtxt'}"
        policy = config.version_policy
        choice = policy.WhichOneof("policy_choice")
        if choice == "all":
            chosen = available
        elif choice == "specific":
            wanted = list(policy.specific.versions)
            missing = [v for v in wanted if v not in available]
            if missing:
                raise ModelLoadError(
                    f"{source}: version_policy.specific asks for version(s) {missing} "
                    f"but the folder has {available or 'none'}"
                )
            chosen = sorted(wanted)
        else:
            n = policy.latest.num_versions if choice == "latest" else 1
            if n < 1:
                raise ModelLoadError(f"{source}: version_policy.latest.num_versions must be >= 1")
            chosen = available[-n:]
        if not chosen:
            raise ModelLoadError(
                f"{model_dir}: no version folder (a numeric sub-folder such as '1/') to load"
            )
        return chosen

    def model_file(self, version_dir: Path, filename: str) -> Path:
        path = version_dir / filename
        if not path.exists():
            raise ModelLoadError(f"{path}: model file not found")
        if not self._inside(path):
            raise ModelLoadError(f"{path}: resolves outside the model repository")
        return path
