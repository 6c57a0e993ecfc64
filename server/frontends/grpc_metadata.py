"""Messages of the gRPC front end's non-inference RPCs: server and model metadata, model
configuration, statistics and the repository index (``http_metadata`` has their JSON forms)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...protocol.pb import grpc_service_pb2 as pb
from ...protocol.pb import model_config_pb2
from ...protocol.types import ModelIndexEntry, ModelMetadata, ServerMetadata
from ..stats import Duration, ModelStats


def server_metadata_pb(m: ServerMetadata) -> pb.ServerMetadataResponse:
    return pb.ServerMetadataResponse(name=m.name, version=m.version, extensions=m.extensions)


def model_metadata_pb(m: ModelMetadata) -> pb.ModelMetadataResponse:
    T = pb.ModelMetadataResponse.TensorMetadata
    return pb.ModelMetadataResponse(
        name=m.name,
        versions=m.versions,
        platform=m.platform,
        inputs=[T(name=t.name, datatype=t.datatype, shape=t.shape) for t in m.inputs],
        outputs=[T(name=t.name, datatype=t.datatype, shape=t.shape) for t in m.outputs],
    )


def model_config_pb(config: model_config_pb2.ModelConfig) -> pb.ModelConfigResponse:
    response = pb.ModelConfigResponse()
    response.config.CopyFrom(config)
    return response


def statistics_pb(stats: list[ModelStats]) -> pb.ModelStatisticsResponse:
    response = pb.ModelStatisticsResponse()
    for s in stats:
        statistics_to_pb(s, response.model_stats.add())
    return response


def _duration(target: Any, d: Duration) -> None:
    target.count = d.count
    target.ns = d.ns


def statistics_to_pb(stats: ModelStats, target: pb.ModelStatistics) -> None:
    """Triton's ModelStatistics; the same fields as ``http_metadata.statistics_json``."""
    target.name = stats.name
    target.version = stats.version
    target.last_inference = stats.last_inference_ms
    target.inference_count = stats.inference_count
    target.execution_count = stats.execution_count
    s = target.inference_stats
    _duration(s.success, stats.success)
    _duration(s.fail, stats.fail)
    _duration(s.queue, stats.queue)
    _duration(s.compute_input, stats.compute_input)
    _duration(s.compute_infer, stats.compute_infer)
    _duration(s.compute_output, stats.compute_output)
    # Present (zero without a response cache), as Triton reports them.
    s.cache_hit.SetInParent()
    s.cache_miss.SetInParent()
    _duration(s.cache_hit, stats.cache_hit)
    _duration(s.cache_miss, stats.cache_miss)
    for size, b in sorted(stats.batch_stats.items()):
        entry = target.batch_stats.add()
        entry.batch_size = size
        _duration(entry.compute_input, b.compute_input)
        _duration(entry.compute_infer, b.compute_infer)
        _duration(entry.compute_output, b.compute_output)
    for index, r in sorted(stats.response_stats.items()):  # decoupled models'
        target_r = target.response_stats[str(index)]
        for name in ("compute_infer", "compute_output", "success", "fail", "empty_response", "cancel"):
            _duration(getattr(target_r, name), getattr(r, name))


def repository_index_pb(entries: list[ModelIndexEntry]) -> pb.RepositoryIndexResponse:
    M = pb.RepositoryIndexResponse.ModelIndex
    return pb.RepositoryIndexResponse(
        models=[M(name=e.name, version=e.version, state=e.state, reason=e.reason) for e in entries]
    )


def log_settings_changes(request: pb.LogSettingsRequest) -> dict[str, object]:
    """A LogSettings request's settings as plain values (an unset oneof is None, refused by the core)."""
    changes: dict[str, object] = {}
    for key, value in request.settings.items():
        choice = value.WhichOneof("parameter_choice")
        changes[key] = None if choice is None else getattr(value, choice)
    return changes


def log_settings_pb(settings: Mapping[str, bool | int | str]) -> pb.LogSettingsResponse:
    response = pb.LogSettingsResponse()
    for key, value in settings.items():
        entry = response.settings[key]
        if isinstance(value, bool):
            entry.bool_param = value
        elif isinstance(value, int):
            entry.uint32_param = value
        else:
            entry.string_param = value
    return response
