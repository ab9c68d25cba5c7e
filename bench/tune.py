"""Pruning pays: the same trial budget with and without the median pruner, side by side.

Both studies search the same space (learning rate over 5 decades, width, dropout) with the same
TPE seed on examples/tabular.yaml (breast cancer, shipped in scikit-learn). Pruned trials stop
after a few epochs, so the pruned study spends less time for a best value that should be close.

    python bench/tune.py                     # 20 trials each, about 3-4 minutes on 2 CPU cores
    python bench/tune.py --trials 10 --epochs 15
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

import mlsmith
from mlsmith.config import TuneConfig

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "tabular.yaml"
SPACE = {
    "train.optimizer.lr": {"type": "float", "low": 1e-6, "high": 1e-1, "log": True},
    "model.hidden": {"type": "categorical", "choices": [[32], [128, 64]]},
    "model.dropout": {"type": "float", "low": 0.0, "high": 0.5},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    logging.getLogger("mlsmith").setLevel(logging.WARNING)

    table = Table(title=f"{args.trials} trials, {args.epochs} epochs max, {EXAMPLE.name}")
    for column in (
        "pruner",
        "wall s",
        "best val/loss",
        "complete",
        "pruned",
        "failed",
        "epochs trained",
    ):
        table.add_column(column, justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        for pruner in ("none", "median"):
            overrides = [
                f"output_dir={tmp}/{pruner}",
                f"train.epochs={args.epochs}",
                "train.early_stopping.enabled=false",
                "track.enabled=false",
                "eval.bootstrap=0",
            ]
            tune = {
                "trials": args.trials,
                "pruner": pruner,
                "seed": 0,
                "startup_trials": 3,
                "warmup_epochs": 2,
                "space": SPACE,
            }
            config = mlsmith.load_config(EXAMPLE, overrides)
            config.tune = TuneConfig.model_validate(tune)
            started = time.perf_counter()
            result = mlsmith.tune(config)
            wall = time.perf_counter() - started
            epochs = 0
            for trial in result.trials:
                if trial.run_dir:
                    history = Path(trial.run_dir) / "history.csv"
                    epochs += max(len(history.read_text().splitlines()) - 1, 0)
            table.add_row(
                pruner,
                f"{wall:.1f}",
                f"{result.best_value:.4f}" if result.best_value is not None else "-",
                str(result.counts["COMPLETE"]),
                str(result.counts["PRUNED"]),
                str(result.counts["FAIL"]),
                str(epochs),
            )
    Console().print(table)


if __name__ == "__main__":
    main()
