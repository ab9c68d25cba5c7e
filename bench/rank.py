"""Ranking: mlsmith's rankers against LightGBM's own LGBMRanker on the same split.

mlsmith trains ``model.type: lightgbm`` (LambdaRank) and ``model.type: mlp`` (a network with
the listwise loss, through the Trainer) on a ranking config (``data.group_column``) with their
defaults; LGBMRanker is fitted the way a user would write it by hand, on the same raw training
rows (categoricals as pandas categories, rows sorted by query, early stopping on the same
validation queries at NDCG@10). Both are scored by the same code on the same test queries
(``mlsmith.ranking_metrics``); each data set is generated with several seeds and their test
queries pooled, and the table gives mlsmith's mean NDCG@10 as a ratio of LGBMRanker's, with
the paired difference and its 95% bootstrap interval over queries. Goals: lightgbm within 1%,
mlp within 3%.

The data are learning-to-rank sets generated here (nothing to download), each at two sizes,
with noise features, a categorical feature and missing values: ``graded`` (queries of 5-40
items, relevance 0-4 following a nonlinear function of a few features) and ``clicks``
(queries of 10-50 items, the 1-3 best by a noisy utility clicked: sparse binary labels).

    pip install -e ".[bench]" && python bench/rank.py           # --queries 300 3000
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import mlsmith
from mlsmith.config import Config
from mlsmith.data.tabular import prepare
from mlsmith.evaluation import ratio_interval
from mlsmith.ranking_metrics import per_query_metrics

# mlsmith's rankers and how close each must come to LGBMRanker (NDCG@10 ratio).
FAMILIES = ("lightgbm", "mlp")
GOALS = {"lightgbm": 0.99, "mlp": 0.97}
SHAPES = ("graded", "clicks")


def make_data(queries: int, seed: int, shape: str = "graded") -> pd.DataFrame:
    """``queries`` queries of generated items, rows shuffled.

    ``graded``: 5-40 items, relevance 0-4 from a nonlinear score with noise (interactions, a
    categorical, a symmetric term). ``clicks``: 10-50 items, of which the 1-3 with the highest
    noisy utility are clicked (relevance 1), the rest 0: sparse binary labels, as in web logs.
    """
    rng = np.random.default_rng(seed)
    frames = []
    for q in range(queries):
        if shape == "graded":
            n = int(rng.integers(5, 41))
            x = rng.normal(size=(n, 8))
            kind = rng.choice(["a", "b", "c", "d"], size=n)
            score = (
                np.tanh(x[:, 0]) * 2.0
                + x[:, 1] * x[:, 2]
                + np.where(kind == "a", 0.8, 0.0)
                + 0.5 * np.abs(x[:, 3])
                + rng.normal(scale=0.6, size=n)
            )
            relevance = np.digitize(score, [0.5, 1.5, 2.3, 3.0])
        elif shape == "clicks":
            n = int(rng.integers(10, 51))
            x = rng.normal(size=(n, 8))
            kind = rng.choice(["a", "b", "c", "d", "e"], size=n)
            utility = (
                x[:, 0]
                + 0.7 * np.sin(2.0 * x[:, 1])
                + np.where(kind == "a", 0.7, 0.0)
                - 0.5 * x[:, 2] ** 2
                + rng.gumbel(scale=0.5, size=n)
            )
            relevance = np.zeros(n, dtype=np.int64)
            relevance[np.argsort(-utility)[: int(rng.integers(1, 4))]] = 1
        else:
            raise ValueError(f"unknown shape {shape!r}")
        frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(8)])
        frame["kind"] = kind
        frame["qid"] = q
        frame["relevance"] = relevance
        frames.append(frame)
    data = pd.concat(frames, ignore_index=True)
    data.loc[rng.random(len(data)) < 0.03, "f4"] = np.nan
    return data.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def mlsmith_ranker(path: Path, out: Path, seed: int, family: str) -> tuple[mlsmith.Run, float]:
    started = time.perf_counter()
    config = {
        "experiment": "rank",
        "seed": seed,
        "output_dir": str(out),
        "data": {"path": str(path), "target": "relevance", "group_column": "qid"},
        "model": {"type": family},
        "track": {"enabled": False},
        "eval": {"report": False, "baseline": False, "bootstrap": 0},
        "export": {"package": False},
    }
    run = mlsmith.train(config, progress=False, epoch_lines=False)
    return run, time.perf_counter() - started


def direct_ranker(config: Config, seed: int) -> tuple[np.ndarray, pd.DataFrame, float, int]:
    """LGBMRanker fitted by hand on the same raw rows; its test scores and the test rows."""
    import lightgbm as lgb

    data = prepare(config)
    frames = data.frames
    features = [c for c in frames["train"].columns if c not in ("qid", "relevance")]

    def by_query(frame: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
        frame = frame.sort_values("qid", kind="stable")
        x = frame[features].copy()
        x["kind"] = pd.Categorical(x["kind"], categories=sorted(frames["train"]["kind"].unique()))
        return x, frame["relevance"].to_numpy(), frame.groupby("qid", sort=True).size().to_numpy()

    train_x, train_y, train_group = by_query(frames["train"])
    val_x, val_y, val_group = by_query(frames["val"])
    started = time.perf_counter()
    ranker = lgb.LGBMRanker(n_estimators=1000, random_state=seed, verbosity=-1)
    with warnings.catch_warnings():
        # LightGBM 4.7 renames eval_set (eval_X, eval_y); eval_set works on every 4.x.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message=".*eval_set.*deprecated.*")
        ranker.fit(
            train_x,
            train_y,
            group=train_group,
            eval_set=[(val_x, val_y)],
            eval_group=[val_group],
            eval_at=[10],
            callbacks=[lgb.early_stopping(50, verbose=False)],
        )
    seconds = time.perf_counter() - started
    test = frames["test"]
    x = test[features].copy()
    x["kind"] = pd.Categorical(x["kind"], categories=sorted(frames["train"]["kind"].unique()))
    best = int(ranker.best_iteration_)
    return ranker.predict(x, num_iteration=best), test, seconds, best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, nargs="+", default=[300, 3000])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=SHAPES)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args(argv)

    # (shape, queries, family) -> per-query NDCG@10 of mlsmith and of LGBMRanker, every seed's
    # test queries pooled; and the rounds / seconds of each run.
    pooled: dict[tuple[str, int, str], list[np.ndarray]] = {}
    notes: dict[tuple[str, int, str], list[str]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for shape, queries, seed in itertools.product(args.shapes, args.queries, args.seeds):
            path = Path(scratch) / f"{shape}{queries}-{seed}.csv"
            make_data(queries, seed, shape).to_csv(path, index=False)
            runs = {
                family: mlsmith_ranker(path, Path(scratch) / "runs", seed, family)
                for family in FAMILIES
            }
            direct_scores, test, direct_seconds, direct_best = direct_ranker(
                runs[FAMILIES[0]][0].config, seed
            )
            groups = test["qid"].to_numpy()
            truth = test["relevance"].to_numpy(dtype=np.float64)
            direct = per_query_metrics(truth, direct_scores, groups, (10,))["ndcg_10"]
            for family, (run, seconds) in runs.items():
                scores = run.predict(test)["score"].to_numpy()
                ours = per_query_metrics(truth, scores, groups, (10,))["ndcg_10"]
                key = (shape, queries, family)
                pooled.setdefault(key, [np.zeros(0), np.zeros(0)])
                pooled[key] = [
                    np.concatenate([pooled[key][0], ours]),
                    np.concatenate([pooled[key][1], direct]),
                ]
                notes.setdefault(key, []).append(
                    f"{_round(run)} vs {direct_best}, {seconds:.1f} vs {direct_seconds:.1f} s"
                )

    print(
        f"\nNDCG@10 on the test queries of seeds {args.seeds} (their queries pooled); the "
        "difference's 95% interval is a paired bootstrap over those queries"
    )
    header = ("data", "model", "mlsmith", "LGBMRanker", "difference", "ratio", "goal")
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    met = True
    for (shape, queries, family), (ours, direct) in pooled.items():
        defined = ~np.isnan(ours)
        a, b = float(np.mean(ours[defined])), float(np.mean(direct[defined]))
        low, high = ratio_interval(
            np.nan_to_num(ours - direct),
            defined.astype(np.float64),
            n_resamples=args.resamples,
            confidence=0.95,
            seed=0,
        )
        ratio, goal = a / b, GOALS[family]
        met = met and ratio >= goal
        cells = [
            f"{shape}, {queries:,} queries ({int(defined.sum()):,} scored test queries)",
            f"mlsmith {family}",
            f"{a:.4f}",
            f"{b:.4f}",
            f"{a - b:+.4f} [{low:+.4f}, {high:+.4f}]",
            f"{ratio:.4f}",
            f">= {goal}",
        ]
        print(" | ".join(cells))
    print("\nper seed (best round or epoch vs LGBMRanker's best round; whole mlsmith run vs fit):")
    for (shape, queries, family), lines in notes.items():
        print(f"  {shape} {queries} {family}: " + "; ".join(lines))
    print(
        f"\ngoals (lightgbm within 1%, mlp within 3% of LGBMRanker): {'met' if met else 'NOT met'}"
    )
    return 0


def _round(run: mlsmith.Run) -> str:
    best = run.info.get("best_epoch")
    unit = "round" if run.config.model.type in ("lightgbm", "xgboost") else "epoch"
    return f"{unit} {best}"


if __name__ == "__main__":
    sys.exit(main())
