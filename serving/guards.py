"""Request-body guards that run before FastAPI parses a JSON body.

``StrictJSONRoute`` is the route class of the ingress app. For every request with a body it:

- reads the body within ``BODY_TIMEOUT_S`` (a client that declares 100 bytes and sends 10
  gets a 408 instead of holding a connection and a replica slot for minutes);
- refuses bodies over ``MAX_BODY_BYTES`` (413): a declared length at once, a chunked body as
  soon as the bytes read pass the limit (it is read as it arrives, never buffered whole
  first), then hands the body it read to FastAPI;
- refuses JSON that repeats a key in any object (``{"k": 1, "k": 100}`` would otherwise
  silently mean the last one) or nests deeper than ``MAX_JSON_DEPTH`` (which would make the
  parser recurse until Python's limit), as a 422 naming the key's path.

Admin routes authenticate before any of this (``serving.api.IngressRoute``): an unauthenticated
admin call is answered 401 without its body being read or validated.

``ClientLimitsMiddleware`` runs in front of Serve itself (in its proxies and ingress replicas):
a client may shorten its request's timeout, never disable or extend it.

Python's ``json`` keeps the last of repeated keys; ``object_pairs_hook`` sees them all.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# End-to-end limit on one HTTP request at the front (a search takes milliseconds; a stuck client
# or replica must not hold a connection for minutes): Serve's request timeout, and HAProxy's
# client and server timeouts.
REQUEST_TIMEOUT_S = 30.0
BODY_TIMEOUT_S = 10.0  # a search body is < 1 KB: seconds are generous even on a slow link
HEADER_TIMEOUT_S = 10.0  # the same for request headers (HAProxy's `timeout http-request`)
MAX_BODY_BYTES = 1 << 20  # a filter of MAX_NODES nodes with long allow-lists fits easily
MAX_JSON_DEPTH = 64  # filters nest at most 16 deep; deeper JSON is never a valid request
MAX_KEY_ECHO = 60  # a key echoed in a message is cut to this many characters


class _Marked(dict[str, Any]):
    """The first parsed object that repeats a key (found again by identity)."""


def _duplicate(text: str) -> list[str] | None:
    """Path to the first repeated key in JSON ``text`` (["filter", "and", "0", "term", "city"]), or
    None. Raises ValueError for malformed JSON."""
    hits: list[tuple[_Marked, str]] = []

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        if hits:
            return dict(pairs)
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                hits.append((_Marked(pairs), key))
                return hits[0][0]
            seen.add(key)
        return dict(pairs)

    tree = json.loads(text, object_pairs_hook=hook)
    if not hits:
        return None
    marked, key = hits[0]
    stack: list[tuple[Any, list[str]]] = [(tree, [])]
    while stack:  # iterative: depth is bounded already, but no recursion is simpler to trust
        node, path = stack.pop()
        if node is marked:
            return [*path, _cut(key)]
        if isinstance(node, dict):
            stack.extend((v, [*path, _cut(k)]) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, [*path, str(i)]) for i, v in enumerate(node))
    return [_cut(key)]


def _depth(text: str) -> int:
    """Deepest bracket nesting of JSON ``text`` (brackets inside strings ignored)."""
    depth = deepest = 0
    in_str = escaped = False
    for ch in text:
        if in_str:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _cut(text: str) -> str:
    return text if len(text) <= MAX_KEY_ECHO else text[:MAX_KEY_ECHO] + "..."


def _invalid(loc: list[str], msg: str, kind: str) -> RequestValidationError:
    return RequestValidationError([{"loc": ("body", *loc), "msg": msg, "type": kind}])


async def check_body(request: Request) -> bytes | None:
    """Raise the 4xx a bad body deserves (see the module docstring); the body read, or None
    for a method without one."""
    if request.method not in ("POST", "PUT", "PATCH"):
        return None
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise HTTPException(413, f"body of {declared} bytes exceeds {MAX_BODY_BYTES}")
    try:
        body = await asyncio.wait_for(_read_bounded(request), BODY_TIMEOUT_S)
    except TimeoutError:
        raise HTTPException(408, f"request body not received within {BODY_TIMEOUT_S:g} s") from None
    if "json" not in request.headers.get("content-type", "") or not body:
        return body
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _invalid([], f"body is not UTF-8 at byte {exc.start}", "json_invalid") from None
    if _depth(text) > MAX_JSON_DEPTH:
        raise _invalid([], f"JSON nested deeper than {MAX_JSON_DEPTH} levels", "json_too_deep")
    try:
        path = _duplicate(text)
    except json.JSONDecodeError:
        return body  # malformed JSON: FastAPI's own parser reports where (json_invalid)
    except ValueError as exc:  # well-formed but unreadable, e.g. an int of 5,000 digits
        raise _invalid([], f"unreadable JSON: {str(exc)[:120]}", "json_invalid") from None
    if path is not None:
        raise _invalid(path, f"duplicate key {path[-1]!r}", "json_duplicate_key")
    return body


async def _read_bounded(request: Request) -> bytes:
    """The body, read chunk by chunk as it arrives: a 413 as soon as it passes the limit (a
    chunked body declares no length), holding at most MAX_BODY_BYTES + one chunk."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise HTTPException(413, f"body exceeds {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _with_body(request: Request, body: bytes) -> Request:
    """``request`` whose body ``body`` was read already: FastAPI reads it again to parse it."""
    replayed = False

    async def receive() -> Message:
        nonlocal replayed
        if replayed:  # later messages (a disconnect) come from the client as before
            return await request.receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(request.scope, receive)


class StrictJSONRoute(APIRoute):
    """An APIRoute that runs ``check_body`` before FastAPI reads the body."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            body = await check_body(request)
            return await handler(request if body is None else _with_body(request, body))

        return guarded


# Serve lets each request choose its own limits: `x-request-timeout-seconds` (<= 0 disables the
# end-to-end timeout, a large value extends it) and `x-request-disconnect-disabled: ?1` (keep
# working after the client has gone).
TIMEOUT_HEADER = b"x-request-timeout-seconds"
DISCONNECT_HEADER = b"x-request-disconnect-disabled"


def client_may_send(name: bytes, value: bytes) -> bool:
    """Whether a request header reaches Serve: a timeout in (0, REQUEST_TIMEOUT_S] (a client may
    shorten its request's limit, never lift it) and no disconnect override."""
    if name == DISCONNECT_HEADER:
        return False
    if name != TIMEOUT_HEADER:
        return True
    try:
        seconds = float(value)
    except ValueError:
        return False
    return 0 < seconds <= REQUEST_TIMEOUT_S  # NaN fails both comparisons


class ClientLimitsMiddleware:
    """ASGI middleware in front of Serve's request handling (its proxy and the ingress replicas'
    direct-ingress servers): drops the request headers ``client_may_send`` refuses, so Serve
    applies its own request timeout to them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = [(k, v) for k, v in scope["headers"] if client_may_send(k, v)]
            scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)


def front_middlewares() -> list[Middleware]:
    """Serve's HTTP callback (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``, set by
    ``serving.front.server_env``): the middlewares Serve puts in front of its request handling."""
    return [Middleware(ClientLimitsMiddleware)]
