"""The model contract, checked the same way for every registered family and every task kind.

A new family (boosted trees...) joins by registering itself in ``MODEL_FAMILIES``; it then has
to pass this test unchanged. Per-family settings below only make the fit tiny and fast.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.conftest import config_dict, make_table

from mlsmith import families
from mlsmith.config import MODELS_FOR_DATA, load_config
from mlsmith.models.base import FitContext, FitSummary, Model
from mlsmith.training.callbacks import TrainingState

KINDS = ("binary", "multiclass", "regression")
# model.* settings that keep a family's fit to a fraction of a second on ~100 rows.
FAST_SETTINGS: dict[str, dict[str, Any]] = {
    "mlp": {"hidden": [8], "dropout": 0.0},
    "bag": {"dim": 8, "buckets": 1024},
    "transformer": {"dim": 16, "depth": 1, "heads": 2},
    "cnn": {"channels": [8, 16], "depth": 1},
    "torchvision": {"arch": "resnet18"},
    "lightgbm": {"n_estimators": 20, "min_child_samples": 5},
    "xgboost": {"n_estimators": 20},
    "sklearn": {"params": {"max_iter": 20}},
    # A user's own network, from a file outside the package (tests/models/user_net.py).
    "custom": {"module": f"{Path(__file__).parent / 'user_net.py'}:TinyNet"},
}
# Families fitted in one call (a scikit-learn estimator's fit): one history row, nothing a
# callback could stop part-way.
ONE_FIT = frozenset({"sklearn"})


def _tabular_data(tmp_path: Path, kind: str) -> dict[str, Any]:
    data_path = tmp_path / "data.csv"
    make_table(kind, rows=120, seed=3).to_csv(data_path, index=False)
    return {"path": str(data_path), "target": "label"}


def _image_data(tmp_path: Path, kind: str) -> dict[str, Any]:
    from tests.image_data import make_images, write_folder

    # A folder of tiny PNGs, one subfolder per class: 2 classes (binary) or 3.
    images, labels = make_images(20, classes=2 if kind == "binary" else 3, size=(16, 16), seed=3)
    return {"path": str(write_folder(tmp_path / "images", images, labels))}


def _text_data(tmp_path: Path, kind: str) -> dict[str, Any]:
    from tests.text_data import make_texts

    data_path = tmp_path / "texts.csv"
    make_texts(kind, rows=120, seed=3).to_csv(data_path, index=False)
    return {"path": str(data_path), "target": "label", "tokenizer": {"vocab_size": 200}}


# data.type -> a tiny labelled data section of a task kind, written under tmp_path.
DATASETS: dict[str, Callable[[Path, str], dict[str, Any]]] = {
    "tabular": _tabular_data,
    "image": _image_data,
    "text": _text_data,
}


def _data_type(family: str) -> str:
    return next(d for d, models in MODELS_FOR_DATA.items() if family in models)


# The families with a Model to fit: forecasters (data.type timeseries only) have their own
# contract, the backtest's (tests/forecasting).
TRAINED = sorted(f for f in families.MODEL_FAMILIES if _data_type(f) in DATASETS)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", TRAINED)
def test_model_family_contract(family: str, kind: str, tmp_path: Path) -> None:
    data_type = _data_type(family)
    if data_type != "tabular" and kind == "regression":
        pytest.skip(f"{data_type} data is classification only")
    raw = config_dict("unused", tmp_path / "runs", train={"epochs": 2, "batch_size": 16})
    raw["data"] = {"type": data_type, **DATASETS[data_type](tmp_path, kind)}
    raw["model"] = {"type": family, **FAST_SETTINGS.get(family, {})}
    config = load_config(raw)
    data_module = families.data_kind(config.data.type)
    data = data_module.prepare(config)
    assert data.task.kind == kind
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    data.preprocessor.save(run_dir)

    cls = families.model_family(family)
    assert issubclass(cls, Model) and cls.family == family
    model = cls(config, data.preprocessor)
    assert model.task is data.preprocessor.task

    summary = model.fit(data, FitContext(run_dir=run_dir))
    assert isinstance(summary, FitSummary)
    assert isinstance(summary.history, list)
    assert summary.best_epoch is None or 1 <= summary.best_epoch <= max(len(summary.history), 1)
    assert isinstance(summary.stopped_early, bool)

    assert data.test is not None
    inputs, n = data.test.inputs, len(data.test)
    task = model.task
    raw_out = model.predict_raw(inputs)
    assert raw_out.shape == (n, task.n_outputs)
    assert np.isfinite(raw_out).all()

    decoded = model.predict(inputs)
    np.testing.assert_allclose(decoded, task.decode(raw_out))
    if task.is_classification:
        assert decoded.shape == (n, len(task.classes))
        assert ((decoded >= 0) & (decoded <= 1)).all()
        np.testing.assert_allclose(decoded.sum(axis=1), 1.0, atol=1e-6)
    else:
        assert decoded.shape == (n,)
        assert np.isfinite(decoded).all()
        # In the target's units: near its mean (~10), not the standardized scale (~0).
        assert abs(decoded.mean() - task.truth(data.test.target).mean()) < 5.0

    # Rows are predicted independently: a slice gives the same values as the whole.
    head = {name: array[:5] for name, array in inputs.items()}
    np.testing.assert_allclose(model.predict(head), decoded[:5], rtol=1e-5, atol=1e-6)

    files = model.artifacts(run_dir)
    assert files, "a fitted model must be made of at least one file"
    for file in files:
        assert Path(file).is_file(), file
        assert Path(file).resolve().is_relative_to(run_dir.resolve()), file

    # A fresh process only has the run directory: the saved preprocessing and the artifacts.
    preprocessor = data_module.load_preprocessor(run_dir)
    loaded = cls.load(run_dir, config, preprocessor)
    assert isinstance(loaded, cls)
    np.testing.assert_array_equal(loaded.predict_raw(inputs), raw_out)
    np.testing.assert_array_equal(loaded.predict(inputs), decoded)


class _Recorder:
    """Counts the hooks a loop calls and checks the state it passes; stops after ``stop_after``
    epochs (or boosting rounds) when asked, as a tuner's pruning callback does."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.stop_after = stop_after
        self.calls: dict[str, int] = {}
        self.epochs: list[int] = []

    def _count(self, hook: str) -> None:
        self.calls[hook] = self.calls.get(hook, 0) + 1

    def on_fit_start(self, state: TrainingState) -> None:
        self._count("on_fit_start")
        assert state.epoch == 0 and state.history == [] and not state.should_stop
        assert state.epochs >= 1 and state.steps_per_epoch >= 1

    def on_epoch_end(self, state: TrainingState, row: dict[str, float]) -> None:
        self._count("on_epoch_end")
        self.epochs.append(int(row["epoch"]))
        assert state.history[-1] == row
        assert isinstance(state.lr, float) and isinstance(state.step_rows, list)
        assert isinstance(state.running_loss(), float)
        if self.stop_after is not None and len(self.epochs) >= self.stop_after:
            state.should_stop = True

    def on_fit_end(self, state: TrainingState) -> None:
        self._count("on_fit_end")


def _fit(
    family: str, tmp_path: Path, name: str, callbacks: list[object]
) -> tuple[Model, FitSummary, Any]:
    from mlsmith.pipeline import build

    data_type = _data_type(family)
    raw = config_dict("unused", tmp_path / "runs", train={"epochs": 3, "batch_size": 16})
    raw["train"]["early_stopping"] = {"enabled": False}
    raw["data"] = {"type": data_type, **DATASETS[data_type](tmp_path, "binary")}
    raw["model"] = {"type": family, **FAST_SETTINGS.get(family, {})}
    if family in ("lightgbm", "xgboost"):
        raw["model"]["early_stopping_rounds"] = None
    data, model = build(load_config(raw))
    run_dir = tmp_path / name
    run_dir.mkdir()
    summary = model.fit(data, FitContext(run_dir=run_dir, callbacks=callbacks))
    return model, summary, data


@pytest.mark.parametrize("family", TRAINED)
def test_model_family_callbacks_stopping_and_seeded_repeats(family: str, tmp_path: Path) -> None:
    """Every family calls the callbacks once per epoch (or round), honours ``should_stop`` set
    by one, and gives identical predictions when run twice with one seed."""
    recorder = _Recorder()
    model, summary, data = _fit(family, tmp_path, "a", [recorder])
    assert recorder.calls["on_fit_start"] == 1 and recorder.calls["on_fit_end"] == 1
    least = 1 if family in ONE_FIT else 2
    assert recorder.calls["on_epoch_end"] == len(summary.history) >= least
    assert recorder.epochs == [int(row["epoch"]) for row in summary.history]
    assert recorder.epochs == sorted(set(recorder.epochs))
    assert not summary.stopped_early

    if family not in ONE_FIT:
        stopper = _Recorder(stop_after=1)
        _, stopped, _ = _fit(family, tmp_path, "b", [stopper])
        assert stopper.calls["on_epoch_end"] == 1 and len(stopped.history) == 1
        assert stopped.stopped_early

    again, _, _ = _fit(family, tmp_path, "c", [])
    assert data.test is not None
    np.testing.assert_array_equal(
        again.predict_raw(data.test.inputs), model.predict_raw(data.test.inputs)
    )


def _trains_with_the_trainer(family: str) -> bool:
    from mlsmith.models.neural import NeuralModel

    return issubclass(families.model_family(family), NeuralModel)


@pytest.mark.parametrize("family", [f for f in TRAINED if _trains_with_the_trainer(f)])
def test_flat_buffers_change_no_family_s_numbers(
    family: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Trainer's flat buffers (training/flat.py) are a speed-up only: every torch family
    trains to the same predictions, bit for bit, with them off; and they do take part."""
    from mlsmith.training.flat import FlatBuffers

    decided: list[tuple[bool, bool]] = []
    decide = FlatBuffers._decide

    def recorded(self: FlatBuffers) -> None:
        decide(self)
        decided.append((self.installed, bool(self.leaves)))

    monkeypatch.setattr(FlatBuffers, "_decide", recorded)
    flat, _, data = _fit(family, tmp_path, "flat", [])
    assert decided == [(True, True)]  # gradients and parameters both flat, from the first step
    monkeypatch.setattr(FlatBuffers, "for_params", classmethod(lambda cls, *_: None))
    plain, _, _ = _fit(family, tmp_path, "plain", [])
    assert data.test is not None
    np.testing.assert_array_equal(
        flat.predict_raw(data.test.inputs), plain.predict_raw(data.test.inputs)
    )
