"""Request-body guards that run before FastAPI parses a JSON body.

``StrictJSONRoute`` is the route class of the ingress app. For every request with a body it:

- reads the body within ``BODY_TIMEOUT_S`` (a client that declares 100 bytes and sends 10
  gets a 408 instead of holding a connection and a replica slot for minutes);
- refuses bodies over ``MAX_BODY_BYTES`` (413) before parsing them;
- refuses JSON that repeats a key in any object (``{"k": 1, "k": 100}`` would otherwise
  silently mean the last one) or nests deeper than ``MAX_JSON_DEPTH`` (which would make the
  parser recurse until Python's limit), as a 422 naming the key's path.

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

BODY_TIMEOUT_S = 10.0  # a search body is < 1 KB: seconds are generous even on a slow link
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


async def check_body(request: Request) -> None:
    """Raise the 4xx a bad body deserves (see the module docstring); cache the body."""
    if request.method not in ("POST", "PUT", "PATCH"):
        return
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise HTTPException(413, f"body of {declared} bytes exceeds {MAX_BODY_BYTES}")
    try:
        body = await asyncio.wait_for(request.body(), BODY_TIMEOUT_S)
    except TimeoutError:
        raise HTTPException(408, f"request body not received within {BODY_TIMEOUT_S:g} s") from None
    if len(body) > MAX_BODY_BYTES:
        raise HTTPException(413, f"body of {len(body)} bytes exceeds {MAX_BODY_BYTES}")
    if "json" not in request.headers.get("content-type", "") or not body:
        return
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _invalid([], f"body is not UTF-8 at byte {exc.start}", "json_invalid") from None
    if _depth(text) > MAX_JSON_DEPTH:
        raise _invalid([], f"JSON nested deeper than {MAX_JSON_DEPTH} levels", "json_too_deep")
    try:
        path = _duplicate(text)
    except json.JSONDecodeError:
        return  # malformed JSON: FastAPI's own parser reports where (json_invalid)
    except ValueError as exc:  # well-formed but unreadable, e.g. an int of 5,000 digits
        raise _invalid([], f"unreadable JSON: {str(exc)[:120]}", "json_invalid") from None
    if path is not None:
        raise _invalid(path, f"duplicate key {path[-1]!r}", "json_duplicate_key")


class StrictJSONRoute(APIRoute):
    """An APIRoute that runs ``check_body`` before FastAPI reads the body."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            await check_body(request)
            return await handler(request)

        return guarded
