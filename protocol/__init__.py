"""The protocol layer every other part of inferd builds on: the generated gRPC/protobuf stubs
(``pb``), the one datatype codec (``codec``), the error hierarchy (``errors``), the core's
request and response types (``types``), the typed view of a model's config that schedulers
and backends read (``model_spec``) and the interface through which models call other models
(``caller``). It imports nothing of the server, the backends or the clients (an
import-linter contract in pyproject.toml checks it)."""
