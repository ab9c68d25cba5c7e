"""The JSON codec the server parses requests and writes answers with (orjson)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mlsmith.serving.app import new_request_id
from mlsmith.serving.protocol import ProtocolError, dump_json, load_json


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"[" * 2000 + b"]" * 2000, "depth"),
        (b'{"a": "\\ud800"}', "surrogate"),
        (b'{"a": NaN}', "unexpected character"),
        (b'{"a": 1e400}', "infinity"),
        (b"\xff", "UTF-8"),
        (b"", "JSON"),
    ],
)
def test_what_is_not_json_is_a_400_naming_why(body: bytes, why: str) -> None:
    with pytest.raises(ProtocolError) as error:
        load_json(body)
    assert error.value.status == 400
    assert "not valid JSON" in error.value.message and why in error.value.message


def test_an_integer_past_64_bits_arrives_as_a_float_an_int_input_refuses() -> None:
    value = load_json(b'{"a": 123456789012345678901234567890}')["a"]
    assert isinstance(value, float) and value == pytest.approx(1.2345678901234568e29)


def test_answers_carry_numpy_values_and_nan_as_null() -> None:
    text = dump_json(
        {"x": np.float32(1.5), "y": np.array([1.0, math.nan]), "z": [math.inf], "n": np.int64(3)}
    )
    assert text == b'{"x":1.5,"y":[1.0,null],"z":[null],"n":3}'


def test_request_ids_are_unique_and_fit_for_headers() -> None:
    ids = [new_request_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and all(c in "0123456789abcdef" for c in i) for i in ids)
