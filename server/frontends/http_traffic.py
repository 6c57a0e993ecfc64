"""The rollout routes of the HTTP front end: a model's traffic policy, promote and rollback.

Routes (all in the ``model-repository`` API category of access control: they change which
version answers, as a load does; none exists under ``/versions/<v>``):

    GET  /v2/models/{model}/traffic            the policy in force, live shares, canary, shadow,
                                               drift and the last events (JSON)
    POST /v2/models/{model}/traffic            a new policy: {"weights": {"1": 90, "2": 10},
                                               "sticky": "user", "shadow": {"version": "3",
                                               "share": 0.5}, "canary": {...}}; all but
                                               "weights" optional. 400 and nothing changes when
                                               it is malformed or names a version that does not
                                               serve
    POST /v2/models/{model}/traffic/promote    {"version": "2"[, "bake_s": 600]}: all traffic to it
    POST /v2/models/{model}/traffic/rollback   back to the policy before the last change

Each answers the model's rollout document, as GET does. gRPC has no counterpart: the KServe v2
service has no RPC for it and inferd adds none to a service clients generate stubs from.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..core import InferenceCore
from . import http_convert as conv
from .http_body import request_body


class TrafficApi:
    def __init__(self, core: InferenceCore, max_body_bytes: int) -> None:
        self.core = core
        self.max_body_bytes = max_body_bytes

    async def _doc(self, request: Request) -> Any:
        body = await request_body(request, self.max_body_bytes)
        return conv.parse_json(body) if len(body) and bytes(body).strip() else {}

    async def traffic(self, request: Request) -> Response:
        model = request.path_params["model"]
        if request.method == "GET":
            return _json(self.core.traffic(model))
        return _json(await self.core.set_traffic(model, await self._doc(request)))

    async def promote(self, request: Request) -> Response:
        return _json(await self.core.promote(request.path_params["model"], await self._doc(request)))

    async def rollback(self, request: Request) -> Response:
        await self._doc(request)  # read (and check) whatever was sent; nothing in it is used
        return _json(await self.core.rollback(request.path_params["model"]))


def traffic_routes(core: InferenceCore, max_body_bytes: int) -> list[BaseRoute]:
    api = TrafficApi(core, max_body_bytes)
    prefix = "/v2/models/{model}/traffic"
    return [
        Route(prefix, api.traffic, methods=["GET", "POST"]),
        Route(prefix + "/promote", api.promote, methods=["POST"]),
        Route(prefix + "/rollback", api.rollback, methods=["POST"]),
    ]


def _json(doc: Any) -> Response:
    return Response(conv.dumps(doc), media_type="application/json")
