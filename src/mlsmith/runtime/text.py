"""Text inputs: raw texts to token ids with the run's own tokenizer, and ids to model inputs.

The tokenizer travels as its JSON string (``tokenizers``' own format, never a pickle). Encoding
pads to the longest text of the call (at most ``max_length`` tokens); :func:`model_inputs`
trims a batch to its own longest text and adds the attention mask, exactly as training batches
are built, so a package sees what the network saw in training.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import MissingExtraError
from .frames import require_columns

if TYPE_CHECKING:
    import pandas as pd
    from tokenizers import Tokenizer

# Padding tokens of common pretrained tokenizers, tried in order when a tokenizer names none.
PAD_CANDIDATES = ("[PAD]", "<pad>", "<PAD>", "[pad]", "<|padding|>")


def tokenizers_module() -> Any:
    """The ``tokenizers`` package, or a MissingExtraError saying how to install it."""
    try:
        import tokenizers
    except ImportError:
        raise MissingExtraError("tokenizers", "text", "Text data") from None
    return tokenizers


def tokenizer_from_json(text: str) -> Tokenizer:
    """A tokenizer saved with a run (``Tokenizer.to_str()``)."""
    tokenizer: Tokenizer = tokenizers_module().Tokenizer.from_str(text)
    return tokenizer


def pad_id(tokenizer: Tokenizer) -> int:
    """The id padding is stored with: the tokenizer's padding token if it has one, else 0.

    Models never read it (they use the attention mask); it only fills the stored matrix.
    """
    padding = tokenizer.padding
    if padding and "pad_id" in padding:
        return int(padding["pad_id"])
    for token in PAD_CANDIDATES:
        found = tokenizer.token_to_id(token)
        if found is not None:
            return int(found)
    return 0


def texts_of(column: pd.Series) -> list[str]:
    """Cell values as text; missing cells (NaN, None, NA) are the empty text."""
    return column.astype(object).where(column.notna(), "").astype(str).tolist()


class TextEncoder:
    """A fitted tokenizer, the text column it reads and the longest text it keeps."""

    def __init__(self, *, tokenizer: str, text_column: str, max_length: int) -> None:
        self.text_column = text_column
        self.max_length = max_length
        self.tokenizer = tokenizer_from_json(tokenizer)
        self.tokenizer.no_padding()  # padding is per batch (model_inputs)
        self.tokenizer.enable_truncation(max_length)
        self.pad_id = pad_id(self.tokenizer)

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Texts to {'input_ids': int32 (n, width), 'lengths': int32 (n,)}.

        ``width`` is the longest text's token count (at least 1); shorter rows are padded.
        """
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int32, count=len(texts))
        width = max(int(lengths.max(initial=0)), 1)
        ids = np.full((len(texts), width), self.pad_id, dtype=np.int32)
        flat = np.fromiter(
            (i for e in encodings for i in e.ids), dtype=np.int32, count=int(lengths.sum())
        )
        # Row-major boolean assignment fills each row's first `length` cells in order.
        ids[np.arange(width) < lengths[:, None]] = flat
        return {"input_ids": ids, "lengths": lengths}

    def transform(self, frame: pd.DataFrame, source: str = "input") -> dict[str, np.ndarray]:
        """Raw rows to token ids; a missing text is the empty text."""
        require_columns(frame, [self.text_column], source, "text")
        return self.encode(texts_of(frame[self.text_column]))


def model_inputs(encoded: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Encoded rows to what a text network reads: ids int64 (n, T) trimmed to the rows' longest
    text and the attention mask bool (n, T), True for real tokens."""
    lengths = encoded["lengths"]
    width = max(int(lengths.max()), 1) if len(lengths) else 1
    ids = encoded["input_ids"][:, :width].astype(np.int64)
    mask = np.arange(width) < lengths[:, None]
    return {"input_ids": ids, "attention_mask": mask}
