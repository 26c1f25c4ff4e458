"""Real data: the two-tower code path on MovieLens-100k vs implicit ALS and popularity.

    python -m benchmarks.movielens [--epochs 10]

MovieLens-100k is read in place from the PyPI package recbole==1.2.1 (ebr.data.movielens);
one global time split (ratings >= 4 are positives; warm test users and items). In the same
run: implicit's ALS (64 factors, its defaults), popularity, and the two-tower model
(ebr.model.movielens: users = demographics + liked-movie history, movies = title, genres,
year; in-batch softmax with logQ correction), each never recommending a user's train movies.
The two-tower figures are the mean over ``--seeds`` (90 test users make one run noisy).
Target (issue 4): two-tower Recall@20 >= ALS. Writes benchmarks/results/movielens.{json,png}.
"""

from __future__ import annotations

import time
from typing import Annotated

import numpy as np
import typer

from benchmarks.common import peak_rss_mib, pyplot, save_figure, write_result


def main(
    epochs: Annotated[int, typer.Option(help="two-tower training epochs")] = 10,
    batch_size: Annotated[int, typer.Option(help="in-batch softmax width")] = 256,
    seeds: Annotated[str, typer.Option(help="comma-separated training seeds (mean)")] = "13,14,15",
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
    # 90 test users: one training seed moves Recall@20 by a few points, so report the mean.
    per_seed, fits, times = [], [], []
    for seed in [int(x) for x in seeds.split(",") if x.strip()]:
        tcfg = TrainConfig(epochs=epochs, batch_size=batch_size, seed=seed)
        t0 = time.perf_counter()
        model, fit = train_movielens(train, users, items, tcfg)
        per_seed.append({"seed": seed, **evaluate_movielens(model, train, test, users, items)})
        fits.append(fit)
        times.append(time.perf_counter() - t0)
    metrics = ("recall@20", "recall@100", "ndcg@20")
    two_tower = {m: float(np.mean([r[m] for r in per_seed])) for m in metrics}
    results = {
        "split": {
            "train_rows": len(train),
            "test_rows": len(test),
            "test_users": len(set(test["user_id"])),
        },
        "two_tower": {
            **two_tower,
            "per_seed": per_seed,
            "seconds_per_seed": round(float(np.mean(times)), 1),
            "loss_curve": fits[0]["loss_curve"],
        },
        "als": {**als, "seconds": round(als_s, 1)},
        "popularity": pop,
        "two_tower_over_als_recall@20": two_tower["recall@20"] / als["recall@20"],
        "target_two_tower_ge_als_recall@20": two_tower["recall@20"] >= als["recall@20"],
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }
    params = {"epochs": epochs, "batch_size": batch_size, "seeds": seeds}
    write_result("movielens", threads=2, params=params, results=results)
    fit = fits[0]

    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
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
