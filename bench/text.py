"""Text classification on the Rotten Tomatoes snippets: TF-IDF + logistic regression vs mlsmith.

Side by side on the same train / validation / test split (mlsmith's, rebuilt with
``mlsmith.data.splits.split_rows`` from the config's seed and checked against the test rows each
mlsmith run recorded):

- TF-IDF + LR: scikit-learn, word 1-2 grams, fitted on the training split; once with the default
  C=1 and once with C chosen on the validation split (mlsmith also selects on validation).
- mlsmith bag (``examples/reviews.yaml``) and transformer (``examples/reviews_transformer.yaml``),
  trained through ``mlsmith.train`` exactly as ``mlsmith train`` does (tracking off).

Test accuracy comes with the same 95% bootstrap interval mlsmith reports. Training throughput of
the transformer is given in real (non-padding) tokens per second, along with the share of
padding its length-bucketed batches carry versus plain shuffled batches.

    python bench/text.py                      # needs: pip install -e ".[bench,text]"
    python bench/text.py --seeds 42 7 123 1 2 # several splits, and the mean accuracy
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import mlsmith
from mlsmith.config import Config, load_config
from mlsmith.data.splits import split_rows
from mlsmith.data.tables import read_table
from mlsmith.evaluation import evaluate_outputs

ROOT = Path(__file__).resolve().parents[1]
BAG = ROOT / "examples" / "reviews.yaml"
TRANSFORMER = ROOT / "examples" / "reviews_transformer.yaml"
C_GRID = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)


def split_frames(config: Config) -> dict[str, pd.DataFrame]:
    """mlsmith's split of the configured file (rows without a label dropped, as mlsmith does)."""
    data = config.data
    frame = read_table(data.path)
    frame = frame.loc[frame[data.target].notna()].reset_index(drop=True)
    indices = split_rows(
        frame,
        data.split,
        val=data.split.val,
        test=data.split.test,
        classification=True,
        target=data.target,
        seed=config.seed,
        source=data.path,
    )
    return {name: frame.iloc[getattr(indices, name)] for name in ("train", "val", "test")}


def tfidf_baseline(config: Config, splits: dict[str, pd.DataFrame]) -> list[dict[str, Any]]:
    """TF-IDF (word 1-2 grams) + logistic regression: C=1, and C picked on validation."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    text, target = config.data.text_column, config.data.target  # type: ignore[union-attr]
    started = time.perf_counter()
    vectorizer = TfidfVectorizer(ngram_range=(1, 2))
    features = {k: None for k in splits}
    features["train"] = vectorizer.fit_transform(splits["train"][text].fillna(""))
    fit_s = {}
    models = {}
    for c in C_GRID:
        t = time.perf_counter()
        models[c] = LogisticRegression(C=c, max_iter=5000).fit(
            features["train"], splits["train"][target]
        )
        fit_s[c] = time.perf_counter() - t
    vectorize_s = time.perf_counter() - started - sum(fit_s.values())
    for name in ("val", "test"):
        features[name] = vectorizer.transform(splits[name][text].fillna(""))
    val_acc = {c: m.score(features["val"], splits["val"][target]) for c, m in models.items()}
    best = max(C_GRID, key=lambda c: (val_acc[c], -c))  # ties: the stronger regularisation

    rows = []
    for c, label in ((1.0, "TF-IDF + LR, C=1"), (best, f"TF-IDF + LR, C={best:g} (val)")):
        model = models[c]
        classes = [str(k) for k in model.classes_]
        truth = np.array([classes.index(str(v)) for v in splits["test"][target]])
        proba = model.predict_proba(features["test"])
        metrics = evaluate_outputs(
            "binary" if len(classes) == 2 else "multiclass",
            truth,
            proba,
            n_resamples=config.eval.bootstrap,
            confidence=config.eval.confidence,
            seed=config.seed,
        )
        fit = vectorize_s + fit_s[c]
        rows.append(
            {
                "model": label,
                "accuracy": metrics["accuracy"],
                "train_s": fit,
                "wall_s": fit if c == 1.0 else vectorize_s + sum(fit_s.values()),
                "note": "fit" if c == 1.0 else f"fit incl. {len(C_GRID)} values of C",
            }
        )
    return rows


def mlsmith_run(path: Path, seed: int, output_dir: Path, splits: dict[str, pd.DataFrame]) -> dict:
    """Train one example config; check its test rows are the baseline's."""
    overrides = [f"seed={seed}", f"output_dir={output_dir}", "track.enabled=false"]
    started = time.perf_counter()
    run = mlsmith.train(path, overrides, progress=False)
    wall = time.perf_counter() - started
    config = run.config
    recorded = pd.read_csv(run.path / "test_predictions.csv")["target"].astype(str)
    expected = splits["test"][config.data.target].astype(str)
    if recorded.tolist() != expected.tolist():
        raise SystemExit(f"{run.path}: its test split differs from the baseline's")

    history = run.history
    tokens = run.info["data"]["tokens_per_text"]["mean"]
    samples_per_s = float(history["samples_per_s"].median())
    return {
        "model": f"mlsmith {config.model.type}",
        "accuracy": run.metrics["test"]["accuracy"],
        "train_s": float(history["epoch_time_s"].sum()),
        "wall_s": wall,
        "note": f"{len(history)} epochs, {samples_per_s:,.0f} texts/s",
        "tokens_per_s": samples_per_s * tokens,
        "run": run,
    }


def padding_shares(run: mlsmith.Run) -> tuple[float, float]:
    """Share of padding cells in one training epoch: length-bucketed vs plainly shuffled."""
    from mlsmith.data.batches import BatchOptions
    from mlsmith.data.text import TextBatches, prepare

    config = run.config
    data = prepare(config, preprocessor=run.preprocessor)  # type: ignore[arg-type]
    shares = []
    for bucket_batches in (50, 0):
        batches = TextBatches(
            data.train.inputs,
            data.train.target,
            BatchOptions(config.train.batch_size, shuffle=True, seed=config.seed),
            bucket_batches=bucket_batches,
        )
        cells = real = 0
        for inputs, _ in batches:
            cells += inputs["attention_mask"].numel()
            real += int(inputs["attention_mask"].sum())
        shares.append(1.0 - real / cells)
    return shares[0], shares[1]


def accuracy_text(entry: dict[str, Any]) -> str:
    low, high = entry.get("ci95") or (float("nan"), float("nan"))
    return f"{entry['value']:.4f} [{low:.4f}, {high:.4f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's choice)"
    )
    args = parser.parse_args()
    logging.getLogger("mlsmith").setLevel(logging.WARNING)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"data {load_config(BAG).data.path}",
        file=sys.stderr,
    )
    table: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            config = load_config(BAG, [f"seed={seed}"])
            splits = split_frames(config)
            print(
                f"seed {seed}: {', '.join(f'{k} {len(v)}' for k, v in splits.items())} rows",
                file=sys.stderr,
            )
            rows = tfidf_baseline(config, splits)
            rows.append(mlsmith_run(BAG, seed, Path(tmp), splits))
            transformer = mlsmith_run(TRANSFORMER, seed, Path(tmp), splits)
            bucketed, shuffled = padding_shares(transformer["run"])
            transformer["note"] += (
                f", {transformer['tokens_per_s']:,.0f} tokens/s, padding {bucketed:.1%} "
                f"(plain shuffle: {shuffled:.1%})"
            )
            rows.append(transformer)
            for row in rows:
                table.append({"seed": seed, **row})

    print()
    print("| seed | model | test accuracy (95% CI) | train s | wall s | notes |")
    print("|---|---|---|---|---|---|")
    for row in table:
        print(
            f"| {row['seed']} | {row['model']} | {accuracy_text(row['accuracy'])} | "
            f"{row['train_s']:.1f} | {row['wall_s']:.1f} | {row['note']} |"
        )
    if len(args.seeds) > 1:
        print()
        print("| model | mean test accuracy | min | max |")
        print("|---|---|---|---|")
        names = [r["model"] for r in table if r["seed"] == args.seeds[0]]
        for position, _ in enumerate(names):
            values = [
                [r for r in table if r["seed"] == s][position]["accuracy"]["value"]
                for s in args.seeds
            ]
            label = names[position].split(", C=")[0] + (
                ", C val-tuned" if "(val)" in names[position] else ""
            )
            print(
                f"| {label} | {statistics.mean(values):.4f} | {min(values):.4f} | "
                f"{max(values):.4f} |"
            )


if __name__ == "__main__":
    main()
