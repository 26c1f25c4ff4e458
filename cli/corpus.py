"""``ebr corpus list | build | eval | upsert | delete | search``: knowledge-base corpora
(``ebr.corpus``) through the jobs' machinery: sentence-encoder embeddings, an index slot with
its live log, a Feast view, a release.

    ebr corpus build --workspace var/demo --corpus esco
    ebr corpus eval --workspace var/demo --corpus esco          # RAG: recall@1/10, MRR
    ebr corpus upsert --workspace var/demo --corpus esco --file new_articles.jsonl
    ebr corpus search "lab tech" --corpus esco                  # the running Serve app
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.output import emit, operator_errors, progress
from cli.search import DEFAULT_URL
from ebr.config import Workspace

corpus_app = typer.Typer(no_args_is_help=True, help="Knowledge-base corpora (RAG retrieval).")
WorkspaceOpt = Annotated[Path, typer.Option(exists=True, file_okay=False, help="workspace root")]


def _spec(name: str):  # type: ignore[no-untyped-def]
    from ebr.corpus import corpus_spec

    try:
        return corpus_spec(name)
    except KeyError as err:
        raise typer.BadParameter(str(err).strip("'\""), param_hint="--corpus") from None


CorpusOpt = Annotated[str, typer.Option(help="a configured corpus (ebr.corpus.CORPORA)")]


@corpus_app.command("list")
@operator_errors
def list_cmd(workspace: WorkspaceOpt) -> None:
    """The configured corpora and their live releases."""
    from ebr.corpus import CORPORA
    from ebr.corpus.build import read_corpus_state

    ws = Workspace(workspace)
    emit([{"corpus": n, "description": s.description, "live": read_corpus_state(ws, n)["live"]}
          for n, s in sorted(CORPORA.items())])  # fmt: skip


@corpus_app.command()
@operator_errors
def build(
    workspace: WorkspaceOpt,
    corpus: CorpusOpt = "esco",
    version: Annotated[str, typer.Option(help="the corpus's embedding version")] = "v1",
    publish: Annotated[bool, typer.Option(help="its Feast view (apply + materialize)")] = True,
) -> None:
    """Embed the corpus's articles, write its slot and release it live; then its Feast view."""
    from ebr.corpus.build import build_corpus

    spec = _spec(corpus)
    ws = Workspace(workspace)
    with progress():
        record = build_corpus(ws, spec, version)
    if publish:
        from feature_repo.store import publish_corpus

        published = publish_corpus(ws.root, spec.name, version)
        record["feast_view"] = published["view"]
    emit(record)


@corpus_app.command("eval")
@operator_errors
def eval_cmd(
    workspace: WorkspaceOpt,
    corpus: CorpusOpt = "esco",
    limit: Annotated[int | None, typer.Option(min=10, help="a sample of the queries")] = None,
) -> None:
    """The live release as a RAG retriever: recall@1, recall@10 and MRR@10 of ebr, term (BM25)
    and hybrid retrieval on the corpus's evaluation queries."""
    from ebr.corpus.evaluate import evaluate_corpus

    with progress():
        result = evaluate_corpus(Workspace(workspace), _spec(corpus), limit)
    rows = [{"retrieval": how, **s} for how, s in result["retrievals"].items()]
    emit(rows, title=f"{result['corpus']}: {result['queries']} queries over "
         f"{result['articles']} articles ({result['release']})")  # fmt: skip


@corpus_app.command()
@operator_errors
def upsert(
    workspace: WorkspaceOpt,
    file: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="JSON lines")],
    corpus: CorpusOpt = "esco",
) -> None:
    """Add or replace articles ({"article_id", "title", "text"} per line) in the live slot's
    log: served within a second, kept until the next build."""
    import pandas as pd

    from ebr.corpus.build import upsert_articles

    try:
        docs = pd.read_json(file, lines=True)
    except ValueError as err:
        raise typer.BadParameter(f"not JSON lines: {err}", param_hint="--file") from None
    emit(upsert_articles(Workspace(workspace), _spec(corpus), docs))


@corpus_app.command()
@operator_errors
def delete(
    workspace: WorkspaceOpt,
    article_ids: Annotated[list[int], typer.Argument(help="ids to remove")],
    corpus: CorpusOpt = "esco",
) -> None:
    """Remove articles from the live slot (a tombstone in its log)."""
    from ebr.corpus.build import delete_articles

    emit(delete_articles(Workspace(workspace), _spec(corpus).name, article_ids))


@corpus_app.command()
@operator_errors
def search(
    query: Annotated[str, typer.Argument(help="the question, as typed")],
    corpus: CorpusOpt = "esco",
    k: Annotated[int, typer.Option(min=1, max=100)] = 5,
    retrieval: Annotated[str, typer.Option(help="ebr, term or hybrid")] = "hybrid",
    url: Annotated[str, typer.Option(help="the Serve app")] = DEFAULT_URL,
) -> None:
    """Search a corpus on the running Serve app; the articles as a table."""
    import httpx

    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            r = client.post(f"/v1/corpora/{corpus}/search",
                            json={"query": query, "k": k, "retrieval": retrieval})  # fmt: skip
    except httpx.HTTPError as err:
        raise OSError(f"{url} did not answer ({err}): is the app running (ebr serve)?") from None
    doc = r.json()
    if r.status_code >= 400:
        raise ValueError(f"HTTP {r.status_code}: {doc.get('message') or doc.get('detail')}")
    rows = [{"#": i + 1, "title": a["title"], "score": round(a["score"], 4),
             "text": (a.get("text") or "")[:120]}
            for i, a in enumerate(doc["results"])]  # fmt: skip
    emit(rows, title=f"{doc['corpus']} · {doc['release']} · {doc['took_ms']:.1f} ms")
