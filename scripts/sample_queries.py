"""Print the answers to a few sample searches against a running Serve app.

python scripts/sample_queries.py --workspace var/demo --url http://127.0.0.1:8000
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pandas as pd
import typer


def main(
    workspace: Path = Path("var/demo"), url: str = "http://127.0.0.1:8000", k: int = 5
) -> None:
    jobs = pd.read_parquet(workspace / "data" / "jobs.parquet", columns=["title", "city"])
    members = pd.read_parquet(
        workspace / "data" / "members.parquet", columns=["member_id", "headline", "city"]
    )
    # Queries drawn from the catalog's own occupations, so every demo size has answers.
    titles = jobs["title"].str.replace(r"^(Junior|Senior|Lead|Head) ", "", regex=True).str.lower()
    queries = titles.value_counts().index[:3].tolist()
    typed = ["accountant", "registered nurse", "electrican"]  # as people type (a misspelling)
    # The signed-in member: the first whose city has a few jobs of the first sample query
    # (results in the member's city are starred), else the first member.
    local = jobs[titles == queries[0]]["city"].value_counts()
    here = members[members["city"].map(local).fillna(0) >= 3]
    m = (here if len(here) else members).iloc[0]
    mid = int(m.member_id)
    calls = [("POST", "/v1/search", {"query": q, "k": k}) for q in queries + typed]
    # Signed in: what the member typed leads (here not their own occupation), their profile
    # (city, seniority, skills) orders the jobs that match; a misspelling is corrected.
    calls += [
        ("POST", "/v1/search", {"query": q, "member_id": mid, "k": k})
        for q in (queries[0], "registered nurse", "electrican")
    ]
    calls.append(("GET", f"/v1/members/{mid}/recommendations?k={k}", None))
    with httpx.Client(base_url=url, timeout=30) as client:
        for method, path, body in calls:
            r = client.request(method, path, json=body)
            r.raise_for_status()
            doc = r.json()
            personal = "members/" in path or (body or {}).get("member_id")
            who = f" (member {m.member_id}: {m.headline}, {m.city})" if personal else ""
            took = f"{doc['retrieval']}, model {doc['model_version']}, {doc['took_ms']:.1f} ms"
            print(f"\n{method} {path} {body or ''}{who}  -> {took}")
            if doc.get("corrected_query"):
                print(f"  showing results for: {doc['corrected_query']}")
            if doc.get("notice"):
                print(f"  notice: {doc['notice']}")
            for h in doc["results"]:
                company, city = h["company"] or "", h["city"] or ""
                star = "*" if personal and city == m.city else " "
                print(f" {star}{h['score']:.3f}  {h['title']:<45.45} {company:<22.22} {city}")
        # The ranking stage explained: one employer at most, why the first result is first.
        body = {"query": queries[0], "member_id": mid, "k": k, "max_per_company": 1,
                "explain": True}  # fmt: skip
        doc = client.post("/v1/search", json=body).json()
        plan = doc["plan"]
        print(f"\nPOST /v1/search {body}  -> ranker {plan.get('ranker')}")
        print(f"  funnel {plan.get('funnel')}\n  ms per stage {plan.get('stages_ms')}")
        if doc["results"] and doc["results"][0]["explain"]["ranker"]:
            top = doc["results"][0]
            parts = top["explain"]["ranker"]["contributions"]
            best = sorted((kv for kv in parts.items() if kv[0] != "base" and kv[1] is not None),
                          key=lambda kv: -abs(kv[1]))[:5]  # fmt: skip
            print(f"  #1 {top['title']}: " + ", ".join(f"{f} {v:+.2f}" for f, v in best))


if __name__ == "__main__":
    typer.run(main)
