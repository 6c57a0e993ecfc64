"""The model repository folders: model names, version folders, the version policy and file
fingerprints.

A server may serve several repository folders (Triton's repeated ``--model-repository``); a
model lives in exactly one of them, and a name found in two is an error that names both.
Every path handed out is confined to the root of the repository its model is in: model names
with separators or ``..`` are refused, a symlink that resolves outside that root is refused
(even into another repository), and file names taken from a config
(``default_model_filename``, warmup data files) must stay inside their folder.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePath

from ..protocol.errors import InvalidArgument, ModelLoadError, NotFound
from ..protocol.pb import model_config_pb2 as mc

# Folders a repository may hold that are never models: Python's bytecode cache appears beside
# a repository's own .py files (the installed bundled repository has its build script).
NOT_MODELS = frozenset({"__pycache__"})

# One entry per file under a folder: (path relative to the folder, size, mtime_ns).
Fingerprint = tuple[tuple[str, int, int], ...]


def check_model_name(name: str) -> None:
    """Model names are single path components; anything else is the client's error."""
    if not name or not name.strip():
        raise InvalidArgument("model name is empty")
    if (
        "/" in name
        or "\\" in name
        or "\x00" in name
        or name.startswith(".")
        or name != name.strip()
        or any(ord(c) < 32 for c in name)
    ):
        raise InvalidArgument(
            f"invalid model name {name!r}: names are a single folder name without path "
            "separators, '..', a leading '.', surrounding spaces or control characters"
        )


def is_model_name(name: str) -> bool:
    try:
        check_model_name(name)
    except InvalidArgument:
        return False
    return True


class Repository:
    def __init__(self, *roots: Path) -> None:
        if not roots:
            raise ValueError("a model repository needs at least one folder")
        self.roots = tuple(dict.fromkeys(r.resolve() for r in roots))
        # Paths that callers build from a folder as given (not resolved) map to its root too.
        prefixes = {r: r for r in self.roots}
        prefixes.update({Path(os.path.abspath(r)): r.resolve() for r in roots})
        self._prefixes = tuple(prefixes.items())

    def model_names(self) -> list[str]:
        """Folders of the repositories that may hold a model (hidden ones are skipped, so that
        copying into ``.name`` and renaming it is an atomic way to add a model)."""
        names: set[str] = set()
        for root in self.roots:
            if not root.is_dir():
                continue
            for entry in root.iterdir():
                if entry.name in NOT_MODELS or not is_model_name(entry.name):
                    continue
                if entry.is_dir() and self.inside(entry):
                    names.add(entry.name)
        return sorted(names)

    def model_dirs(self, name: str) -> list[Path]:
        """Every folder named ``name`` in the repositories (more than one is the model's error,
        reported when it loads); NotFound when there is none."""
        check_model_name(name)
        found: list[Path] = []
        escaping = False
        for root in self.roots:
            path = root / name
            # Confinement first: nothing outside the model's repository is even looked at.
            if not self.inside(path):
                escaping = True
                continue
            if path.is_dir():
                found.append(path)
        if not found and escaping:
            raise InvalidArgument(f"model folder '{name}' resolves outside the model repository")
        if not found:
            raise NotFound(f"model '{name}' is not in the model repository")
        return found

    def model_dir(self, name: str) -> Path:
        found = self.model_dirs(name)
        if len(found) > 1:
            raise ModelLoadError(
                f"model '{name}' is in {_count(len(found))} model repositories: {_join([str(p.parent) for p in found])}"
            )
        return found[0]

    def root_of(self, path: Path) -> Path | None:
        """The repository ``path`` was taken from, by its name and not its symlinks' targets:
        what belongs to a model must stay in that model's repository."""
        path = Path(os.path.abspath(path))
        matches = [(len(prefix.parts), root) for prefix, root in self._prefixes if path.is_relative_to(prefix)]
        return max(matches)[1] if matches else None

    def inside(self, path: Path, folder: Path | None = None) -> bool:
        """Whether ``path`` (symlinks resolved) lies inside ``folder`` (default: the root of
        the repository it belongs to)."""
        base = self.root_of(path) if folder is None else folder.resolve()
        if base is None:
            return False
        try:
            path.resolve().relative_to(base)
        except (ValueError, OSError, RuntimeError):  # RuntimeError: symlink loop
            return False
        return True

    def available_versions(self, model_dir: Path) -> list[int]:
        versions = []
        for entry in model_dir.iterdir():
            if entry.name.isascii() and entry.name.isdigit() and self.inside(entry) and entry.is_dir():
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
            chosen = sorted(set(wanted))
        else:
            n = policy.latest.num_versions if choice == "latest" else 1
            if n < 1:
                raise ModelLoadError(f"{source}: version_policy.latest.num_versions must be >= 1")
            chosen = available[-n:]
        if not chosen:
            raise ModelLoadError(f"{model_dir}: no version folder (a numeric sub-folder such as '1/') to load")
        return chosen

    def file_in(self, folder: Path, relative: str, what: str) -> Path:
        """``folder / relative``, refusing names that leave ``folder`` (absolute paths, ``..``)
        and symlinks that resolve outside the repository. Does not check existence."""
        parts = PurePath(relative).parts
        if not relative or PurePath(relative).is_absolute() or ".." in parts or "\\" in relative:
            raise ModelLoadError(f"{what} '{relative}' must name a file inside {folder}")
        path = folder / relative
        if not self.inside(path):
            raise ModelLoadError(f"{what} '{relative}' resolves outside the model repository")
        return path

    def model_file(self, version_dir: Path, filename: str) -> Path:
        path = self.file_in(version_dir, filename, "model file")
        if not path.exists():
            raise ModelLoadError(f"{path}: model file not found")
        return path

    def check_config_file(self, model_dir: Path, filename: str) -> None:
        """A ``config.pbtxt`` that is a symlink out of the repository is never read."""
        path = model_dir / filename
        if path.is_symlink() and not self.inside(path):
            raise ModelLoadError(f"{path}: resolves outside the model repository")

    def fingerprint(self, folder: Path, skip: frozenset[str] = frozenset()) -> Fingerprint:
        """(relative path, size, mtime_ns) of every entry under ``folder``, sorted.

        Symlinks are not followed into folders; a symlink to a file inside the repository
        counts with its target's size and mtime, one pointing outside only as the link itself
        (its target is never looked at). Top-level names in ``skip`` are left out."""
        entries: list[tuple[str, int, int]] = []
        for top, dirs, files in os.walk(folder, followlinks=False):
            rel_top = os.path.relpath(top, folder)
            if rel_top == ".":
                dirs[:] = [d for d in dirs if d not in skip]
                files = [f for f in files if f not in skip]
            for name in sorted(files) + sorted(d for d in dirs if os.path.islink(os.path.join(top, d))):
                path = os.path.join(top, name)
                rel = os.path.normpath(os.path.join(rel_top, name))
                try:
                    st = os.lstat(path)
                    if stat.S_ISLNK(st.st_mode) and self.inside(Path(path)):
                        st = os.stat(path)
                except OSError:
                    continue  # vanished between listing and stat: the next scan sees the change
                entries.append((rel, st.st_size, st.st_mtime_ns))
        return tuple(sorted(entries))

    def model_fingerprint(self, name: str) -> Fingerprint:
        """The fingerprints of every folder of ``name``, each after an entry naming the folder,
        so that a model moving between repositories or appearing in a second one is a change."""
        entries: list[tuple[str, int, int]] = []
        for folder in self.model_dirs(name):
            entries.append((str(folder), 0, 0))
            entries.extend(self.fingerprint(folder))
        return tuple(entries)


def _count(n: int) -> str:
    return {2: "two", 3: "three"}.get(n, str(n))


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
