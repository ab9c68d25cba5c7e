"""The family table (mlsmith.config.families) and everything that must agree with it.

Family and data-kind names are written in one table; the Pydantic unions are written out by
hand so mypy can type them. These tests fail when the two drift apart, when an implementation
path does not import, or when a section's ``type`` does not match its row.
"""

from __future__ import annotations

import subprocess
import sys
import typing
from typing import Any

import pytest
from pydantic import BaseModel, Discriminator, Tag

from mlsmith import families
from mlsmith.config import (
    DATA_CONFIGS,
    FAMILIES,
    KINDS,
    MODEL_CONFIGS,
    MODELS_FOR_DATA,
    TAGGED_SECTIONS,
    AnyDataConfig,
    Config,
    ModelConfig,
    load_config,
)
from mlsmith.errors import ConfigError
from mlsmith.models.base import Model

# Enough of a data section for each kind to validate; nothing is read.
DATA: dict[str, dict[str, Any]] = {
    "tabular": {"path": "sklearn:iris", "target": "target"},
    "image": {"type": "image", "path": "images"},
    "text": {"type": "text", "path": "texts.csv", "target": "label"},
    "timeseries": {
        "type": "timeseries",
        "path": "sales.csv",
        "target": "sales",
        "time_column": "month",
        "horizon": 6,
    },
    "segmentation": {"type": "segmentation", "path": "images", "masks": "masks"},
    "detection": {"type": "detection", "path": "images", "annotations": "boxes.json"},
}


def _union(annotated: Any) -> tuple[dict[str, type], Discriminator]:
    """The members of a tagged union, by tag, and its discriminator."""
    union, discriminator = typing.get_args(annotated)
    members = {}
    for member in typing.get_args(union):
        cls, tag = typing.get_args(member)
        assert isinstance(tag, Tag)
        members[tag.tag] = cls
    assert isinstance(discriminator, Discriminator)
    return members, discriminator


def _type_literal(cls: type[BaseModel]) -> tuple[Any, ...]:
    return typing.get_args(cls.model_fields["type"].annotation)


# --- the unions and the table agree -----------------------------------------------------------


def test_model_union_holds_exactly_the_table() -> None:
    members, _ = _union(ModelConfig)

    assert list(members) == list(FAMILIES)
    assert members == {name: family.config for name, family in FAMILIES.items()}


def test_data_union_holds_exactly_the_table() -> None:
    members, _ = _union(AnyDataConfig)

    assert list(members) == list(KINDS)
    assert members == {name: kind.config for name, kind in KINDS.items()}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_type_literal_is_its_key(name: str) -> None:
    section = FAMILIES[name].config

    assert _type_literal(section) == (name,)
    assert section.model_fields["type"].default == name


@pytest.mark.parametrize("name", sorted(KINDS))
def test_data_kind_type_literal_is_its_key(name: str) -> None:
    assert _type_literal(KINDS[name].config) == (name,)


def test_union_defaults_agree_with_the_table() -> None:
    _, data_tag = _union(AnyDataConfig)
    _, model_tag = _union(ModelConfig)
    assert callable(data_tag.discriminator) and callable(model_tag.discriminator)
    default_data = data_tag.discriminator({})
    default_model = KINDS[default_data].default_model

    # A section without `type` is tabular data and that kind's default model.
    assert model_tag.discriminator({}) == default_model
    factory = Config.model_fields["model"].default_factory
    assert factory is not None and factory().type == default_model


# --- the derived views ------------------------------------------------------------------------


def test_families_module_is_a_view_of_the_table() -> None:
    assert {n: f.implementation for n, f in FAMILIES.items()} == families.MODEL_FAMILIES
    assert {n: k.module for n, k in KINDS.items()} == families.DATA_KINDS


def test_config_lookups_are_views_of_the_table() -> None:
    assert {n: f.config for n, f in FAMILIES.items()} == MODEL_CONFIGS
    assert {n: k.config for n, k in KINDS.items()} == DATA_CONFIGS
    assert TAGGED_SECTIONS == {"data": DATA_CONFIGS, "model": MODEL_CONFIGS}


def test_every_family_works_on_known_data_and_every_kind_has_its_default() -> None:
    for name, family in FAMILIES.items():
        assert family.data and set(family.data) <= set(KINDS), name
    for kind, entry in KINDS.items():
        assert kind in FAMILIES[entry.default_model].data, kind
        assert MODELS_FOR_DATA[kind][0] == entry.default_model
        assert set(MODELS_FOR_DATA[kind]) == {n for n, f in FAMILIES.items() if kind in f.data}
        assert len(set(MODELS_FOR_DATA[kind])) == len(MODELS_FOR_DATA[kind])


def test_packages_come_from_the_family_and_the_data_kind() -> None:
    config = load_config({"data": DATA["image"], "model": {"type": "torchvision"}})

    assert families.packages(config) == ("torchvision", "torchvision", "pillow")
    assert families.packages(load_config({"data": DATA["tabular"]})) == ()
    assert families.packages(
        load_config({"data": DATA["tabular"], "model": {"type": "lightgbm"}})
    ) == ("lightgbm",)


# --- the implementations ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_implementation_imports_and_is_a_model(name: str) -> None:
    if FAMILIES[name].data == ("timeseries",):  # forecasts only: no Model to fit or load
        forecaster = families.forecaster(name)
        assert forecaster.family == name
        with pytest.raises(ConfigError, match="is a forecaster"):
            families.model_family(name)
        return
    cls = families.model_family(name)

    assert isinstance(cls, type) and issubclass(cls, Model)
    assert cls.family == name


@pytest.mark.parametrize("name", sorted(KINDS))
def test_data_kind_module_imports_and_prepares(name: str) -> None:
    module = families.data_kind(name)

    assert callable(module.prepare)
    assert callable(module.load_preprocessor)


# --- configs use the table --------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_data_kind_gets_its_default_model(kind: str) -> None:
    config = load_config({"data": DATA[kind]})

    assert config.data.type == kind
    assert isinstance(config.model, FAMILIES[KINDS[kind].default_model].config)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_family_loads_on_each_of_its_data_kinds(name: str) -> None:
    # A custom network has no default: its section names the class.
    required = {"module": "my_pkg.nets.MyNet"} if name == "custom" else {}
    for kind in FAMILIES[name].data:
        config = load_config({"data": DATA[kind], "model": {"type": name, **required}})

        assert isinstance(config.model, FAMILIES[name].config)


def test_a_family_on_the_wrong_data_names_the_right_ones() -> None:
    with pytest.raises(ConfigError, match="use one of: cnn, torchvision"):
        load_config({"data": DATA["image"], "model": {"type": "mlp"}})


def test_unknown_names_suggest_a_registered_one() -> None:
    with pytest.raises(ConfigError, match=r"model\.type: unknown value 'mpl'.*mlp"):
        families.model_family("mpl")
    with pytest.raises(ConfigError, match=r"data\.type: unknown value 'imag'.*image"):
        families.data_kind("imag")
    with pytest.raises(ConfigError, match=r"model\.type: expected one of mlp, cnn"):
        load_config({"data": DATA["tabular"], "model": {"type": "mlpp"}})


def test_the_table_imports_no_implementation() -> None:
    # `mlsmith --help` reads the config; it must not pay for torch.
    code = (
        "import sys, mlsmith.config, mlsmith.families; "
        "heavy = {'torch', 'lightgbm', 'xgboost', 'tokenizers'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
