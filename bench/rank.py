"""Ranking: mlsmith's rankers against LightGBM's own LGBMRanker on the same split.

mlsmith trains ``model.type: lightgbm`` (LambdaRank) and ``model.type: mlp`` (a network with
the listwise loss, through the Trainer) on a ranking config (``data.group_column``) with their
defaults; LGBMRanker is fitted the way a user would write it by hand, on the same raw training
rows (categoricals as pandas categories, rows sorted by query, early stopping on the same
validation queries at NDCG@10). Both are scored by the same code on the same test queries
(``mlsmith.ranking_metrics``: NDCG@10 with a 95% bootstrap interval over queries), and the
table gives mlsmith's NDCG@10 as a ratio of LGBMRanker's. Goals: lightgbm within 1%, mlp within
3%.

The data are learning-to-rank sets generated here (nothing to download): queries of 5-40
items whose graded relevance (0-4) follows a nonlinear function of a few features, with
feature interactions, a categorical feature, noise features and missing values, at two sizes.

    pip install -e ".[bench]" && python bench/rank.py           # --queries 300 3000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import mlsmith
from mlsmith.config import Config
from mlsmith.data.tabular import prepare
from mlsmith.ranking_metrics import evaluate_ranking

# mlsmith's rankers and how close each must come to LGBMRanker (NDCG@10 ratio).
FAMILIES = ("lightgbm", "mlp")
GOALS = {"lightgbm": 0.99, "mlp": 0.97}


def make_data(queries: int, seed: int) -> pd.DataFrame:
    """``queries`` queries of 5-40 items; relevance 0-4 from a nonlinear score with noise."""
    rng = np.random.default_rng(seed)
    frames = []
    for q in range(queries):
        n = int(rng.integers(5, 41))
        x = rng.normal(size=(n, 8))
        # A query-level shift: a good item in one query is average in another.
        shift = rng.normal(scale=0.5)
        kind = rng.choice(["a", "b", "c", "d"], size=n)
        score = (
            np.tanh(x[:, 0]) * 2.0
            + x[:, 1] * x[:, 2]
            + np.where(kind == "a", 0.8, 0.0)
            + 0.5 * np.abs(x[:, 3])
            + shift
            + rng.normal(scale=0.6, size=n)
        )
        relevance = np.digitize(score - shift, [0.5, 1.5, 2.3, 3.0])
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
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for queries in args.queries:
            path = Path(scratch) / f"rank{queries}.csv"
            make_data(queries, args.seed).to_csv(path, index=False)
            runs = {
                family: mlsmith_ranker(path, Path(scratch) / "runs", args.seed, family)
                for family in FAMILIES
            }
            first = runs[FAMILIES[0]][0]
            direct_scores, test, direct_seconds, direct_best = direct_ranker(
                first.config, args.seed
            )
            groups = test["qid"].to_numpy()
            truth = test["relevance"].to_numpy(dtype=np.float64)

            scoring = {"n_resamples": args.resamples, "seed": args.seed}
            direct = _ndcg(truth, direct_scores, groups, scoring)
            for family, (run, seconds) in runs.items():
                ours = _ndcg(truth, run.predict(test)["score"].to_numpy(), groups, scoring)
                rows.append(
                    (
                        f"{queries:,} ({len(test):,} test rows, {test['qid'].nunique()} queries)",
                        f"mlsmith {family}",
                        _entry(ours) + f" (best {_round(run)}; {seconds:.1f} s, whole run)",
                        _entry(direct) + f" (best round {direct_best}; {direct_seconds:.1f} s)",
                        ours["value"] / direct["value"],
                        GOALS[family],
                    )
                )

    print(f"\nNDCG@10 on the test queries (95% bootstrap interval over queries), seed {args.seed}")
    header = ("queries", "model", "mlsmith", "LGBMRanker", "ratio", "goal")
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    met = True
    for data, model, ours_cell, direct_cell, ratio, goal in rows:
        met = met and ratio >= goal
        print(" | ".join([data, model, ours_cell, direct_cell, f"{ratio:.4f}", f">= {goal}"]))
    print(
        f"\ngoals (lightgbm within 1%, mlp within 3% of LGBMRanker): {'met' if met else 'NOT met'}"
    )
    return 0


def _ndcg(
    truth: np.ndarray, scores: np.ndarray, groups: np.ndarray, scoring: dict[str, int]
) -> dict[str, Any]:
    return evaluate_ranking(truth, scores, groups, (10,), **scoring)["ndcg_10"]


def _round(run: mlsmith.Run) -> str:
    best = run.info.get("best_epoch")
    unit = "round" if run.config.model.type in ("lightgbm", "xgboost") else "epoch"
    return f"{unit} {best}"


def _entry(entry: dict[str, object]) -> str:
    low, high = entry.get("ci95") or (None, None)  # type: ignore[misc]
    interval = f" [{low:.4f}, {high:.4f}]" if low is not None and high is not None else ""
    return f"{entry['value']:.4f}{interval}"


if __name__ == "__main__":
    sys.exit(main())
