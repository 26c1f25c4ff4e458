"""The ingress's FastAPI app: validation-error bodies that name the field, documented error
answers, and the admin bearer-token check (``serving.deployments.Ingress`` holds the routes).

Admin routes (``/admin/...``) check the token before anything else runs on them
(``IngressRoute``): an unauthenticated admin call gets its 401 without its body being read,
measured or validated.
"""

# No `from __future__ import annotations`: FastAPI resolves handler signatures at runtime.
import hmac
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, ClassVar

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from serving.guards import StrictJSONRoute
from serving.metrics import AdmissionMiddleware
from serving.schemas import ErrorResponse

ADMIN_PREFIX = "/admin/"


class IngressRoute(StrictJSONRoute):
    """The ingress's route class: admin routes check the bearer token first (``authorize``
    with ``IngressRoute.admin_token``), then every route reads its body through the guards."""

    # The ingress's token, set when it starts (one ingress per replica process); None: admin
    # routes are disabled (403).
    admin_token: ClassVar[str | None] = None

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if not self.path.startswith(ADMIN_PREFIX):  # the matched route, not the raw URL
            return handler

        async def gated(request: Request) -> Response:
            authorize(IngressRoute.admin_token, request.headers.get("authorization"))
            return await handler(request)

        return gated


app = FastAPI(
    title="EBR job search",
    version="1",
    description="Embedding-based retrieval: search (query and/or member) and JYMBII, "
    "served by releases side by side (live, experiment arms).",
)
# Admin token first (admin routes), then the body guards: duplicate keys, depth, size, timeout.
app.router.route_class = IngressRoute
# Searches and feeds past the replica's in-flight limit get a 503 before anything else runs.
app.add_middleware(AdmissionMiddleware)


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    # FastAPI's default body echoes the input and raw ctx objects; keep loc/msg/type and add
    # one readable line that names each bad field ("k: Input should be less than or equal...").
    detail, parts = [], []
    for e in exc.errors():
        loc, msg = list(e["loc"]), e["msg"]
        if e["type"] == "json_invalid":
            # loc[1] is a character offset, not a field: say where and why parsing stopped.
            msg = f"{msg} at character {loc[-1]}: {e.get('ctx', {}).get('error', 'invalid JSON')}"
            loc = loc[:1]
        detail.append({"loc": loc, "msg": msg, "type": e["type"]})
        parts.append(f"{'.'.join(str(p) for p in loc[1:]) or loc[0]}: {msg}")
    return JSONResponse(status_code=422, content={"detail": detail, "message": "; ".join(parts)})


NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorResponse}}
BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    408: {"model": ErrorResponse, "description": "body not received in time"},
    413: {"model": ErrorResponse, "description": "body too large"},
    503: {"model": ErrorResponse, "description": "overloaded (Retry-After) or release down"},
}


def admin_token(env_name: str, token_file: str | None) -> str | None:
    """The admin bearer token: the environment variable, else the file's first line."""
    token = os.environ.get(env_name, "").strip()
    if not token and token_file:
        token = Path(token_file).expanduser().read_text().strip()
    return token or None


def authorize(token: str | None, authorization: str | None) -> None:
    """Admit an admin call whose ``Authorization`` header carries ``token`` (compared in
    constant time): 403 when no token is configured, 401 when the header is missing or wrong."""
    if token is None:
        raise HTTPException(403, "admin routes are disabled: no admin token is configured")
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
        raise HTTPException(
            401,
            "admin routes need Authorization: Bearer <token>",
            headers={"WWW-Authenticate": "Bearer"},
        )
