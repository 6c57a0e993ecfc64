"""Triton's command line: launch lines written for tritonserver (KServe's runtime, ModelMesh's,
Triton's own docs) start `inferd serve` unchanged; every Triton flag is implemented or refused
by name; the flags map to the settings they name (repository, addresses, gRPC connection options,
backend config, config names)."""

from __future__ import annotations

import argparse
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from inferd.protocol.errors import ModelLoadError
from inferd.protocol.pb import grpc_service_pb2 as pb
from inferd.protocol.pb import grpc_service_pb2_grpc as pb_grpc
from inferd.server import backend_config
from inferd.server.cli import add_serve_arguments, settings_from_args
from inferd.server.loader import LoadOptions, plan_model
from inferd.server.log_settings import LogState
from inferd.server.repository import Repository
from inferd.server.triton_flags import REFUSED, TRITON_FLAGS, implemented
from onnx import TensorProto

from .conftest import start_server, test_settings
from .models import binary_model, bundled, write
from .serving import serve_argv

TRITON_PARSER = Path("/work/.mirror/triton-inference-server+server/repo")
SERVING = re.compile(r"INFO inferd: serving: gRPC ([\d.]+:\d+), HTTP ([\d.]+:\d+), metrics ([\d.]+:\d+)/metrics")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="inferd serve", exit_on_error=False)
    add_serve_arguments(p)
    return p


def parse(*argv: str) -> argparse.Namespace:
    return parser().parse_args(list(argv))


def refusal(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        p = argparse.ArgumentParser(prog="inferd serve")
        add_serve_arguments(p)
        p.parse_args(list(argv))
    assert exit_info.value.code == 2
    return capsys.readouterr().err


# --- the table of Triton's flags ------------------------------------------------------------------
def test_the_table_lists_every_flag_of_tritons_parser() -> None:
    try:
        source = subprocess.run(
            ["git", "-C", str(TRITON_PARSER), "show", "HEAD:src/command_line_parser.cc"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("Triton's sources are not on this machine")
    flags = re.findall(r'\{\s*OPTION_\w+,\s*"([a-z0-9-]+)"', source)
    assert flags and sorted(set(flags)) == sorted(TRITON_FLAGS)


def test_each_triton_flag_is_implemented_or_refused_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    status = implemented(parser())
    assert set(status) == set(TRITON_FLAGS)
    for flag, done in status.items():
        if done or flag == "help":
            continue
        err = refusal(capsys, f"--{flag}=1234")
        assert f"Triton's --{flag} is not implemented by inferd: " in err, err
        assert "unrecognized" not in err
    # Refusals describe flags inferd lacks, never one it has.
    assert {f for f, done in status.items() if not done} <= set(REFUSED)


@pytest.mark.parametrize(
    "argv",
    [
        ["--allow-sagemaker=false"],
        ["--allow-vertex-ai=false", "--allow-gpu-metrics=false"],
        ["--rate-limit=off", "--reuse-grpc-port=false", "--model-namespacing=false"],
        ["--grpc-infer-response-compression-level=none", "--buffer-manager-thread-count=0"],
    ],
)
def test_a_refused_flag_may_ask_for_what_inferd_does(argv: list[str]) -> None:
    parse(*argv)


def test_refusals_of_values_say_what_is_accepted(capsys: pytest.CaptureFixture[str]) -> None:
    err = refusal(capsys, "--allow-sagemaker=true")
    assert "SageMaker" in err and "inferd accepts only --allow-sagemaker=false" in err


# --- flags -> settings ---------------------------------------------------------------------------
def test_triton_flags_map_to_settings(tmp_path: Path) -> None:
    s = settings_from_args(
        parse(
            "--model-store",
            str(tmp_path),
            "--model-repository=/elsewhere",
            "--id=edge-1",
            "--http-address=0.0.0.0",
            "--grpc-address=127.0.0.1",
            "--strict-model-config=false",
            "--exit-on-error=false",
            "--backend-config=default-max-batch-size=16",
            "--backend-config=onnxruntime,default-max-batch-size=8",
            "--backend-config=onnxruntime,intra_op_thread_count=2",
            "--backend-config=python,shm-default-byte-size=1048576",
            "--model-load-thread-count=2",
            "--model-config-name=h100",
            "--grpc-keepalive-time=10000",
            "--grpc-keepalive-timeout=999999999",
            "--grpc-keepalive-permit-without-calls=True",
            "--grpc-http2-max-pings-without-data=0",
            "--grpc-http2-min-recv-ping-interval-without-data=5000",
            "--grpc-http2-max-ping-strikes=0",
            "--grpc-max-connection-age=60000",
            "--grpc-max-connection-age-grace=5000",
            "--log-verbose=1",
            "--log-info=false",
            "--log-format=ISO8601",
            "--http-max-input-size=1024",
        )
    )
    assert s.model_repository == (tmp_path, Path("/elsewhere"))
    assert s.server_id == "edge-1" and s.http_host() == "0.0.0.0" and s.grpc_host() == "127.0.0.1"
    assert s.metrics_host() == "0.0.0.0"  # the HTTP address, as in Triton
    assert s.exit_on_error is False and s.model_load_threads == 2 and s.http_max_body_bytes == 1024
    opts = s.load_options
    assert opts.auto_complete and opts.config_name == "h100"
    assert opts.backends.default_max_batch_size("onnxruntime", 4) == 8
    assert opts.backends.default_max_batch_size("tensorflow", 4) == 16
    assert opts.backends.parameters == {"onnxruntime": {"intra_op_thread_count": "2"}}
    assert opts.backends.no_effect == (("python", "shm-default-byte-size"),)
    assert dict(s.grpc_channel_options) == {
        "grpc.keepalive_time_ms": 10000,
        "grpc.keepalive_timeout_ms": 999999999,
        "grpc.keepalive_permit_without_calls": 1,
        "grpc.http2.max_pings_without_data": 0,
        "grpc.http2.min_ping_interval_without_data_ms": 5000,
        "grpc.http2.max_ping_strikes": 0,
        "grpc.max_connection_age_ms": 60000,
        "grpc.max_connection_age_grace_ms": 5000,
    }
    assert s.log_state() == LogState(log_info=False, log_verbose_level=1, log_format="ISO8601")


def test_defaults_and_spellings_of_auto_complete_and_logs() -> None:
    d = settings_from_args(parse())
    assert d.exit_on_error and d.load_options.auto_complete and d.grpc_channel_options == ()
    assert d.log_state() == LogState()
    assert not settings_from_args(parse("--disable-auto-complete-config")).load_options.auto_complete
    assert not settings_from_args(parse("--strict-model-config=true")).load_options.auto_complete
    assert settings_from_args(parse("--log-verbose=true")).log_state().log_verbose_level == 1
    # inferd's --log-level stays a shorthand; Triton's switches override it.
    assert settings_from_args(parse("--log-level", "DEBUG", "--log-verbose=0")).log_state().log_verbose_level == 0
    assert settings_from_args(parse("--log-level", "ERROR")).log_state() == LogState(log_info=False, log_warning=False)


@pytest.mark.parametrize(
    "argv,words",
    [
        (["--backend-config=tensorflow,foo=1"], "setting 'foo' for backend 'tensorflow' is not implemented"),
        (["--backend-config=nosuch,default-max-batch-size=1"], "backend 'nosuch', which inferd does not have"),
        (["--backend-config=onnxruntime,enable-global-threadpool=1"], "enable-global-threadpool=1 is not implemented"),
        (["--backend-config=default-max-batch-size=x"], "whole number"),
        (["--backend-config=,x=1"], "no backend before"),
        (["--model-config-name=../x"], "not a configuration name"),
        (["--log-format=xml"], "invalid argument for --log-format"),
        (["--log-info=maybe"], "invalid value for bool option"),
        (["--grpc-keepalive-time=-1"], "must be 0 or more"),
        (["--model-load-thread-count=0"], "must be 1 or more"),
    ],
)
def test_bad_values_are_refused_naming_them(capsys: pytest.CaptureFixture[str], argv: list[str], words: str) -> None:
    assert words in refusal(capsys, *argv)


def test_backend_settings_parse_as_triton_does() -> None:
    assert backend_config.parse("default-max-batch-size=8") == ("", "default-max-batch-size", "8")
    assert backend_config.parse("onnxruntime,a=b=c") == ("onnxruntime", "a", "b=c")
    ok = backend_config.settings([("onnxruntime", "enable-global-threadpool", "0")])
    assert ok.max_batch == {} and ok.parameters == {}


# --- what the repository flags do ----------------------------------------------------------------


def test_default_max_batch_size_and_auto_complete(tmp_path: Path) -> None:
    write(tmp_path, "auto_add", None, binary_model("Add", TensorProto.FLOAT, 3))
    repo = Repository(tmp_path)
    assert plan_model(repo, "auto_add").config.max_batch_size == 4  # Triton's default
    eight = LoadOptions(backends=backend_config.settings([("onnxruntime", "default-max-batch-size", "8")]))
    plan = plan_model(repo, "auto_add", options=eight)
    assert plan.config.max_batch_size == 8 and plan.config.HasField("dynamic_batching")
    unbatched = LoadOptions(backends=backend_config.settings([("", "default-max-batch-size", "0")]))
    assert plan_model(repo, "auto_add", options=unbatched).config.max_batch_size == 0
    with pytest.raises(ModelLoadError, match="auto-complete is off"):
        plan_model(repo, "auto_add", options=LoadOptions(auto_complete=False))


def test_model_config_name_reads_configs_name_pbtxt(tmp_path: Path) -> None:
    write(tmp_path, "add_sub", bundled.ADD_SUB_CONFIG, bundled.add_sub_model())
    (tmp_path / "add_sub" / "configs").mkdir()
    (tmp_path / "add_sub" / "configs" / "h100.pbtxt").write_text(
        bundled.ADD_SUB_CONFIG.replace("max_batch_size: 8", "max_batch_size: 2")
    )
    repo = Repository(tmp_path)
    assert plan_model(repo, "add_sub", options=LoadOptions(config_name="h100")).config.max_batch_size == 2
    # No configs/v100.pbtxt: config.pbtxt, as in Triton.
    assert plan_model(repo, "add_sub", options=LoadOptions(config_name="v100")).config.max_batch_size == 8


def test_backend_parameters_reach_instances_unless_the_model_sets_its_own(tmp_path: Path) -> None:
    write(tmp_path, "add_sub", bundled.ADD_SUB_CONFIG, bundled.add_sub_model())
    opts = LoadOptions(backends=backend_config.settings([("onnxruntime", "intra_op_thread_count", "3")]))
    assert plan_model(Repository(tmp_path), "add_sub", options=opts).default_parameters == {
        "intra_op_thread_count": "3"
    }


# --- gRPC connection options ---------------------------------------------------------------------
def test_max_connection_age_closes_a_long_stream(tmp_path: Path) -> None:
    write(tmp_path, "add_sub", bundled.ADD_SUB_CONFIG, bundled.add_sub_model())
    running = start_server(
        test_settings(
            tmp_path,
            allow_http=False,
            allow_metrics=False,
            grpc_channel_options=(("grpc.max_connection_age_ms", 300), ("grpc.max_connection_age_grace_ms", 300)),
        )
    )

    def idle() -> Iterator[pb.ModelInferRequest]:
        time.sleep(5)  # a stream that sends nothing for longer than age + grace
        yield from ()

    try:
        with grpc.insecure_channel(running.grpc_url) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ServerLive(pb.ServerLiveRequest()).live
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                list(stub.ModelStreamInfer(idle(), timeout=20))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert time.monotonic() - started < 4  # closed by the server, not by the stream's end
    finally:
        running.stop()


# --- launch lines from KServe, ModelMesh and Triton's docs ------------------------------------
def serve_line(argv: list[str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not SERVING.search(text := log.read_text(errors="replace")):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"server did not start:\n{text}")
        time.sleep(0.1)
    return proc, text


# Ports are taken from the system (0) so the test never collides with another server; every
# other argument is the launch line's own. Models: {repo}.
LAUNCH_LINES = {
    # KServe's ClusterServingRuntime kserve-tritonserver (config/runtimes/kserve-tritonserver.yaml).
    "kserve": "--model-store={repo} --grpc-port=0 --http-port=0 --allow-grpc=true --allow-http=true",
    # ModelMesh's Triton runtime (its args, after `tritonserver`).
    "modelmesh": "--model-repository={repo} --model-control-mode=explicit --load-model=add_sub "
    "--strict-model-config=false --strict-readiness=false --allow-http=true --allow-sagemaker=false "
    "--grpc-keepalive-time=10000 --grpc-keepalive-timeout=999999999 --grpc-keepalive-permit-without-calls=True "
    "--grpc-http2-max-pings-without-data=0 --grpc-http2-min-recv-ping-interval-without-data=5000 "
    "--grpc-http2-max-ping-strikes=0 --grpc-port=0 --http-port=0",
    # Triton's quick start and model-management docs.
    "triton-docs": "--model-repository={repo} --log-verbose=1 --log-info=1 --log-warning=1 --log-error=1 "
    "--exit-on-error=false --grpc-port=0 --http-port=0",
}


@pytest.mark.parametrize("name", sorted(LAUNCH_LINES))
def test_launch_lines_start_inferd_unchanged(name: str, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    write(repo, "add_sub", bundled.ADD_SUB_CONFIG, bundled.add_sub_model())
    args = LAUNCH_LINES[name].format(repo=repo).split()
    argv = [*serve_argv()[:4], *args, "--metrics-port=0"]  # python -m inferd.server.cli serve ...
    proc, text = serve_line(argv, tmp_path / "log")
    try:
        _, http, _ = SERVING.search(text).groups()  # type: ignore[union-attr]
        assert httpx.get(f"http://{http}/v2/models/add_sub/ready", timeout=10).status_code == 200
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
