"""Shared by the report tests: tiny runs to train, and a reader of a report's embedded images."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

from tests.conftest import config_dict, make_table

import mlsmith

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The card section the binary run is trained with, to find again in MODEL_CARD.md.
CARD = {
    "description": "Predicts yes/no from two measurements and a colour.",
    "intended_use": "Unit tests of the report writer.",
    "owners": ["ml-platform team"],
    "license": "Apache-2.0",
}


def train_tabular(root: Path, kind: str, **sections: Any) -> Path:
    """Train a fast run (see ``config_dict``) on ``make_table(kind)`` under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    csv = root / f"{kind}.csv"
    make_table(kind).to_csv(csv, index=False)
    run = mlsmith.train(config_dict(csv, root / "runs", **sections), progress=False)
    return run.path


def png_payloads(html: str) -> list[bytes]:
    """The decoded bytes of every ``<img>`` data URI in ``html``."""
    sources = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    return [base64.b64decode(source, validate=True) for source in sources]
