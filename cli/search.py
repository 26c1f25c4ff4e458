"""``ebr search``: one search against a running Serve app, as a table in the terminal.

ebr search "data engineer" --member 17 --k 5
ebr search "registerd nurse" --filter '{"term": {"remote": [true]}}' --explain
ebr search --member 17 --feed               # the member's recommendations (JYMBII)
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from cli.output import ERR, MODE, OUT, emit

DEFAULT_URL = "http://127.0.0.1:8000"


def search(
    query: Annotated[str | None, typer.Argument(help="what a person would type")] = None,
    member: Annotated[int | None, typer.Option(min=1, help="the signed-in member")] = None,
    k: Annotated[int, typer.Option(min=1, max=100, help="results")] = 10,
    filter_json: Annotated[
        str | None, typer.Option("--filter", help="the API's filter, as JSON")
    ] = None,
    retrieval: Annotated[str | None, typer.Option(help="ebr, term or hybrid")] = None,
    release: Annotated[str | None, typer.Option(help="a serving release (default: routed)")] = None,
    feed: Annotated[bool, typer.Option(help="the member's recommendations, no query")] = False,
    explain: Annotated[bool, typer.Option(help="the funnel and per-stage timings too")] = False,
    url: Annotated[str, typer.Option(help="the Serve app")] = DEFAULT_URL,
) -> None:
    """Search a running Serve app and show the results as a table (--json: the response)."""
    import httpx

    body: dict[str, Any] = {"k": k, "explain": explain}
    if feed:
        if member is None or query is not None:
            raise typer.BadParameter("--feed takes --member and no QUERY", param_hint="--feed")
        method, path = "GET", f"/v1/members/{member}/recommendations"
        params: dict[str, Any] | None = {"k": k, "explain": explain}
        body = {}
    else:
        if query is None and member is None:
            raise typer.BadParameter("give a QUERY, a --member, or both", param_hint="QUERY")
        method, path, params = "POST", "/v1/search", None
        body.update({"query": query, "member_id": member, "retrieval": retrieval,
                     "release": release})  # fmt: skip
        if filter_json is not None:
            try:
                body["filter"] = json.loads(filter_json)
            except json.JSONDecodeError as err:
                raise typer.BadParameter(f"not JSON: {err}", param_hint="--filter") from None
        body = {key: v for key, v in body.items() if v is not None}
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            r = client.request(method, path, json=body or None, params=params)
    except httpx.HTTPError as err:
        raise OSError(f"{url} did not answer ({err}): is the app running (ebr serve)?") from None
    doc = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
    if r.status_code >= 400:
        raise ValueError(f"HTTP {r.status_code}: {doc.get('message') or doc.get('detail')}")
    if MODE["json"]:
        emit(doc)
        return
    show_response(doc)


def show_response(doc: dict[str, Any]) -> None:
    """A response as people read it: what answered, then the results."""
    arm = f", arm {doc['arm']} of {doc['experiment']}" if doc.get("arm") else ""
    OUT.print(f"{doc['release']}{arm} · {doc.get('retrieval')} · {doc['took_ms']:.1f} ms")
    if doc.get("corrected_query"):
        OUT.print(f"showing results for: [bold]{doc['corrected_query']}[/bold]")
    if doc.get("notice"):
        ERR.print(f"notice: {doc['notice']}", markup=False)
    rows = [{"#": i + 1, "title": h["title"], "company": h.get("company"), "city": h.get("city"),
             "seniority": h.get("seniority"), "remote": h.get("remote"),
             "score": round(h["score"], 4)} for i, h in enumerate(doc["results"])]  # fmt: skip
    emit(rows)
    plan = doc.get("plan") or {}
    if plan.get("funnel"):
        OUT.print(f"funnel {plan['funnel']}  ms per stage {plan.get('stages_ms')}")
