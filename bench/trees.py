"""mlsmith's `model.type: lightgbm` vs LightGBM's scikit-learn API called directly.

Both fit the same training rows (mlsmith's own split, rebuilt from the seed), stop early on the
same validation rows, and are scored on the same test rows. Both use LightGBM's defaults, with
the one change mlsmith makes by default: up to 1000 rounds with early stopping after 50 rounds
without a better validation loss (LightGBM's default, 100 rounds without early stopping, would
make the comparison depend on a round count nobody chose). mlsmith standardises the numeric
columns first; trees split on ranks, so the metric must agree within 1%.

Wall times: the direct call times fit + predict; mlsmith times the whole `mlsmith.train` (data
preparation, pre-flight checks, per-round history, bootstrap CIs; tracking and reports off) and
`train_seconds`: the fit (its per-round history rows included) and the evaluation of the
validation and test splits with bootstrap CIs.

The second table times the fit alone on synthetic tables of 20,000 and 200,000 rows (40
features), where the per-round work mlsmith adds (history rows: validation predictions and
callbacks) shows rather than fixed costs.

    python bench/trees.py                 # needs: pip install -e ".[trees]"
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

import mlsmith
from mlsmith.config import load_config
from mlsmith.data import tabular

DATASETS = (
    # (built-in, metric, higher is better)
    ("sklearn:breast_cancer", "roc_auc"),
    ("sklearn:diabetes", "rmse"),
)
PATIENCE = 50


def _config(path: str, output: Path) -> dict[str, Any]:
    return {
        "experiment": "bench-trees",
        "seed": 0,
        "output_dir": str(output),
        "data": {"path": path, "target": "target", "split": {"val": 0.15, "test": 0.2}},
        "model": {"type": "lightgbm"},
        "track": {"enabled": False},
        "eval": {"report": False},
    }


def _direct(config: dict[str, Any], metric: str) -> tuple[float, float]:
    """LightGBM's scikit-learn estimator on the same rows; (test metric, seconds)."""
    import lightgbm as lgb
    from sklearn.metrics import mean_squared_error, roc_auc_score

    data = tabular.prepare(load_config(config))
    frames = data.frames
    features = [c for c in frames["train"].columns if c != "target"]
    split = {
        name: (frame[features].to_numpy(dtype=np.float64), frame["target"].to_numpy())
        for name, frame in frames.items()
    }
    classifier = metric == "roc_auc"
    started = time.perf_counter()
    estimator = (lgb.LGBMClassifier if classifier else lgb.LGBMRegressor)(
        n_estimators=1000, random_state=0, verbose=-1
    )
    with warnings.catch_warnings():
        # LightGBM 4.7 renamed eval_set to eval_X/eval_y; eval_set works in every 4.x.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        estimator.fit(
            *split["train"],
            eval_set=[split["val"]],
            callbacks=[lgb.early_stopping(PATIENCE, verbose=False)],
        )
    x_test, y_test = split["test"]
    if classifier:
        value = roc_auc_score(y_test, estimator.predict_proba(x_test)[:, 1])
    else:
        value = float(np.sqrt(mean_squared_error(y_test, estimator.predict(x_test))))
    return float(value), time.perf_counter() - started


def _mlsmith(config: dict[str, Any], metric: str) -> tuple[float, float, float, int]:
    """(test metric, seconds for train(), seconds for fit + evaluation, best round)."""
    started = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # the per-round lines
        run = mlsmith.train(config, progress=False)
    total = time.perf_counter() - started
    info = run.info
    return run.metrics["test"][metric]["value"], total, info["train_seconds"], info["best_epoch"]


def _fit_overhead(rows: int, output: Path) -> tuple[float, float, int]:
    """Seconds of mlsmith's LightGBMModel.fit vs the direct fit on the same matrices.

    A synthetic table large enough that fixed costs (imports, data preparation, bootstrap
    intervals) do not hide what mlsmith adds per round: the history rows (validation
    predictions, callbacks). Returns (mlsmith s, direct s, rounds).
    """
    import lightgbm as lgb
    import pandas as pd
    from sklearn.datasets import make_classification

    from mlsmith.models.base import FitContext
    from mlsmith.models.trees import LightGBMModel, feature_matrix

    x, y = make_classification(
        n_samples=rows, n_features=40, n_informative=20, flip_y=0.05, random_state=0
    )
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(x.shape[1])])
    frame["target"] = y
    csv = output / f"synthetic_{rows}.parquet"
    frame.to_parquet(csv)
    config = load_config(_config(str(csv), output))
    data = tabular.prepare(config)
    run_dir = output / f"fit-{rows}"
    run_dir.mkdir()
    model = LightGBMModel(config, data.preprocessor)
    started = time.perf_counter()
    summary = model.fit(data, FitContext(run_dir=run_dir))
    ours = time.perf_counter() - started

    train_x, val_x = feature_matrix(data.train.inputs), feature_matrix(data.val.inputs)
    started = time.perf_counter()
    estimator = lgb.LGBMClassifier(n_estimators=1000, random_state=0, verbose=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        estimator.fit(
            train_x,
            data.train.target,
            eval_set=[(val_x, data.val.target)],
            callbacks=[lgb.early_stopping(PATIENCE, verbose=False)],
        )
    direct = time.perf_counter() - started
    return ours, direct, len(summary.history)


def main() -> None:
    logging.disable(logging.WARNING)
    import lightgbm  # noqa: F401  (import time is not part of either measurement)

    header = (
        f"{'dataset':<22} {'metric':<8} {'mlsmith':>9} {'direct':>9} {'rel diff':>9} "
        f"{'mlsmith s':>10} {'fit+eval s':>10} {'direct s':>9} {'ratio':>7} {'fit+eval ratio':>14}"
    )
    print(header)
    print("-" * len(header))
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for path, metric in DATASETS:
            config = _config(path, Path(tmp))
            # Warm both once: the first call pays one-off imports.
            _direct(config, metric)
            direct, direct_s = _direct(config, metric)
            ours, total_s, fit_s, _ = _mlsmith(config, metric)
            diff = abs(ours - direct) / abs(direct)
            failed |= diff > 0.01
            print(
                f"{path:<22} {metric:<8} {ours:>9.4f} {direct:>9.4f} {diff:>8.2%} "
                f"{total_s:>10.2f} {fit_s:>10.2f} {direct_s:>9.3f} {total_s / direct_s:>6.1f}x "
                f"{fit_s / direct_s:>13.1f}x"
            )
        print("within 1%: " + ("no" if failed else "yes"))
        print()
        print("fit only (LightGBMModel.fit vs LGBMClassifier.fit, same matrices, same stopping):")
        print(f"{'rows':>9} {'mlsmith s':>10} {'direct s':>9} {'ratio':>7} {'history rows':>13}")
        for rows in (20_000, 200_000):
            ours_s, direct_s, kept = _fit_overhead(rows, Path(tmp))
            print(
                f"{rows:>9,} {ours_s:>10.2f} {direct_s:>9.2f} {ours_s / direct_s:>6.2f}x {kept:>13}"
            )


if __name__ == "__main__":
    main()
