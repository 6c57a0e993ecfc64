"""Generated gRPC/protobuf stubs for inferd's API (package ``inference`` and
``grpc.health.v1``).

Do not edit: regenerate with ``python proto/generate.py`` from the sources in
proto/. The messages live in a private descriptor pool (see ``_pool``), so
they can be used side by side with tritonclient's identically named ones.
"""
