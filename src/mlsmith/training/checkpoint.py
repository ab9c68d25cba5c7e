"""Checkpoints: written atomically, read back without unpickling arbitrary objects.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts, so ``torch.load`` runs
with ``weights_only=True``: loading a checkpoint from someone else cannot execute code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mlsmith.errors import RunError
from mlsmith.files import atomic_path

FORMAT_VERSION = 1
BEST = "best.pt"
LAST = "last.pt"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` through a temporary file and one rename."""
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT_VERSION, **state}, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely; a missing or unreadable file is a :class:`RunError`."""
    file = Path(path)
    if not file.is_file():
        raise RunError(f"checkpoint not found: {file}")
    try:
        state = torch.load(file, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for a torn or foreign file
        raise RunError(f"{file}: not a readable mlsmith checkpoint ({exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise RunError(f"{file}: not an mlsmith checkpoint of format {FORMAT_VERSION}")
    return state
