"""inferd client-side code: the generated gRPC/protobuf stubs (``pb``) and a small numpy client.

Importable without the server's dependencies (grpcio, protobuf and numpy only).
"""

from .client import AsyncInferenceClient, InferenceClient, InferenceError

__all__ = ["AsyncInferenceClient", "InferenceClient", "InferenceError"]
