"""Text classification data: a text column and a label column, tokenized into padded id matrices.

The tokenizer is trained on the training split only (or loaded from a local file) and saved
inside ``preprocessing.json`` as its JSON string, so a run stays one readable file and
prediction takes raw text. Each split is stored as an int32 matrix of token ids padded to its
longest text (at most ``max_length``) plus the lengths; :class:`TextBatches` trims every batch to
its own longest text and adds the attention mask, and on training epochs groups texts of similar
length so padding stays small.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlsmith.config import Config, TextDataConfig
from mlsmith.data.base import (
    PreparedData,
    Preprocessor,
    Split,
    drop_missing_target,
    warn_missing_classes,
)
from mlsmith.data.batches import Batch, BatchOptions, TensorBatches
from mlsmith.data.splits import split_frames
from mlsmith.data.tables import fingerprint, read_table
from mlsmith.data.tokenizer import load_tokenizer_file, train_tokenizer, vocabulary_size
from mlsmith.errors import DataError
from mlsmith.runtime.frames import require_columns
from mlsmith.runtime.text import TextEncoder, texts_of
from mlsmith.tasks import Task, fit_task, infer_task

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from tokenizers import Tokenizer

log = logging.getLogger(__name__)

# Training batches are sorted by length within windows of this many batches (then the batches
# are shuffled): padding shrinks to a few tokens while each batch still mixes random texts.
BUCKET_BATCHES = 50


class TextPreprocessor(Preprocessor):
    """Raw texts to token ids with a fitted (or loaded) tokenizer, truncated to ``max_length``."""

    kind = "text"

    def __init__(
        self,
        *,
        target: str,
        task: Task,
        text_column: str,
        max_length: int,
        tokenizer: str,
        tokenizer_source: str,
    ) -> None:
        super().__init__(target=target, task=task)
        self.text_column = text_column
        self.max_length = max_length
        # Where the tokenizer came from: "trained: wordpiece" or the file it was loaded from.
        self.tokenizer_source = tokenizer_source
        self._tokenizer_json = tokenizer
        # The encoding itself, shared with every model package (which has no mlsmith).
        self.encoder = TextEncoder(
            tokenizer=tokenizer, text_column=text_column, max_length=max_length
        )
        self.tokenizer: Tokenizer = self.encoder.tokenizer
        self.pad_id = self.encoder.pad_id
        self.vocab_size = vocabulary_size(self.tokenizer)

    @classmethod
    def fit(cls, train: pd.DataFrame, *, data: TextDataConfig, task: Task) -> TextPreprocessor:
        """Train the tokenizer on the training rows' texts, or load the configured one."""
        cfg = data.tokenizer
        if cfg.path:
            tokenizer, file = load_tokenizer_file(cfg.path)
            source = str(file)
        else:
            tokenizer = train_tokenizer(texts_of(train[data.text_column]), cfg)
            source = f"trained: {cfg.kind}"
        # Saved without padding or truncation settings of its own: both are applied here.
        tokenizer.no_padding()
        tokenizer.no_truncation()
        return cls(
            target=data.target,
            task=task,
            text_column=data.text_column,
            max_length=data.max_length,
            tokenizer=tokenizer.to_str(),
            tokenizer_source=source,
        )

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Texts to {'input_ids': int32 (n, width), 'lengths': int32 (n,)}, padded to the
        longest."""
        return self.encoder.encode(texts)

    def transform(self, frame: pd.DataFrame, source: str = "input") -> dict[str, np.ndarray]:
        """Raw rows to token ids; a missing text is the empty text."""
        return self.encoder.transform(frame, source)

    def batches(
        self, inputs: dict[str, np.ndarray], target: np.ndarray | None, options: BatchOptions
    ) -> TensorBatches:
        return TextBatches(inputs, target, options)

    def model_inputs(self) -> dict[str, Any]:
        return {"vocab_size": self.vocab_size, "max_length": self.max_length}

    def fitted_state(self) -> dict[str, Any]:
        return {
            "text_column": self.text_column,
            "max_length": self.max_length,
            "tokenizer_source": self.tokenizer_source,
            "tokenizer": self._tokenizer_json,
        }


class TextBatches(TensorBatches):
    """Batches of token ids trimmed to the batch's longest text, with an attention mask.

    Shuffled epochs are length-bucketed: a random permutation (or the balanced sampler's draw) is
    cut into windows of ``BUCKET_BATCHES`` batches, each window is sorted by length, and the full
    batches are then shuffled (the partial one stays last, so batches stay aligned with the
    Trainer's slices). Every draw comes from ``self.generator``, so an epoch's order is
    reproducible and resumable.
    """

    def __init__(
        self,
        inputs: dict[str, np.ndarray],
        target: np.ndarray | None,
        options: BatchOptions,
        *,
        bucket_batches: int = BUCKET_BATCHES,
    ) -> None:
        import torch

        super().__init__(inputs, target, options)
        self.bucket_batches = bucket_batches
        # A CPU copy: the permutation is computed on the CPU whatever device holds the data.
        self._lengths = torch.from_numpy(np.asarray(inputs["lengths"], dtype=np.int64))

    def arrange(self, order: torch.Tensor) -> torch.Tensor:
        import torch

        n = len(order)
        size = self.batch_size
        if self.bucket_batches <= 0 or n <= size:
            return order
        # Sort by (window, length); stable, so equal lengths keep their random order.
        window = torch.arange(n) // (size * self.bucket_batches)
        longest = int(self._lengths.max()) + 1
        order = order[torch.argsort(window * longest + self._lengths[order], stable=True)]
        n_full = n // size
        shuffled = torch.randperm(n_full, generator=self.generator)
        full = order[: n_full * size].view(n_full, size)[shuffled].reshape(-1)
        return torch.cat([full, order[n_full * size :]])

    def collate(self, inputs: dict[str, torch.Tensor], target: torch.Tensor) -> Batch:
        import torch

        lengths = inputs["lengths"]
        width = max(int(lengths.max()), 1) if len(lengths) else 1
        ids = inputs["input_ids"][:, :width].long()  # (B, T)
        mask = torch.arange(width, device=ids.device) < lengths[:, None]  # (B, T) True = token
        return {"input_ids": ids, "attention_mask": mask}, target


def prepare(config: Config, *, preprocessor: TextPreprocessor | None = None) -> PreparedData:
    """Read, clean and split the texts; fit the tokenizer on the training split; encode.

    A given ``preprocessor`` (from a run being resumed or evaluated) is used instead of fitting a
    new one; the split is recomputed from the seed and must land on the same rows.
    """
    import pandas as pd

    data = _text_config(config)
    main = _load(data.path, data, role="data")
    val_file = _load(data.val_path, data, role="validation") if data.val_path else None
    test_file = _load(data.test_path, data, role="test") if data.test_path else None

    labelled = pd.concat(
        [f[data.target] for f in (main, val_file, test_file) if f is not None], ignore_index=True
    )
    kind = infer_task(labelled, data.task, data.path)
    if kind == "regression":
        raise DataError(
            f"{data.path}: target '{data.target}' looks like a quantity ({labelled.nunique()} "
            "distinct numbers); text data is classification only: set data.task to binary or "
            "multiclass if these are class labels"
        )
    parts = split_frames(main, val_file, test_file, data, classification=True, seed=config.seed)
    train, val, test = parts.train, parts.val, parts.test

    if preprocessor is None:
        task = fit_task(kind, labelled, train[data.target])
        preprocessor = TextPreprocessor.fit(train, data=data, task=task)
    warn_missing_classes(preprocessor.task, {"train": train, "val": val}, data.target)

    def encode(frame: pd.DataFrame, name: str) -> Split:
        return Split(preprocessor.transform(frame, name), preprocessor.encode_target(frame, name))

    splits = {"train": encode(train, "training split"), "val": encode(val, "validation split")}
    lengths = splits["train"].inputs["lengths"]
    truncated = float(np.mean(lengths >= preprocessor.max_length))
    if truncated > 0.05:
        log.info(
            "%.0f%% of training texts were cut to data.max_length=%d tokens",
            100 * truncated,
            preprocessor.max_length,
        )
    prints = [fingerprint(main)] + [fingerprint(f) for f in (val_file, test_file) if f is not None]
    return PreparedData(
        task=preprocessor.task,
        preprocessor=preprocessor,
        train=splits["train"],
        val=splits["val"],
        test=encode(test, "test split") if len(test) else None,
        fingerprint=prints[0] if len(prints) == 1 else "+".join(prints),
        summary={
            "source": data.path,
            "rows": {"train": len(train), "val": len(val), "test": len(test)},
            "task": preprocessor.task.kind,
            "text_column": data.text_column,
            "tokenizer": preprocessor.tokenizer_source,
            "vocab_size": preprocessor.vocab_size,
            "tokens_per_text": {
                "mean": float(lengths.mean()),
                "p95": float(np.percentile(lengths, 95)),
                "max": int(lengths.max()),
            },
            "truncated_share": truncated,
        },
        frames={"train": train, "val": val, "test": test},
    )


def load_preprocessor(directory: Path) -> TextPreprocessor:
    """The preprocessor saved in a run directory."""
    return TextPreprocessor.load(directory)


def _load(path: str, data: TextDataConfig, role: str) -> pd.DataFrame:
    frame = read_table(path, sep=data.sep)
    if len(frame) == 0:
        raise DataError(f"{path}: the {role} table is empty (0 rows)")
    require_columns(frame, [data.text_column], path, "data.text_column")
    require_columns(frame, [data.target], path, "target")
    if role == "data":
        aside = [c for c in (data.split.group, data.split.time) if c]
        require_columns(frame, aside, path, "data.split")
    frame = drop_missing_target(frame, data.target, path)
    if len(frame) == 0:
        raise DataError(f"{path}: every row's target '{data.target}' is missing")
    return frame.reset_index(drop=True)


def _text_config(config: Config) -> TextDataConfig:
    if not isinstance(config.data, TextDataConfig):  # mlsmith.families routes by data.type
        raise TypeError(f"text data got a data section of type '{config.data.type}'")
    return config.data
