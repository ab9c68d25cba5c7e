"""Objects a config names by path: your own network class, loss function or optimizer class.

A path is a dotted import path (``my_pkg.nets.MyNet``: the module ``my_pkg.nets``, importable
from where mlsmith runs, and its attribute ``MyNet``) or a file and a name
(``nets.py:MyNet``, relative to the working directory or absolute). A path that does not
import, names nothing, or names an object of the wrong kind is a ConfigError naming the config
key that holds it (exit 2).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlsmith.errors import ConfigError


def load_object(path: str, key: str) -> Any:
    """The object ``path`` names (see the module); ``key`` is the config key, for errors."""
    if ":" in path:
        file, _, name = path.rpartition(":")
        module = _module_from_file(Path(file), key, path)
    else:
        module_name, _, name = path.rpartition(".")
        if not module_name or not name:
            raise ConfigError(
                f"{key}: '{path}' is not a path to an object; write module.attribute "
                "(my_pkg.nets.MyNet) or file.py:attribute (nets.py:MyNet)"
            )
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(
                f"{key}: cannot import '{module_name}' ({exc}); is it installed, or on "
                "PYTHONPATH? A file works too: path/to/file.py:Name"
            ) from None
    if not name or not hasattr(module, name):
        raise ConfigError(f"{key}: '{path}' names nothing: {module.__name__} has no '{name}'")
    return getattr(module, name)


def load_class(path: str, key: str, base: type, what: str) -> type:
    """The class ``path`` names, which must subclass ``base`` (``what`` describes it)."""
    found = load_object(path, key)
    if not (isinstance(found, type) and issubclass(found, base)):
        raise ConfigError(
            f"{key}: '{path}' is {_kind(found)}, not {what} (a subclass of "
            f"{base.__module__}.{base.__qualname__})"
        )
    return found


def load_function(path: str, key: str, what: str) -> Callable[..., Any]:
    """The callable ``path`` names (``what`` describes the signature expected)."""
    found = load_object(path, key)
    if not callable(found) or isinstance(found, type):
        raise ConfigError(f"{key}: '{path}' is {_kind(found)}, not {what}")
    function: Callable[..., Any] = found
    return function


def _module_from_file(file: Path, key: str, path: str) -> Any:
    if file.suffix != ".py" or not file.is_file():
        raise ConfigError(f"{key}: '{path}': {file} is not a Python file")
    resolved = file.resolve()
    # One module object per file, however many times a config names it (a checkpoint's class
    # must be the class the network was built from).
    name = f"mlsmith_user_{abs(hash(str(resolved)))}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{key}: '{path}': {file} cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's file failed to run: say where, keep going no further
        del sys.modules[name]
        raise ConfigError(f"{key}: importing {file} failed: {type(exc).__name__}: {exc}") from None
    return module


def _kind(value: Any) -> str:
    if isinstance(value, type):
        return f"the class {value.__qualname__}"
    return f"a {type(value).__name__}"
