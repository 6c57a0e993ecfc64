"""JSON documents of the HTTP front end's non-inference endpoints: server and model metadata,
model configuration, statistics and the repository index, in the KServe v2 / Triton shapes."""

from __future__ import annotations

from typing import Any

from ...protocol.types import ModelIndexEntry, ModelMetadata, ServerMetadata, TensorMetadata
from ..stats import Duration, ModelStats


def _tensor_json(t: TensorMetadata) -> dict[str, Any]:
    return {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}


def server_metadata_json(m: ServerMetadata) -> dict[str, Any]:
    return {"name": m.name, "version": m.version, "extensions": list(m.extensions)}


def model_metadata_json(m: ModelMetadata) -> dict[str, Any]:
    return {
        "name": m.name,
        "versions": list(m.versions),
        "platform": m.platform,
        "inputs": [_tensor_json(t) for t in m.inputs],
        "outputs": [_tensor_json(t) for t in m.outputs],
    }


def _duration(d: Duration) -> dict[str, int]:
    return {"count": d.count, "ns": d.ns}


def statistics_json(stats: list[ModelStats]) -> dict[str, Any]:
    """Triton's HTTP statistics shape: {"model_stats": [...]}, the same fields as gRPC."""
    return {"model_stats": [_model_stats(s) for s in stats]}


def _model_stats(s: ModelStats) -> dict[str, Any]:
    return {
        "name": s.name,
        "version": s.version,
        "last_inference": s.last_inference_ms,
        "inference_count": s.inference_count,
        "execution_count": s.execution_count,
        "inference_stats": {
            "success": _duration(s.success),
            "fail": _duration(s.fail),
            "queue": _duration(s.queue),
            "compute_input": _duration(s.compute_input),
            "compute_infer": _duration(s.compute_infer),
            "compute_output": _duration(s.compute_output),
            "cache_hit": _duration(s.cache_hit),
            "cache_miss": _duration(s.cache_miss),
        },
        "batch_stats": [
            {
                "batch_size": size,
                "compute_input": _duration(b.compute_input),
                "compute_infer": _duration(b.compute_infer),
                "compute_output": _duration(b.compute_output),
            }
            for size, b in sorted(s.batch_stats.items())
        ],
        "memory_usage": [],
        "response_stats": {  # decoupled models'
            str(index): {
                name: _duration(getattr(r, name))
                for name in ("compute_infer", "compute_output", "success", "fail", "empty_response", "cancel")
            }
            for index, r in sorted(s.response_stats.items())
        },
    }


def repository_index_json(entries: list[ModelIndexEntry]) -> list[dict[str, str]]:
    """Triton leaves out empty fields (a model never loaded has only its name)."""
    out = []
    for e in entries:
        item = {"name": e.name, "version": e.version, "state": e.state, "reason": e.reason}
        out.append({k: v for k, v in item.items() if v or k == "name"})
    return out
