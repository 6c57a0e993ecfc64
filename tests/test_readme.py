"""README.md's code blocks run as pasted, against a live `inferd serve` on the bundled model_repository/.

Every fenced ```python and ```bash block is run: each Python block alone in a fresh interpreter
(so none leans on a name another block defined), then all Python blocks concatenated in order in
one interpreter (so none rebinds a name that a later block uses in another meaning), and each bash
block with `bash -euo pipefail` and `.venv/bin` first on PATH. All run in the repository root.

The README is written for the default ports, 8000 (HTTP), 8001 (gRPC) and 8002 (metrics); the
server here takes ephemeral ones, so before running a block the test rewrites `host:8000`,
`host:8001` and `host:8002` (host `localhost`, `127.0.0.1` or `0.0.0.0`) to the real ports.

A block that must not run here (one that installs packages, starts a server in the foreground,
runs the whole suite) carries a marker on the line just before its fence, with the reason:

    <!-- readme-test: skip (starts the server in the foreground) -->
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from inferd.clients import InferenceClient

from .serving import serve_argv

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
VENV_BIN = ROOT / ".venv" / "bin"

FENCE = re.compile(r"^```\s*(\S*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*readme-test:(.*?)-->\s*$")
SKIP = re.compile(r"^\s*skip\s*\((.*\S.*)\)\s*$")
RUN_LANGS = ("python", "bash")
TEXT_LANGS = ("", "text")  # diagrams and sample output: shown, never run

DEFAULT_PORTS = {"8000": "http", "8001": "grpc", "8002": "metrics"}
PORT_REF = re.compile(r"\b(localhost|127\.0\.0\.1|0\.0\.0\.0):(8000|8001|8002)\b")
LISTENING = re.compile(r"(gRPC|HTTP|metrics) \(.*?\) listening on [\d.]+:(\d+)")
MODEL_REF = re.compile(r"""infer\(\s*["'](\w+)["']|/v2/models/(\w+)/""")
# What a reader would take for a failure even when the exit status is 0 (curl prints a 4xx body
# and exits 0 without --fail; a model the index lists as UNAVAILABLE is broken).
ERROR_SIGNS = re.compile(
    r"Traceback \(most recent call last\)|\b\w+(Error|Exception)\b|\"error\"\s*:|\bUNAVAILABLE\b|^curl: \(\d+\)",
    re.MULTILINE,
)
BLOCK_TIMEOUT_S = 60


@dataclass(frozen=True)
class Block:
    lang: str
    line: int  # 1-based line of the opening fence
    code: str
    marker: str | None  # the text of a `readme-test:` comment just before the fence

    @property
    def skip_reason(self) -> str | None:
        found = SKIP.match(self.marker or "")
        return found.group(1).strip() if found else None

    def __str__(self) -> str:
        return f"README.md {self.lang} block at line {self.line}"


def parse_blocks(text: str) -> list[Block]:
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence is None:
            i += 1
            continue
        end = i + 1
        while end < len(lines) and not lines[end].startswith("```"):
            end += 1
        marker = MARKER.match(lines[i - 1]) if i > 0 else None
        code = "\n".join(lines[i + 1 : end]) + "\n"
        blocks.append(Block(fence.group(1), i + 1, code, marker.group(1) if marker else None))
        i = end + 1
    return blocks


def marker_lines(text: str) -> list[int]:
    """0-based indexes of every `readme-test:` comment."""
    return [i for i, line in enumerate(text.splitlines()) if MARKER.match(line)]


BLOCKS = parse_blocks(README.read_text(encoding="utf-8"))
RUNNABLE = [b for b in BLOCKS if b.lang in RUN_LANGS]


def block_params() -> list[object]:
    return [
        pytest.param(
            b,
            id=f"{b.lang}-line{b.line}",
            marks=[pytest.mark.skip(reason=f"README: {b.skip_reason}")] if b.skip_reason else [],
        )
        for b in RUNNABLE
    ]


# --- the server -----------------------------------------------------------------------------------
@dataclass
class Server:
    ports: dict[str, int]  # "grpc" / "http" / "metrics" -> port
    log: Path

    def point_at(self, code: str) -> str:
        """The README's default ports replaced by this server's."""
        code = PORT_REF.sub(lambda m: f"{m.group(1)}:{self.ports[DEFAULT_PORTS[m.group(2)]]}", code)
        # Left as it is, the block would talk to whatever listens on the real port 8000-8002.
        left = re.search(r".*\b800[012]\b.*", code)
        assert left is None, f"a default port this test cannot rewrite (write host:port): {left.group(0)!r}"
        return code


def wait_for_start(proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> dict[str, int]:
    """The three ports, once the server logs that the start-up loads are done."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if "model(s) requested" in text:
            return {kind.lower(): int(port) for kind, port in LISTENING.findall(text)}
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"inferd serve did not start:\n{log.read_text(errors='replace')}")


def used_models() -> set[str]:
    return {a or b for block in RUNNABLE if not block.skip_reason for a, b in MODEL_REF.findall(block.code)}


def wait_until_ready(url: str, names: set[str], log: Path, timeout: float = 10) -> None:
    """An ensemble can turn READY a moment after its composing models; a broken model never does."""
    deadline = time.monotonic() + timeout
    with InferenceClient(url) as client:
        while True:
            index = {m.name: m for m in client.repository_index()}
            waiting = sorted(n for n in names if n not in index or index[n].state != "READY")
            if not waiting:
                return
            if time.monotonic() > deadline:
                states = "\n".join(
                    f"  {n}: {index[n].state} {index[n].reason}" if n in index else f"  {n}: not in the repository"
                    for n in waiting
                )
                raise AssertionError(
                    f"models the README uses are not READY:\n{states}\nserver log:\n{log.read_text(errors='replace')}"
                )
            time.sleep(0.1)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("readme") / "inferd.log"
    cmd = serve_argv(
        "--model-repository",
        str(ROOT / "model_repository"),
        "--model-control-mode",
        "none",
        "--allow-client-shm",
        "true",
    )
    # A file, not a pipe: nobody drains the server's output while the blocks run.
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        ports = wait_for_start(proc, log)
        wait_until_ready(f"127.0.0.1:{ports['grpc']}", used_models(), log)
        yield Server(ports, log)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- running blocks -------------------------------------------------------------------------------
def command_for(lang: str, code: str) -> list[str]:
    if lang == "python":
        return [sys.executable, "-c", code]
    return ["bash", "-euo", "pipefail", "-c", code]


def run_block(server: Server, what: str, lang: str, code: str) -> None:
    """Run `code` as pasted (ports rewritten); fail with the code and its output if it went wrong."""
    code = server.point_at(code)
    env = {
        **os.environ,
        "PATH": os.pathsep.join([str(VENV_BIN), str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    try:
        result = subprocess.run(
            command_for(lang, code), cwd=ROOT, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{what} ran over {BLOCK_TIMEOUT_S} s:\n--- code ---\n{code}\n--- output ---\n{e.output}")
    output = result.stdout + result.stderr
    sign = ERROR_SIGNS.search(output)
    if result.returncode != 0 or sign is not None:
        why = f"exit status {result.returncode}" if result.returncode else f"its output shows {sign.group(0)!r}"
        pytest.fail(
            f"{what} failed ({why}):\n--- code (ports rewritten) ---\n{code}--- output ---\n{output}", pytrace=False
        )


# --- tests ----------------------------------------------------------------------------------------
def test_every_fence_is_run_or_text() -> None:
    """A ```sh or ```console block would silently go untested."""
    odd = [f"line {b.line}: ```{b.lang}" for b in BLOCKS if b.lang not in RUN_LANGS + TEXT_LANGS]
    assert not odd, f"README.md blocks neither run nor plain text (tag them {RUN_LANGS} or 'text'): {odd}"


def test_markers_are_skips_with_a_reason_just_before_a_fence() -> None:
    text = README.read_text(encoding="utf-8")
    lines = text.splitlines()
    problems = []
    for i in marker_lines(text):
        if i + 1 >= len(lines) or not FENCE.match(lines[i + 1]):
            problems.append(f"line {i + 1}: not on the line just before a fence")
    for b in BLOCKS:
        if b.marker is not None and b.skip_reason is None:
            problems.append(f"line {b.line - 1}: {b.marker.strip()!r} is not 'skip (reason)'")
        if b.marker is not None and b.lang not in RUN_LANGS:
            problems.append(f"line {b.line - 1}: marks a ```{b.lang} block, which is never run anyway")
    assert not problems, "README.md readme-test markers:\n" + "\n".join(problems)


def test_inferd_command_is_located_before_its_first_use() -> None:
    text = README.read_text(encoding="utf-8")
    first_use = re.search(r"`inferd (serve|perf)\b", text)
    located = re.search(r"\.venv/bin/(inferd|activate)\b", text)
    assert first_use is None or (located is not None and located.start() < first_use.start()), (
        "README.md uses `inferd ...` before saying where the command is (.venv/bin/inferd)"
    )


def test_there_are_blocks_to_run() -> None:
    assert [b for b in RUNNABLE if b.lang == "python" and not b.skip_reason]
    assert [b for b in RUNNABLE if b.lang == "bash" and not b.skip_reason]


@pytest.mark.parametrize("block", block_params())
def test_block_runs_alone(server: Server, block: Block) -> None:
    run_block(server, str(block), block.lang, block.code)


def test_python_blocks_run_in_order_in_one_interpreter(server: Server) -> None:
    blocks = [b for b in RUNNABLE if b.lang == "python" and not b.skip_reason]
    code = "\n".join(f"# --- README.md line {b.line}\n{b.code}" for b in blocks)
    run_block(server, "README.md's python blocks, in order", "python", code)
