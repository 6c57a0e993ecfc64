"""``model_repository_agents``: Triton's ``checksum`` agent, run before a model loads.

Its parameters map ``<algorithm>:<path relative to the model folder>`` to the file's expected
digest (Triton's agent knows MD5 only); a mismatch, a missing file or a path leaving the model
folder fails the load. Any other agent is refused by name: inferd cannot run Triton's agent
libraries, and skipping an agent (decryption, authentication) would load the wrong thing.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..protocol.errors import ModelLoadError
from ..protocol.pb import model_config_pb2 as mc

CHUNK = 1 << 20


def run_agents(config: mc.ModelConfig, model_dir: Path, source: str) -> None:
    for agent in config.model_repository_agents.agents:
        if agent.name != "checksum":
            raise ModelLoadError(
                f"{source}: repository agent '{agent.name}' is not supported; inferd implements 'checksum' only"
            )
        for key, expected in agent.parameters.items():
            _check(model_dir, key, expected, source)


def _check(model_dir: Path, key: str, expected: str, source: str) -> None:
    algorithm, sep, relative = key.partition(":")
    if not sep or not relative:
        raise ModelLoadError(f"{source}: checksum agent: failed to parse key: {key}")
    if algorithm.lower() != "md5":
        raise ModelLoadError(f"{source}: checksum agent: Unsupported checksum algorithm: {algorithm}")
    root = model_dir.resolve()
    path = (root / relative).resolve()
    if Path(relative).is_absolute() or not path.is_relative_to(root):
        raise ModelLoadError(f"{source}: checksum agent: file '{relative}' is outside the model folder")
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with path.open("rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
    except OSError:
        raise ModelLoadError(f"{source}: checksum agent: failed to open file for read: {relative}") from None
    got = digest.hexdigest()
    if got != expected.strip().lower():
        raise ModelLoadError(
            f"{source}: checksum agent: Mismatched MD5 hash for file {relative}, expect: {expected}, got: {got}"
        )
