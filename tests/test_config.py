"""Tests for mlsmith.config: defaults, YAML, overrides, validation messages, and CLI errors."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from pydantic import BaseModel, ValidationError
from tests.conftest import make_table

from mlsmith.config import (
    Config,
    CVConfig,
    ProfileConfig,
    RegisterConfig,
    TuneConfig,
    apply_overrides,
    load_config,
)
from mlsmith.config.loading import _section_type
from mlsmith.errors import ConfigError

IRIS: dict[str, Any] = {"data": {"path": "sklearn:iris", "target": "target"}}


def _get(config: Config, dotted: str) -> Any:
    return functools.reduce(getattr, dotted.split("."), config)


def _write_yaml(path: Path, content: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return path


def _required(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        if field.is_required():
            out.append(prefix + name)
        section = _section_type(field.annotation)
        if section is not None:
            out += _required(section, f"{prefix}{name}.")
    return out


def _leaves(model: type[BaseModel]) -> int:
    count = 0
    for field in model.model_fields.values():
        section = _section_type(field.annotation)
        count += _leaves(section) if section is not None else 1
    return count


# --- defaults and loading ---------------------------------------------------------------------


def test_only_data_path_and_target_are_required() -> None:
    # tune.space and track.register.name are required only inside optional sections (None by
    # default).
    assert _required(Config) == [
        "data",
        "data.path",
        "data.target",
        "track.registration.name",
        "tune.space",
    ]


def test_defaults() -> None:
    config = load_config(IRIS)

    assert config.experiment == "default"
    assert config.seed == 42
    assert config.data.task == "auto"
    assert config.data.split.val == 0.15 and config.data.split.test == 0.15
    assert config.data.split.stratify is None
    assert config.data.drop == [] and config.data.categorical is None
    assert config.model.type == "mlp" and config.model.hidden == [256, 128]
    # The MLP's own epoch budget (bench/defaults.py --axis epochs), not the shared 20.
    assert config.train.epochs == 50
    assert config.train.optimizer.name == "adamw" and config.train.optimizer.lr == 1e-3
    assert config.train.precision == "32"
    assert config.train.early_stopping.enabled is True
    assert config.track.enabled is True
    assert config.eval.bootstrap == 1000


def test_family_defaults_apply_only_where_the_config_is_silent() -> None:
    """The bag trains at lr 3e-3 and the MLP 50 epochs (chosen leave-one-dataset-out); the
    other families keep the shared 1e-3 and 20 epochs, and anything the user sets wins."""
    text = {"type": "text", "path": "x.csv", "target": "y", "text_column": "text"}
    bag = load_config({"data": text, "model": {"type": "bag"}})
    assert bag.train.optimizer.lr == 3e-3 and bag.train.epochs == 20
    transformer = load_config({"data": text, "model": {"type": "transformer"}})
    assert transformer.train.optimizer.lr == 1e-3
    bag_lr = load_config({"data": text, "model": {"type": "bag"}}, ["train.optimizer.lr=0.1"])
    assert bag_lr.train.optimizer.lr == 0.1
    assert load_config(IRIS).train.epochs == 50
    assert load_config(IRIS, ["train.epochs=7"]).train.epochs == 7
    assert transformer.train.epochs == 20
    assert load_config(load_config(bag)).train.optimizer.lr == 3e-3


@pytest.mark.parametrize(
    ("raw", "missing"),
    [
        ({}, "data"),
        ({"data": {"path": "x.csv"}}, "data.target"),
        ({"data": {"target": "y"}}, "data.path"),
    ],
)
def test_missing_required_key_is_named(raw: dict[str, Any], missing: str) -> None:
    with pytest.raises(ConfigError, match=rf"{missing}: required key is missing"):
        load_config(raw)


def test_yaml_file_loads(tmp_path: Path) -> None:
    path = _write_yaml(
        tmp_path / "exp.yaml",
        "seed: 3\n"
        "data:\n  path: sklearn:wine\n  target: target\n  split: {val: 0.25, test: 0.1}\n"
        "model:\n  hidden: [8, 4]\n"
        "train:\n  optimizer:\n    lr: 3e-4\n",
    )
    config = load_config(path)

    assert config.seed == 3
    assert config.data.path == "sklearn:wine"
    assert config.data.split.val == 0.25
    assert config.model.hidden == [8, 4]
    # PyYAML reads `3e-4` as text; the float field still gets a float.
    assert config.train.optimizer.lr == pytest.approx(3e-4)
    assert isinstance(config.train.optimizer.lr, float)


@pytest.mark.parametrize(
    ("stem", "expected"),
    [("exp", "exp"), ("my experiment", "my-experiment"), ("_hidden", "hidden"), ("__", "default")],
)
def test_experiment_defaults_to_a_valid_name_from_the_file_name(
    tmp_path: Path, stem: str, expected: str
) -> None:
    path = _write_yaml(tmp_path / f"{stem}.yaml", IRIS)
    assert load_config(path).experiment == expected


def test_experiment_from_non_ascii_file_name_is_valid(tmp_path: Path) -> None:
    path = _write_yaml(tmp_path / "café.yaml", IRIS)
    name = load_config(path).experiment
    assert name.startswith("caf")
    assert name.isascii()


def test_explicit_experiment_beats_file_name(tmp_path: Path) -> None:
    path = _write_yaml(tmp_path / "file.yaml", {**IRIS, "experiment": "chosen"})
    assert load_config(path).experiment == "chosen"


# --- overrides --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "key", "expected"),
    [
        ("train.epochs=7", "train.epochs", 7),
        ("train.optimizer.lr=3e-4", "train.optimizer.lr", 3e-4),
        ("train.optimizer.lr=0.05", "train.optimizer.lr", 0.05),
        ("train.compile=true", "train.compile", True),
        ("train.early_stopping.enabled=false", "train.early_stopping.enabled", False),
        ("model.hidden=[64,32]", "model.hidden", [64, 32]),
        ("model.hidden=[]", "model.hidden", []),
        ("train.grad_clip=null", "train.grad_clip", None),
        ("train.grad_clip=2", "train.grad_clip", 2.0),
        ("data.categorical=[color, size]", "data.categorical", ["color", "size"]),
        ("data.split.stratify=~", "data.split.stratify", None),
        ("train.optimizer.betas=[0.8, 0.9]", "train.optimizer.betas", (0.8, 0.9)),
        ("train.precision=32", "train.precision", "32"),
        ("train.precision=bf16-mixed", "train.precision", "bf16-mixed"),
        ("train.device=cuda:1", "train.device", "cuda:1"),
        ("data.path=sklearn:wine", "data.path", "sklearn:wine"),
        ("experiment=2024", "experiment", "2024"),
    ],
)
def test_override_values_are_typed_like_yaml(override: str, key: str, expected: Any) -> None:
    base = {
        **IRIS,
        "train": {"grad_clip": 1.0},
        "data": {**IRIS["data"], "split": {"stratify": True}},
    }
    config = load_config(base, [override])

    value = _get(config, key)
    assert value == expected
    assert type(value) is type(expected)


def test_apply_overrides_parses_yaml_and_reports_touched_keys() -> None:
    raw: dict[str, Any] = {"train": {"epochs": 1}}
    touched = apply_overrides(raw, ["train.epochs=5", "model.hidden=[3]", "seed=1"])

    assert raw == {"train": {"epochs": 5}, "model": {"hidden": [3]}, "seed": 1}
    assert touched == {("train", "epochs"), ("model", "hidden"), ("seed",)}


def test_later_override_wins_and_source_is_not_modified() -> None:
    source = {**IRIS, "train": {"epochs": 2}}
    config = load_config(source, ["train.epochs=3", "train.epochs=4"])

    assert config.train.epochs == 4
    assert source["train"] == {"epochs": 2}


def test_override_value_with_equals_sign_keeps_the_rest() -> None:
    config = load_config(IRIS, ["track.uri=sqlite:///x.db?mode=rw"])
    assert config.track.uri == "sqlite:///x.db?mode=rw"


@pytest.mark.parametrize(
    "override", ["train.epochs", "=3", "train..epochs=3", ".epochs=3", "train.=3", ""]
)
def test_malformed_override_is_rejected(override: str) -> None:
    with pytest.raises(ConfigError, match=r"must look like key\.path=value"):
        load_config(IRIS, [override])


def test_override_with_invalid_yaml_value() -> None:
    with pytest.raises(
        ConfigError, match=r"override 'model.hidden=\[64,': value is not valid YAML"
    ):
        load_config(IRIS, ["model.hidden=[64,"])


def test_override_through_a_leaf_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"'train.epochs' holds a number, not a section"):
        load_config({**IRIS, "train": {"epochs": 3}}, ["train.epochs.x=1"])


# --- unknown keys and error messages ----------------------------------------------------------


@pytest.mark.parametrize(
    ("dotted", "suggestion"),
    [
        ("experimnet", "experiment"),
        ("train.optimzer", "optimizer"),
        ("model.hiden", "hidden"),
        ("train.optimizer.weight_decy", "weight_decay"),
        ("data.split.stratfy", "stratify"),
        ("model.embedding.max_dimm", "max_dim"),
        ("train.early_stopping.patiense", "patience"),
    ],
)
def test_unknown_key_in_yaml_is_rejected_with_suggestion(
    tmp_path: Path, dotted: str, suggestion: str
) -> None:
    raw: dict[str, Any] = yaml.safe_load(yaml.safe_dump(IRIS))
    apply_overrides(raw, [f"{dotted}=1"])
    path = _write_yaml(tmp_path / "typo.yaml", raw)

    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert f"{path}: {dotted}: unknown key (did you mean '{suggestion}'?)" in message
    assert "valid keys here:" in message and suggestion in message.split("valid keys here:")[1]


@pytest.mark.parametrize(
    ("override", "key", "suggestion"),
    [
        ("train.optimzer.lr=0.1", "train.optimzer", "optimizer"),
        ("model.hiden=[8]", "model.hiden", "hidden"),
        ("trian.epochs=3", "trian", "train"),
    ],
)
def test_unknown_key_from_override_is_blamed_on_the_command_line(
    tmp_path: Path, override: str, key: str, suggestion: str
) -> None:
    path = _write_yaml(tmp_path / "ok.yaml", IRIS)
    with pytest.raises(ConfigError) as info:
        load_config(path, [override])
    assert f"command line: {key}: unknown key (did you mean '{suggestion}'?)" in str(info.value)


def test_unknown_key_without_close_match_lists_valid_keys() -> None:
    with pytest.raises(ConfigError) as info:
        load_config({**IRIS, "eval": {"zzzz": 1}})
    message = str(info.value)
    assert "eval.zzzz: unknown key; valid keys here: baseline, bootstrap, confidence" in message
    assert "did you mean" not in message


@pytest.mark.parametrize(
    ("override", "pieces"),
    [
        ("train.epochs=many", ["train.epochs", "integer", "found 'many'"]),
        ("train.batch_size=0", ["train.batch_size", "greater than or equal to 1", "found 0"]),
        (
            "train.optimizer.name=adamx",
            ["train.optimizer.name", "adamw, adam, sgd", "found 'adamx'"],
        ),
        ("model.hidden=[64,0]", ["model.hidden.1", "greater than or equal to 1", "found 0"]),
        ("model.hidden=64", ["model.hidden", "list", "found 64"]),
        ("train=5", ["train", "dictionary", "found 5"]),
        ("train.precision=16", ["train.precision", "'bf16-mixed'", "found '16'"]),
        ("train.precision=true", ["train.precision", "'32'", "found True"]),
    ],
)
def test_bad_override_value_names_key_expected_and_found(
    tmp_path: Path, override: str, pieces: list[str]
) -> None:
    path = _write_yaml(tmp_path / "ok.yaml", IRIS)
    with pytest.raises(ConfigError) as info:
        load_config(path, [override])
    message = str(info.value)
    assert message.startswith("invalid configuration: command line: ")
    for piece in pieces:
        assert piece in message


def test_bad_yaml_value_names_the_file(tmp_path: Path) -> None:
    path = _write_yaml(tmp_path / "bad.yaml", {**IRIS, "train": {"epochs": "many"}})
    with pytest.raises(
        ConfigError, match="^" + re.escape(f"invalid configuration: {path}: train.epochs: ")
    ):
        load_config(path)


def test_several_errors_are_all_listed(tmp_path: Path) -> None:
    path = _write_yaml(tmp_path / "bad.yaml", {**IRIS, "seed": "x", "train": {"epochz": 1}})
    with pytest.raises(ConfigError) as info:
        load_config(path, ["eval.bootstrap=-1"])
    lines = str(info.value).splitlines()
    assert lines[0] == "invalid configuration:"
    assert len(lines) == 4
    assert any(line.strip().startswith(f"{path}: seed:") for line in lines)
    assert any(line.strip().startswith(f"{path}: train.epochz: unknown key") for line in lines)
    assert any(line.strip().startswith("command line: eval.bootstrap:") for line in lines)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "the file is empty"),
        ("- a\n- b\n", "expected a mapping at the top level, found a list"),
        ("just text\n", "expected a mapping at the top level, found a string"),
        ("data: {path: x\n", "not valid YAML"),
    ],
)
def test_yaml_file_that_is_not_a_mapping(tmp_path: Path, content: str, message: str) -> None:
    path = _write_yaml(tmp_path / "c.yaml", content)
    with pytest.raises(ConfigError, match="^" + re.escape(f"{path}: {message}")):
        load_config(path)


def test_binary_config_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "model.yaml"
    path.write_bytes(b"\xff\xfe\x00\x81PK\x03\x04")
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        load_config(path)


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match=re.escape(f"config file not found: {path}")):
        load_config(path)


def test_a_folder_as_the_config_says_it_is_a_folder(tmp_path: Path) -> None:
    (tmp_path / "exp.yaml").write_text("data: {path: x.csv, target: y}\n")
    with pytest.raises(ConfigError, match="is a folder, not a config file") as info:
        load_config(tmp_path)
    assert "not found" not in str(info.value)
    assert str(tmp_path / "exp.yaml") in str(info.value)  # points at a config it holds


# --- paths ------------------------------------------------------------------------------------


def test_yaml_paths_are_relative_to_the_yaml_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write_yaml(
        tmp_path / "project" / "configs" / "c.yaml",
        {
            "data": {
                "path": "../data/train.csv",
                "target": "y",
                "val_path": "val.csv",
                "test_path": str(tmp_path / "abs" / "test.csv"),
            }
        },
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    config = load_config(path)

    assert config.data.path == str(tmp_path / "project" / "data" / "train.csv")
    assert config.data.val_path == str(tmp_path / "project" / "configs" / "val.csv")
    assert config.data.test_path == str(tmp_path / "abs" / "test.csv")


def test_override_paths_are_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write_yaml(tmp_path / "configs" / "c.yaml", {"data": {"path": "a.csv", "target": "y"}})
    monkeypatch.chdir(tmp_path)

    config = load_config(path, ["data.path=data/b.csv", "data.test_path=t.parquet"])

    assert config.data.path == str(tmp_path / "data" / "b.csv")
    assert config.data.test_path == str(tmp_path / "t.parquet")


def test_dict_paths_are_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config({"data": {"path": "d.csv", "target": "y"}})
    assert config.data.path == str(tmp_path / "d.csv")


def test_path_objects_in_a_dict_are_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(
        {"output_dir": tmp_path / "runs", "data": {"path": Path("d.csv"), "target": "y"}}
    )
    assert config.data.path == str(tmp_path / "d.csv")
    assert config.output_dir == str(tmp_path / "runs")


def test_builtin_and_home_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = _write_yaml(
        tmp_path / "c.yaml",
        {"data": {"path": "sklearn:iris", "target": "t", "val_path": "~/v.csv"}},
    )
    config = load_config(path)

    assert config.data.path == "sklearn:iris"
    assert config.data.val_path == str(tmp_path / "home" / "v.csv")


# --- validation -------------------------------------------------------------------------------


def test_precision_written_as_an_int_is_accepted(tmp_path: Path) -> None:
    path = _write_yaml(
        tmp_path / "p.yaml",
        "data: {path: 'sklearn:iris', target: target}\ntrain:\n  precision: 32\n",
    )
    assert load_config(path).train.precision == "32"


SUM_RULE = "val + test must leave rows for training"


@pytest.mark.parametrize(
    ("val", "test", "expected"),
    [
        (0.5, 0.5, f"data.split: {SUM_RULE}, found val=0.5 test=0.5"),
        (0.6, 0.45, f"data.split: {SUM_RULE}, found val=0.6 test=0.45"),
        (0.9, 0.3, f"data.split: {SUM_RULE}, found val=0.9 test=0.3"),
        (0.0, 1.0, "data.split.test: expected less than 1, found 1.0"),
    ],
)
def test_split_must_leave_training_rows(val: float, test: float, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(IRIS, [f"data.split.val={val}", f"data.split.test={test}"])
    assert expected in str(info.value)


def test_split_just_under_one_is_accepted() -> None:
    config = load_config(IRIS, ["data.split.val=0.5", "data.split.test=0.49"])
    assert config.data.split.val + config.data.split.test < 1


def test_split_group_and_time_are_exclusive() -> None:
    with pytest.raises(ConfigError, match="choose one of 'group' and 'time', found both"):
        load_config(IRIS, ["data.split.group=g", "data.split.time=t"])


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_good_devices(device: str) -> None:
    assert load_config(IRIS, [f"train.device={device}"]).train.device == device


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "tpu", "cpu0", ""])
def test_bad_device_is_rejected(device: str) -> None:
    with pytest.raises(ConfigError, match=rf"train\.device: .*pattern.*found '{device}'"):
        load_config({**IRIS, "train": {"device": device}})


@pytest.mark.parametrize("name", ["exp-1", "Exp_2.v3", "0"])
def test_good_experiment_names(name: str) -> None:
    assert load_config({**IRIS, "experiment": name}).experiment == name


@pytest.mark.parametrize("name", ["has space", "-lead", ".hidden", "a/b", "", "ünï"])
def test_bad_experiment_name_is_rejected(name: str) -> None:
    with pytest.raises(ConfigError, match=r"experiment: .*pattern"):
        load_config({**IRIS, "experiment": name})


def test_assignment_is_validated() -> None:
    config = load_config(IRIS)
    with pytest.raises(ValidationError):
        config.train.epochs = 0


# --- serialisation ----------------------------------------------------------------------------


def _busy_config(tmp_path: Path) -> Config:
    return load_config(
        {
            "experiment": "round-trip",
            "data": {
                "path": str(tmp_path / "d.csv"),
                "target": "label",
                "drop": ["id"],
                "categorical": ["color"],
                "split": {"val": 0.2, "test": 0.1, "group": "g"},
            },
            "model": {"hidden": [5, 3], "embedding": {"rule": "fixed", "dim": 2}},
            "train": {
                "precision": 32,
                "grad_clip": 0.5,
                "optimizer": {"betas": [0.8, 0.95], "lr": "3e-4"},
                "checkpoint": {"every_n_steps": 10},
            },
            "track": {"enabled": False, "uri": "file:./mlruns"},
            "eval": {"confidence": 0.9},
        }
    )


def test_to_yaml_round_trip(tmp_path: Path) -> None:
    config = _busy_config(tmp_path)
    path = tmp_path / "saved" / "config.yaml"
    path.parent.mkdir()
    path.write_text(config.to_yaml())

    reloaded = load_config(path)

    assert reloaded == config
    assert reloaded.to_yaml() == config.to_yaml()
    assert load_config(config) == config
    assert yaml.safe_load(config.to_yaml()) == config.to_dict()


def test_flat_keys(tmp_path: Path) -> None:
    flat = _busy_config(tmp_path).flat()

    assert flat["train.optimizer.lr"] == pytest.approx(3e-4)
    assert flat["train.optimizer.betas"] == [0.8, 0.95]
    assert flat["model.hidden"] == [5, 3]
    assert flat["model.embedding.dim"] == 2
    assert flat["data.split.group"] == "g"
    assert flat["track.uri"] == "file:./mlruns"
    assert flat["train.precision"] == "32"
    assert not any(isinstance(v, dict) for v in flat.values())
    # One key per leaf field of the schema, nothing more, nothing less; the optional tune
    # section is None here, one key, and so are the optional track.register, eval.cv and
    # train.profile.
    assert flat["tune"] is None and flat["track.register"] is None and flat["eval.cv"] is None
    assert flat["train.profile"] is None
    optional = [TuneConfig, RegisterConfig, CVConfig, ProfileConfig]
    assert len(flat) == _leaves(Config) - sum(_leaves(section) - 1 for section in optional)


# --- through the CLI --------------------------------------------------------------------------


def _table_without_label(tmp_path: Path) -> Path:
    path = tmp_path / "nolabel.csv"
    make_table("binary", rows=20).drop(columns=["label"]).rename(
        columns={"x1": "feature_a"}
    ).to_csv(path, index=False)
    return path


def _header_only(tmp_path: Path) -> Path:
    path = tmp_path / "header.csv"
    make_table("binary", rows=20).head(0).to_csv(path, index=False)
    return path


def _empty_target(tmp_path: Path) -> Path:
    path = tmp_path / "empty_target.csv"
    frame = make_table("binary", rows=20)
    frame["label"] = np.nan
    frame.to_csv(path, index=False)
    return path


def _binary(tmp_path: Path) -> Path:
    path = tmp_path / "model.pt"
    path.write_bytes(bytes(range(256)))
    return path


def _tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.csv"
    make_table("binary", rows=40).groupby("label").head(1).to_csv(path, index=False)
    return path


# Each case: (how to build the command's arguments, text the error must contain).
CliCase = Callable[[Path, Callable[..., Path], Callable[..., Path]], list[Any]]
CLI_CASES: dict[str, tuple[CliCase, list[str]]] = {
    "unknown-key": (
        lambda tmp, table, cfg: [cfg(table(), train={"optimzer": {"lr": 0.1}})],
        ["config.yaml: train.optimzer: unknown key", "did you mean 'optimizer'"],
    ),
    "bad-override-value": (
        lambda tmp, table, cfg: [cfg(table()), "train.epochs=many"],
        ["command line: train.epochs", "found 'many'"],
    ),
    "malformed-override": (
        lambda tmp, table, cfg: [cfg(table()), "train.epochs"],
        ["override 'train.epochs' must look like key.path=value"],
    ),
    "missing-config": (
        lambda tmp, table, cfg: [tmp / "nope.yaml"],
        ["config file not found", "nope.yaml"],
    ),
    "not-a-mapping": (
        lambda tmp, table, cfg: [_write_yaml(tmp / "list.yaml", "- 1\n- 2\n")],
        ["list.yaml: expected a mapping at the top level, found a list"],
    ),
    "invalid-yaml": (
        lambda tmp, table, cfg: [_write_yaml(tmp / "broken.yaml", "data:\n  path: [x\n")],
        ["broken.yaml: not valid YAML", "line"],
    ),
    "binary-config": (
        lambda tmp, table, cfg: [_binary(tmp)],
        ["model.pt: not a YAML text file"],
    ),
    "missing-data-file": (
        lambda tmp, table, cfg: [cfg(tmp / "absent.csv")],
        ["data file not found", "absent.csv"],
    ),
    "missing-target": (
        lambda tmp, table, cfg: [cfg(_table_without_label(tmp))],
        ["nolabel.csv: target column 'label' not found", "feature_a", "color"],
    ),
    "header-only": (
        lambda tmp, table, cfg: [cfg(_header_only(tmp))],
        ["header.csv", "empty (0 rows)"],
    ),
    "empty-target": (
        lambda tmp, table, cfg: [cfg(_empty_target(tmp))],
        ["empty_target.csv", "every row's target 'label' is missing"],
    ),
    "too-few-rows": (
        lambda tmp, table, cfg: [cfg(_tiny(tmp))],
        ["tiny.csv", "cannot split 2 rows"],
    ),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_user_errors_exit_2_without_traceback(
    case: str,
    tmp_path: Path,
    cli: Callable[..., Any],
    table_csv: Callable[..., Path],
    write_config: Callable[..., Path],
) -> None:
    build, pieces = CLI_CASES[case]
    result = cli("train", *build(tmp_path, table_csv, write_config))

    assert result.code == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.lstrip().startswith("error: ") or "\nerror: " in result.stderr
    for piece in pieces:
        assert piece in result.stderr
