"""Asynchronous jobs on the HTTP port (jobs.py):

- ``POST /v2/models/<m>[/versions/<v>]/jobs[?concurrency=N]``: the body is JSON Lines of infer
  requests (``inferd batch``'s input); 202 with the job's status and ``Location: /v2/jobs/<id>``;
- ``GET /v2/jobs``: every kept job's status; ``GET /v2/jobs/<id>``: one;
- ``GET /v2/jobs/<id>/results``: the answers, JSON Lines in input order (``inferd batch``'s
  output), once the job has finished; 503 before;
- ``POST /v2/jobs/<id>/cancel``: stop it (its answers so far stay); ``DELETE /v2/jobs/<id>``:
  cancel it if needed and forget it, files included.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import BinaryIO

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from ...protocol.errors import InvalidArgument
from . import http_convert as conv
from .batch import DEFAULT_CONCURRENCY
from .http_body import request_body
from .jobs import JobStore

NDJSON = "application/x-ndjson"


class JobsApi:
    def __init__(self, store: JobStore, max_body_bytes: int) -> None:
        self.store = store
        self.max_body_bytes = max_body_bytes

    async def submit(self, request: Request) -> Response:
        p = request.path_params
        unknown = set(request.query_params) - {"concurrency"}
        if unknown:
            raise InvalidArgument(f"unknown query parameter '{sorted(unknown)[0]}' (jobs take 'concurrency')")
        concurrency = _int(request.query_params.get("concurrency", str(DEFAULT_CONCURRENCY)), "concurrency")
        body = await request_body(request, self.max_body_bytes)
        job = await self.store.submit(p["model"], p.get("version", ""), body, concurrency)
        return Response(
            conv.dumps(job.describe()), 202, {"Location": f"/v2/jobs/{job.id}"}, media_type="application/json"
        )

    async def list(self, request: Request) -> Response:
        return _json([job.describe() for job in self.store.jobs()])

    async def status(self, request: Request) -> Response:
        return _json(self.store.get(request.path_params["job"]).describe())

    async def results(self, request: Request) -> Response:
        # Opened here, under the lookup: a DELETE racing the download removes the file's name,
        # not what this response reads.
        answers = self.store.results(request.path_params["job"]).open("rb")
        return StreamingResponse(_read_all(answers), media_type=NDJSON)

    async def cancel(self, request: Request) -> Response:
        return _json(self.store.cancel(request.path_params["job"]).describe())

    async def delete(self, request: Request) -> Response:
        return _json((await self.store.delete(request.path_params["job"])).describe())


async def _read_all(f: BinaryIO, chunk: int = 1 << 20) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    try:
        while data := await loop.run_in_executor(None, f.read, chunk):
            yield data
    finally:
        f.close()


def _int(text: str, name: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise InvalidArgument(f"query parameter '{name}' must be a positive integer")
    return int(text)


def _json(doc: object) -> Response:
    return Response(conv.dumps(doc), media_type="application/json")


def job_routes(store: JobStore, max_body_bytes: int) -> list[BaseRoute]:
    api = JobsApi(store, max_body_bytes)
    return [
        Route("/v2/models/{model}/jobs", api.submit, methods=["POST"]),
        Route("/v2/models/{model}/versions/{version}/jobs", api.submit, methods=["POST"]),
        Route("/v2/jobs", api.list, methods=["GET"]),
        Route("/v2/jobs/{job}", api.status, methods=["GET"]),
        Route("/v2/jobs/{job}", api.delete, methods=["DELETE"]),
        Route("/v2/jobs/{job}/results", api.results, methods=["GET"]),
        Route("/v2/jobs/{job}/cancel", api.cancel, methods=["POST"]),
    ]
