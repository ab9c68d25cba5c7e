"""What every config section shares: the strict base class, common types and small helpers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

Mode = Literal["auto", "min", "max"]
Task = Literal["auto", "binary", "multiclass", "regression", "ranking"]
BUILTIN_PREFIX = "sklearn:"


class Section(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are validated."""

    # Numbers where text is expected (`experiment: 2024`, an override `data.target=1`) are read
    # as text, as YAML users expect; without this Pydantic rejects them.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, coerce_numbers_to_str=True)


def is_user_path(value: str) -> bool:
    """Whether a setting names your own code by path (``my_pkg.mod.Name`` or ``file.py:Name``)
    rather than a built-in name such as ``adamw`` (see :mod:`mlsmith.user_code`)."""
    return "." in value or ":" in value


def type_tag(default: str) -> Callable[[Any], str]:
    """A Pydantic discriminator that picks a union member by the section's ``type`` key.

    A section written without ``type`` takes ``default``, so the common case needs no key.
    """

    def tag(value: Any) -> str:
        if isinstance(value, dict):
            return str(value.get("type", default))
        return str(getattr(value, "type", default))

    return tag


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts to dotted keys; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out
