"""Real data: the two-tower code path on MovieLens-100k vs implicit ALS and popularity.

    python -m benchmarks.movielens [--epochs 10]

MovieLens-100k is read in place from the PyPI package recbole==1.2.1 (ebr.data.movielens);
one global time split (ratings >= 4 are positives; warm test users and items). In the same
run: implicit's ALS (64 factors, its defaults), popularity, and the two-tower model
(ebr.model.movielens: users = demographics + liked-movie history, movies = title, genres,
year; in-batch softmax with logQ correction), each never recommending a user's train movies.
Target (issue 4): two-tower Recall@20 >= ALS. Writes benchmarks/results/movielens.{json,png}.
"""

from __future__ import annotations

import time
from typing import Annotated

import typer

from benchmarks.common import peak_rss_mib, pyplot, save_figure, write_result


def main(
    epochs: Annotated[int, typer.Option(help="two-tower training epochs")] = 10,
    batch_size: Annotated[int, typer.Option(help="in-batch softmax width")] = 256,
) -> None:
    from ebr.config import TrainConfig
    from ebr.data.movielens import load_movielens, time_split
    from ebr.eval.als import als_baseline, popularity_baseline
    from ebr.model.movielens import evaluate_movielens, train_movielens

    interactions, users, items = load_movielens()
    train, test = time_split(interactions)
    n_users, n_items = int(users["user_id"].max()) + 1, int(items["item_id"].max()) + 1
    t0 = time.perf_counter()
    als = als_baseline(train, test, n_users, n_items)
    als_s = time.perf_counter() - t0
    pop = popularity_baseline(train, test, n_users, n_items)
    tcfg = TrainConfig(epochs=epochs, batch_size=batch_size)
    t0 = time.perf_counter()
    model, fit = train_movielens(train, users, items, tcfg)
    two_tower = evaluate_movielens(model, train, test, users, items)
    tt_s = time.perf_counter() - t0
    results = {
        "split": {
            "train_rows": len(train),
            "test_rows": len(test),
            "test_users": len(set(test["user_id"])),
        },
        "two_tower": {**two_tower, "seconds": round(tt_s, 1), "loss_curve": fit["loss_curve"]},
        "als": {**als, "seconds": round(als_s, 1)},
        "popularity": pop,
        "two_tower_over_als_recall@20": two_tower["recall@20"] / als["recall@20"],
        "target_two_tower_ge_als_recall@20": two_tower["recall@20"] >= als["recall@20"],
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }
    write_result(
        "movielens", threads=2, params={"epochs": epochs, "batch_size": batch_size}, results=results
    )

    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    metrics = ("recall@20", "recall@100", "ndcg@20")
    for i, (name, m) in enumerate((("two-tower", two_tower), ("ALS", als), ("popularity", pop))):
        ax1.bar([j + 0.27 * i for j in range(3)], [m[k] for k in metrics], width=0.27, label=name)
    ax1.set_xticks([0.27 + j for j in range(3)], metrics)
    ax1.set(title=f"MovieLens-100k time split ({results['split']['test_users']} test users)")
    ax1.legend()
    ax2.plot(fit["loss_curve"], marker="o")
    ax2.set(xlabel="epoch", ylabel="in-batch softmax loss", title="two-tower training")
    ax2.grid(alpha=0.3)
    save_figure(fig, "movielens")
    print(results)


if __name__ == "__main__":
    typer.run(main)
