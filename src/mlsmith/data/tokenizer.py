"""Tokenizers for text data, from the Hugging Face ``tokenizers`` library (the ``[text]`` extra).

Either trained on the training split's texts (WordPiece or BPE, BERT-style normalisation and
pre-tokenisation) or loaded from a local ``tokenizer.json``. Either way the tokenizer travels
with the run as its JSON string (``Tokenizer.to_str()``), never as a pickle.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlsmith.errors import ConfigError
from mlsmith.runtime.text import pad_id as pad_id
from mlsmith.runtime.text import tokenizer_from_json as tokenizer_from_json
from mlsmith.runtime.text import tokenizers_module

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from mlsmith.config import TokenizerConfig

PAD = "[PAD]"
UNK = "[UNK]"
# Marks a piece that continues a word (WordPiece's convention, used for BPE too).
PREFIX = "##"
TOKENIZER_FILE = "tokenizer.json"


def train_tokenizer(texts: Sequence[str], cfg: TokenizerConfig) -> Tokenizer:
    """A WordPiece or BPE tokenizer learned from ``texts`` (the training split only).

    ``[PAD]`` is id 0 and ``[UNK]`` id 1; words never seen in training map to sub-word pieces
    or ``[UNK]``. The same texts give the same tokenizer in every process (see
    :func:`_continuation_tokens`).
    """
    import json

    tk = tokenizers_module()
    # BERT's text cleaning (control characters, CJK spacing), optional lowercasing and accent
    # stripping; then split on whitespace and punctuation.
    normalizer = tk.normalizers.BertNormalizer(lowercase=cfg.lowercase)
    pre_tokenizer = tk.pre_tokenizers.BertPreTokenizer()
    seeded = _continuation_tokens(texts, normalizer, pre_tokenizer)
    special = [PAD, UNK, *seeded]
    if cfg.kind == "wordpiece":
        tokenizer = tk.Tokenizer(tk.models.WordPiece(unk_token=UNK))
        trainer = tk.trainers.WordPieceTrainer(
            vocab_size=cfg.vocab_size,
            min_frequency=cfg.min_frequency,
            special_tokens=special,
            show_progress=False,
        )
    else:
        # "##" marks pieces inside a word, so a word's first piece differs from the same
        # letters in mid-word (as WordPiece does), which keeps whole-word tokens informative.
        tokenizer = tk.Tokenizer(tk.models.BPE(unk_token=UNK, continuing_subword_prefix=PREFIX))
        trainer = tk.trainers.BpeTrainer(
            vocab_size=cfg.vocab_size,
            min_frequency=cfg.min_frequency,
            special_tokens=special,
            continuing_subword_prefix=PREFIX,
            show_progress=False,
        )
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    # The seeded pieces stay ordinary vocabulary entries; as added tokens they would be matched
    # verbatim in raw text ("##e" typed by a user) and skipped when decoding.
    state = json.loads(tokenizer.to_str())
    state["added_tokens"] = [t for t in state["added_tokens"] if t["content"] in (PAD, UNK)]
    trained: Tokenizer = tk.Tokenizer.from_str(json.dumps(state))
    return trained


def _continuation_tokens(texts: Sequence[str], normalizer: Any, pre_tokenizer: Any) -> list[str]:
    """``##c`` for every character ``c`` found inside a word, sorted.

    The trainer creates these pieces while iterating over a hash map of words, so their ids, and
    through tie-breaks between equally frequent merges even the vocabulary, change from one
    process to the next (huggingface/tokenizers#1794). Passing them in first, in a fixed order,
    gives them fixed ids, and training becomes deterministic.
    """
    inner: set[str] = set()
    for text in texts:
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)):
            inner.update(word[1:])
    return [PREFIX + c for c in sorted(inner)]


def load_tokenizer_file(path: str) -> tuple[Tokenizer, Path]:
    """A local Hugging Face tokenizer (a ``tokenizer.json`` or a directory holding one) and the
    file it was read from.

    Relative paths are relative to the working directory. Nothing is downloaded.
    """
    tk = tokenizers_module()
    file = Path(path).expanduser().resolve()
    if file.is_dir():
        file = file / TOKENIZER_FILE
    if not file.is_file():
        raise ConfigError(
            f"data.tokenizer.path: no tokenizer found at {file}; expected a {TOKENIZER_FILE} file "
            "or a directory holding one (as saved by tokenizers or transformers)"
        )
    try:
        tokenizer: Tokenizer = tk.Tokenizer.from_file(str(file))
    except Exception as exc:  # the Rust side raises a bare Exception for a malformed file
        raise ConfigError(
            f"data.tokenizer.path: {file} is not a readable Hugging Face tokenizer ({exc})"
        ) from None
    return tokenizer, file


def vocabulary_size(tokenizer: Tokenizer) -> int:
    """One more than the largest id the tokenizer can produce (added tokens included)."""
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    return max(
        max(vocab.values(), default=-1) + 1, tokenizer.get_vocab_size(with_added_tokens=True)
    )
