"""``model.type: custom`` (your network), ``train.loss`` and ``train.optimizer.name`` by path:
end to end from the CLI and the API, on tables, text and images, with the errors a wrong path
gets. The user code lives outside the package, in tests/models/user_net.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from tests.conftest import config_dict, make_table

import mlsmith

USER_FILE = Path(__file__).parent / "user_net.py"


def _write(tmp_path: Path, config: dict[str, Any], name: str = "custom.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def on_path(monkeypatch: pytest.MonkeyPatch) -> Any:
    """tests/models on sys.path, so ``user_net`` imports by its dotted name."""
    monkeypatch.syspath_prepend(str(USER_FILE.parent))
    import user_net

    user_net.CALLS.update(loss=0, step=0)
    return user_net


def test_a_custom_network_trains_checks_packages_and_resumes_from_the_cli(
    tmp_path: Path, cli: Any
) -> None:
    make_table("binary", rows=240).to_csv(tmp_path / "data.csv", index=False)
    config = config_dict(
        tmp_path / "data.csv",
        tmp_path / "runs",
        # A small network: at the default lr the one-batch overfit check wants more steps.
        train={"epochs": 2, "optimizer": {"lr": 0.01}},
        export={"package": True},
    )
    config["model"] = {"type": "custom", "module": f"{USER_FILE}:TinyNet", "params": {"hidden": 32}}
    path = _write(tmp_path, config)
    checked = cli("check", path, "--json")
    assert checked.code == 0, checked.stderr
    results = {r["name"]: r["status"] for r in json.loads(checked.stdout)["results"]}
    assert "fail" not in results.values(), results
    trained = cli("train", path)
    assert trained.code == 0, trained.stderr
    [run_dir] = sorted((tmp_path / "runs" / "t").iterdir())
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished"
    assert info["package"]["status"] == "written" and info["package"]["max_abs_diff"] < 1e-4
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["accuracy"]["value"] <= 1.0
    # The package (ONNX, no torch) predicts what the run predicts.
    rows = make_table("binary", rows=50, seed=9).drop(columns="label")
    expected = mlsmith.predict(run_dir, rows)
    got = mlsmith.load_package(run_dir).predict(rows)
    assert isinstance(expected, pd.DataFrame)
    np.testing.assert_allclose(got["proba_yes"], expected["proba_yes"], atol=1e-5)
    assert (got["prediction"] == expected["prediction"]).all()
    # Resume from the last checkpoint to more epochs: the class is built again from the config.
    resumed = cli("train", path, "--resume", run_dir, "train.epochs=3")
    assert resumed.code == 0, resumed.stderr
    history = pd.read_csv(run_dir / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3]


@pytest.mark.parametrize("kind", ["text", "image"])
def test_a_custom_network_by_dotted_path_reads_text_and_images(
    tmp_path: Path, kind: str, on_path: Any
) -> None:
    config = config_dict("unused", tmp_path / "runs", train={"epochs": 2, "batch_size": 16})
    if kind == "text":
        from tests.text_data import make_texts

        make_texts("binary", rows=120, seed=3).to_csv(tmp_path / "texts.csv", index=False)
        config["data"] = {
            "type": "text",
            "path": str(tmp_path / "texts.csv"),
            "target": "label",
            "tokenizer": {"vocab_size": 200},
        }
    else:
        from tests.image_data import make_images, write_folder

        images, labels = make_images(24, classes=2, size=(16, 16), seed=3)
        config["data"] = {
            "type": "image",
            "path": str(write_folder(tmp_path / "img", images, labels)),
        }
    config["model"] = {"type": "custom", "module": "user_net.TinyNet", "params": {"hidden": 8}}
    run = mlsmith.train(config, progress=False)
    assert run.info["status"] == "finished"
    seen = run.model.network.inputs_seen  # type: ignore[attr-defined]
    if kind == "text":
        assert set(seen) == {"vocab_size", "max_length", "padding_id"}
    else:
        assert seen == {"channels": 3, "height": 16, "width": 16} or seen["height"] == 16


def test_your_loss_and_optimizer_train_a_regression(tmp_path: Path, on_path: Any) -> None:
    make_table("regression", rows=200).to_csv(tmp_path / "data.csv", index=False)
    config = config_dict(
        tmp_path / "data.csv",
        tmp_path / "runs",
        train={
            "epochs": 3,
            "loss": "user_net.mean_absolute",
            "optimizer": {"name": f"{USER_FILE}:PlainSGD", "lr": 0.05},
        },
    )
    run = mlsmith.train(config, progress=False)
    assert on_path.CALLS["loss"] > 0  # the user's loss is what trained and validated
    history = pd.read_csv(run.path / "history.csv")
    assert history["train/loss"].iloc[-1] < history["train/loss"].iloc[0]
    assert np.isfinite(run.metrics["test"]["rmse"]["value"])


@pytest.mark.parametrize(
    ("section", "value", "message"),
    [
        ("model", {"type": "custom", "module": "no_such_pkg.Net"}, "model.module: cannot import"),
        ("model", {"type": "custom", "module": "user_net.Missing"}, "names nothing"),
        ("model", {"type": "custom", "module": "user_net.NotANetwork"}, "not a torch.nn.Module"),
        ("model", {"type": "custom", "module": "missing.py:Net"}, "is not a Python file"),
        (
            "model",
            {"type": "custom", "module": "user_net.TinyNet", "params": {"width": 3}},
            "cannot be built as TinyNet",
        ),
        ("train", {"loss": "user_net.NotANetwork"}, "train.loss"),
        ("train", {"loss": "hinge"}, "unknown loss 'hinge'"),
        ("train", {"optimizer": {"name": "lion"}}, "unknown optimizer 'lion'"),
        ("train", {"optimizer": {"name": "user_net.TinyNet"}}, "not an optimizer class"),
    ],
)
def test_a_wrong_path_is_exit_2_naming_the_key(
    tmp_path: Path, cli: Any, on_path: Any, section: str, value: dict[str, Any], message: str
) -> None:
    make_table("binary", rows=60).to_csv(tmp_path / "data.csv", index=False)
    config = config_dict(tmp_path / "data.csv", tmp_path / "runs")
    if section == "model":
        config["model"] = value
    else:
        config["train"].update(value)
    result = cli("train", _write(tmp_path, config))
    assert result.code == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "runs" / "t").exists() or not any((tmp_path / "runs" / "t").iterdir())


def test_your_loss_and_optimizer_are_for_torch_families(tmp_path: Path, cli: Any) -> None:
    make_table("binary", rows=60).to_csv(tmp_path / "data.csv", index=False)
    config = config_dict(
        tmp_path / "data.csv",
        tmp_path / "runs",
        train={"optimizer": {"name": f"{USER_FILE}:PlainSGD"}},
    )
    config["model"] = {"type": "lightgbm", "n_estimators": 5}
    result = cli("train", _write(tmp_path, config))
    assert result.code == 2 and "trains the torch families only" in result.stderr


def test_tune_searches_a_custom_network_constructor_arguments(tmp_path: Path) -> None:
    make_table("binary", rows=160).to_csv(tmp_path / "data.csv", index=False)
    config = config_dict(tmp_path / "data.csv", tmp_path / "runs", train={"epochs": 2})
    config["model"] = {"type": "custom", "module": f"{USER_FILE}:TinyNet"}
    config["tune"] = {
        "trials": 2,
        "space": {"model.params.hidden": {"type": "categorical", "choices": [4, 16]}},
    }
    result = mlsmith.tune(config)
    assert result.best_params["model.params.hidden"] in (4, 16)
    assert result.best_config is not None
    best = yaml.safe_load(result.best_config.read_text())
    assert best["model"]["params"]["hidden"] == result.best_params["model.params.hidden"]
