"""Loading a config: YAML files (repeated keys refused), ``a.b=value`` overrides, paths made
absolute, and Pydantic's errors turned into lines that name the file, the key and the fix.

Paths written in a YAML file are relative to that file; paths given as overrides on the command
line are relative to the working directory. Both are stored absolute in the resolved config.
"""

from __future__ import annotations

import os
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Union

import yaml
from pydantic import BaseModel, ValidationError

from mlsmith.config.base import BUILTIN_PREFIX
from mlsmith.config.experiment import Config
from mlsmith.config.families import TAGGED_SECTIONS
from mlsmith.errors import ConfigError, did_you_mean

_PATH_KEYS: tuple[tuple[str, ...], ...] = (
    ("data", "path"),
    ("data", "val_path"),
    ("data", "test_path"),
    ("data", "tokenizer", "path"),
)


def load_config(
    source: str | Path | dict[str, Any] | Config, overrides: list[str] | None = None
) -> Config:
    """Build a validated :class:`Config` from a YAML path, a dict or a Config, plus overrides.

    Raises ConfigError naming the file, the key path, what was expected and what was found.
    """
    overrides = list(overrides or [])
    if isinstance(source, Config):
        raw: dict[str, Any] = source.to_dict()
        origin = "config"
    elif isinstance(source, dict):
        raw = _deep_copy(source)
        origin = "config"
    else:
        path = Path(source)
        raw = read_yaml_mapping(path)
        origin = str(path)
        raw.setdefault("experiment", _experiment_name(path.stem))
        _absolutize_paths(raw, path.parent)

    overridden = apply_overrides(raw, overrides)
    _absolutize_paths(raw, Path.cwd())
    # Stored absolute, so a run resumed or re-evaluated from elsewhere writes to the same place.
    if isinstance(raw.get("output_dir", "runs"), (str, Path)):
        raw["output_dir"] = str(Path(raw.get("output_dir", "runs")).resolve())
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, origin, overridden)) from None


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key repeated in one mapping is an error.

    YAML says keys are unique, but PyYAML keeps the last value silently: a second ``train:``
    block would quietly replace the first.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key '{key}' appears twice in one mapping (lines {seen[key]} and {line}); "
                    "keep one",
                    key_node.start_mark,
                )
            if isinstance(key, (str, int, float, bool)):
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str) -> Any:
    """Parse YAML text safely, refusing repeated keys."""
    return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no arbitrary objects


def _yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's complaint on one line, with the line and column it points at."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem:
        mark = error.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        context = f" ({error.context})" if error.context else ""
        return f"{where}{error.problem}{context}"
    return " ".join(str(error).split())


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """Read a YAML file whose top level must be a mapping."""
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.y*ml"))[:5]
        hint = f" such as {path / found[0]}" if found else ""
        raise ConfigError(f"{path} is a folder, not a config file; pass a YAML file{hint}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = parse_yaml(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(exc)}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a YAML text file (it is not valid UTF-8)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    if loaded is None:
        raise ConfigError(f"{path}: the file is empty; expected a mapping with at least 'data'")
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, found {_kind(loaded)}")
    return loaded


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> set[tuple[str, ...]]:
    """Apply ``a.b=value`` strings to ``raw`` in place; values are parsed as YAML.

    Returns the key paths that were set, so errors can say they came from the command line.
    """
    touched: set[tuple[str, ...]] = set()
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(
                f"override '{item}' must look like key.path=value, e.g. train.lr=3e-4"
            )
        try:
            value = parse_yaml(text) if text.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"override '{item}': value is not valid YAML: {_yaml_problem(exc)}"
            ) from None
        parts = tuple(key.split("."))
        node = raw
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise ConfigError(
                    f"override '{item}': '{where}' holds {_kind(child)}, not a section"
                )
            node = child
        node[parts[-1]] = value
        touched.add(parts)
    return touched


def format_validation_error(
    exc: ValidationError, origin: str, overridden: set[tuple[str, ...]] | None = None
) -> str:
    """Turn Pydantic's errors into lines of 'where: key: expected ..., found ...'."""
    overridden = overridden or set()
    lines = []
    for err in exc.errors():
        loc, tagged = _untag(tuple(str(p) for p in err["loc"]))
        key = ".".join(loc) or "(top level)"
        kind = err["type"]
        where = _blame(loc, kind, overridden, origin)
        if kind == "union_tag_invalid":
            choices = (
                ", ".join(TAGGED_SECTIONS[loc[0]]) if loc and loc[0] in TAGGED_SECTIONS else ""
            )
            found = err["ctx"].get("tag") if err.get("ctx") else None
            lines.append(f"{where}: {key}.type: expected one of {choices}, found {found!r}")
        elif kind == "extra_forbidden":
            known = _fields_at(tagged, loc[1:-1]) if tagged else _fields_at(Config, loc[:-1])
            hint = did_you_mean(loc[-1], known)
            choices = ", ".join(sorted(known))
            lines.append(f"{where}: {key}: unknown key{hint}; valid keys here: {choices}")
        elif kind == "missing":
            lines.append(f"{where}: {key}: required key is missing")
        else:
            msg = err["msg"]
            if msg.startswith("Input should be "):
                msg = "expected " + msg[len("Input should be ") :]
            elif msg.startswith("Value error, "):
                msg = msg[len("Value error, ") :]
            if isinstance(err["input"], dict):  # a whole section: its keys say enough
                lines.append(f"{where}: {key + ': ' if loc else ''}{msg}")
            else:
                lines.append(f"{where}: {key}: {msg}, found {err['input']!r}")
    head = "invalid configuration:" if len(lines) > 1 else "invalid configuration: "
    return head + ("\n  " + "\n  ".join(lines) if len(lines) > 1 else lines[0])


def _blame(loc: tuple[str, ...], kind: str, overridden: set[tuple[str, ...]], origin: str) -> str:
    """Where the faulty value came from: the command line, or the file (and why, when an
    override of a section's ``type`` made the file's keys wrong)."""
    if _from_overrides(loc, kind, overridden):
        return "command line"
    retyped = [s for s in TAGGED_SECTIONS if (s, "type") in overridden]
    if not loc and retyped:
        return "command line"  # e.g. model.type=cnn against tabular data
    if loc and loc[0] in retyped:
        return f"{origin} (with {loc[0]}.type changed on the command line)"
    return origin


def _from_overrides(loc: tuple[str, ...], kind: str, overridden: set[tuple[str, ...]]) -> bool:
    """Whether the value at ``loc`` was set on the command line.

    True when an override set it or a section holding it (``model.hidden=[64,0]`` fails at
    ``model.hidden.1``), and for an unknown key that an override created (``train.optimzer.lr=1``
    fails at ``train.optimzer``).
    """
    for path in overridden:
        if loc[: len(path)] == path:
            return True
        if kind in ("extra_forbidden", "union_tag_invalid") and path[: len(loc)] == loc:
            return True
    return False


def _untag(loc: tuple[str, ...]) -> tuple[tuple[str, ...], type[BaseModel] | None]:
    """Drop the union tag Pydantic puts in error locations ('data', 'image', 'x' -> 'data.x');
    also return the section class the tag chose."""
    if len(loc) >= 2 and loc[0] in TAGGED_SECTIONS and loc[1] in TAGGED_SECTIONS[loc[0]]:
        return (loc[0], *loc[2:]), TAGGED_SECTIONS[loc[0]][loc[1]]
    return loc, None


def _fields_at(model: type[BaseModel], loc: tuple[str, ...]) -> list[str]:
    """Keys (as YAML spells them: aliases where set) of the section found by following ``loc``
    from ``model``."""
    current: type[BaseModel] | None = model
    for part in loc:
        fields = _keys(current) if current else {}
        if current is None or part not in fields:
            return []
        current = _section_type(current.model_fields[fields[part]].annotation)
    return list(_keys(current)) if current else []


def _keys(model: type[BaseModel]) -> dict[str, str]:
    """YAML key -> field name."""
    return {info.alias or name: name for name, info in model.model_fields.items()}


def _section_type(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) is Annotated:
        return _section_type(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _section_type(arg)
            if found:
                return found
    return None


def _absolutize_paths(raw: dict[str, Any], base: Path) -> None:
    for *sections, key in _PATH_KEYS:
        block: Any = raw
        for section in sections:
            block = block.get(section) if isinstance(block, dict) else None
        if not isinstance(block, dict):
            continue
        value = block.get(key)
        if isinstance(value, str) and value and not value.startswith(BUILTIN_PREFIX):
            path = Path(value).expanduser()
            block[key] = str(path if path.is_absolute() else (base / path).resolve())


def _experiment_name(stem: str) -> str:
    # ASCII only: the experiment pattern rejects letters such as 'é' that isalnum() accepts.
    cleaned = "".join(
        c if (c.isascii() and c.isalnum()) or c in "._-" else "-" for c in stem
    ).lstrip("._-")
    return cleaned or "default"


def _deep_copy(tree: dict[str, Any]) -> dict[str, Any]:
    """Copy nested dicts; Path values (natural in Python dicts) become the strings YAML gives."""
    return {
        k: _deep_copy(v)
        if isinstance(v, dict)
        else os.fspath(v)
        if isinstance(v, os.PathLike)
        else v
        for k, v in tree.items()
    }


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__
    )
