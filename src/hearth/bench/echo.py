"""The floor of an HTTP service in Python: a bare Starlette app that parses JSON and echoes it.

Run by the benchmark under uvicorn (`python -m uvicorn hearth.bench.echo:app`); whatever a
contender costs above this is its own work, not the web stack's.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def echo(request: Request) -> JSONResponse:
    return JSONResponse(await request.json())


async def ready(request: Request) -> JSONResponse:
    return JSONResponse({"ready": True})


app = Starlette(routes=[Route("/echo", echo, methods=["POST"]), Route("/readyz", ready)])
