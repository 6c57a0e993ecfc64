"""inferd client-side code (gRPC/protobuf stubs and helpers)."""
