"""Checkpoints: written atomically, read back without unpickling arbitrary objects.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts, so ``torch.load`` runs
with ``weights_only=True``: loading a checkpoint from someone else cannot execute code.
"""

from __future__ import annotations

import pickle
import warnings
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
    if file.stat().st_size == 0:
        raise RunError(
            f"{file}: the checkpoint is empty (0 bytes): it was not written by mlsmith, whose "
            "checkpoints appear whole or not at all; restore it from a copy or train again"
        )
    try:
        with warnings.catch_warnings():
            # A foreign pickle's protocol draws a UserWarning before the refusal below says more.
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch suggests weights_only=False, i.e. running whatever code the file holds: no.
        if "Unsupported global" in str(exc):
            raise RunError(
                f"{file}: not a readable mlsmith checkpoint: it holds Python objects other than "
                "tensors, numbers and text, which mlsmith does not unpickle (that could run code)"
            ) from None
        raise RunError(
            f"{file}: not a readable mlsmith checkpoint (it is not a PyTorch checkpoint file, or "
            "a damaged one); restore it from a copy or train again"
        ) from None
    except Exception as exc:  # torch raises several types for a torn or foreign file
        raise RunError(
            f"{file}: not a readable mlsmith checkpoint ({_reason(exc)}); restore it from a copy "
            "or train again"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise RunError(f"{file}: not an mlsmith checkpoint of format {FORMAT_VERSION}")
    return state


def _reason(error: Exception) -> str:
    """torch's complaint in a few words; its first sentence is the informative part."""
    text = str(error).strip()
    if isinstance(error, RuntimeError) and "zip archive" in text:
        return "the file is truncated or corrupted"
    if not text or isinstance(error, (KeyError, EOFError, ValueError)):
        return "it is not a PyTorch checkpoint file"
    return text.split(". ")[0].splitlines()[0][:200]
