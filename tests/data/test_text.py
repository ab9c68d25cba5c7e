"""Tests for mlsmith.data.text and mlsmith.data.tokenizer: fitting on train only, tokenizers,
truncation, length-bucketed batches with masks, and clear errors for bad inputs."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from tests.conftest import CliResult, config_dict
from tests.text_data import make_texts

from mlsmith.config import TokenizerConfig, load_config
from mlsmith.data.batches import BatchOptions
from mlsmith.data.splits import split_rows
from mlsmith.data.text import (
    BUCKET_BATCHES,
    TextBatches,
    TextPreprocessor,
    load_preprocessor,
    prepare,
)
from mlsmith.data.tokenizer import tokenizers_module, train_tokenizer
from mlsmith.errors import ConfigError, DataError, MissingExtraError

RARE = "dullcastfilm"  # letters of the training alphabet, never seen as one word


def text_config(tmp_path: Path, frame: pd.DataFrame | None = None, **data: Any) -> Any:
    path = tmp_path / "texts.csv"
    (make_texts(rows=200) if frame is None else frame).to_csv(path, index=False)
    raw = config_dict(path, tmp_path / "runs")
    raw["data"] = {"type": "text", "path": str(path), "target": "label", **data}
    raw["model"] = {"type": "bag"}
    return load_config(raw)


# --- tokenizer ---------------------------------------------------------------------------------


def test_tokenizer_is_trained_on_the_training_split_only(tmp_path: Path) -> None:
    """A word that appears only in the validation and test files never enters the vocabulary."""
    train = make_texts(rows=150, seed=1)
    held_out = make_texts(rows=40, seed=2)
    held_out["text"] = held_out["text"] + f" {RARE} {RARE}"
    held_out.to_csv(tmp_path / "val.csv", index=False)
    held_out.to_csv(tmp_path / "test.csv", index=False)
    config = text_config(
        tmp_path,
        train,
        val_path=str(tmp_path / "val.csv"),
        test_path=str(tmp_path / "test.csv"),
        tokenizer={"vocab_size": 500, "min_frequency": 1},
    )
    data = prepare(config)
    vocab = data.preprocessor.tokenizer.get_vocab()
    assert RARE not in vocab
    assert "brilliant" in vocab and "the" in vocab  # training words are whole tokens
    # The held-out word is still encoded, as pieces of the training alphabet.
    pieces = data.preprocessor.tokenizer.encode(RARE, add_special_tokens=False).tokens
    assert len(pieces) > 1 and "[UNK]" not in pieces


def test_tokenizer_ignores_rows_of_the_split_it_holds_out(tmp_path: Path) -> None:
    """Same check with a split of one file: only the training rows feed the tokenizer."""
    frame = make_texts(rows=200, seed=4)
    config = text_config(tmp_path, frame)
    data = config.data
    split = split_rows(
        frame,
        data.split,
        val=data.split.val,
        test=data.split.test,
        classification=True,
        target="label",
        seed=config.seed,
        source="texts",
    )
    frame.loc[split.test[0], "text"] += f" {RARE}"
    frame.loc[split.val[0], "text"] += f" {RARE}"
    frame.loc[split.train[0], "text"] += " qwertyuiop"
    tokenizer = {"vocab_size": 2000, "min_frequency": 1}
    prepared = prepare(text_config(tmp_path, frame, tokenizer=tokenizer))
    vocab = prepared.preprocessor.tokenizer.get_vocab()
    assert RARE not in vocab
    assert "qwertyuiop" in vocab  # seen once, in training: a whole token
    assert prepared.summary["rows"] == {
        "train": len(split.train),
        "val": len(split.val),
        "test": len(split.test),
    }


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_wordpiece_and_bpe_tokenizers(kind: str) -> None:
    texts = make_texts(rows=200)["text"].tolist()
    tokenizer = train_tokenizer(texts, TokenizerConfig(kind=kind, vocab_size=300))
    assert tokenizer.token_to_id("[PAD]") == 0 and tokenizer.token_to_id("[UNK]") == 1
    assert tokenizer.get_vocab_size() <= 300
    model = json.loads(tokenizer.to_str())["model"]["type"]
    assert model == {"wordpiece": "WordPiece", "bpe": "BPE"}[kind]
    encoding = tokenizer.encode("A BRILLIANT film!", add_special_tokens=False)
    assert encoding.tokens[:2] == ["a", "brilliant"]  # lowercased, words kept whole
    assert encoding.tokens[-1] == "!"  # punctuation split off
    # Pieces inside a word are marked, and "##" typed in a text is no special token.
    assert "##" in " ".join(tokenizer.encode("dullmoving", add_special_tokens=False).tokens)
    assert tokenizer.encode("##e", add_special_tokens=False).tokens == ["[UNK]", "[UNK]", "e"]


def test_lowercase_off_keeps_case() -> None:
    texts = make_texts(rows=100)["text"].tolist()
    tokenizer = train_tokenizer(texts, TokenizerConfig(vocab_size=300, lowercase=False))
    assert tokenizer.encode("The", add_special_tokens=False).tokens == ["The"]


def test_tokenizer_training_is_the_same_in_every_process() -> None:
    """tokenizers' trainer is not deterministic across processes on its own (hash-map order)."""
    script = (
        "import hashlib\n"
        "from tests.text_data import make_texts\n"
        "from mlsmith.config import TokenizerConfig\n"
        "from mlsmith.data.tokenizer import train_tokenizer\n"
        "texts = make_texts(rows=300)['text'].tolist()\n"
        "for kind in ('wordpiece', 'bpe'):\n"
        "    t = train_tokenizer(texts, TokenizerConfig(kind=kind, vocab_size=200))\n"
        "    print(hashlib.sha256(t.to_str().encode()).hexdigest())\n"
    )
    root = Path(__file__).resolve().parents[2]
    runs = [
        subprocess.run(
            [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=60
        )
        for _ in range(3)
    ]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr
    assert runs[0].stdout == runs[1].stdout == runs[2].stdout


def test_a_local_tokenizer_file_or_directory(tmp_path: Path) -> None:
    tk = tokenizers_module()
    # A "pretrained" word-level tokenizer with its own padding token and settings.
    own = tk.Tokenizer(tk.models.WordLevel(unk_token="<unk>"))
    own.pre_tokenizer = tk.pre_tokenizers.Whitespace()
    own.train_from_iterator(
        make_texts(rows=100)["text"].tolist(),
        tk.trainers.WordLevelTrainer(special_tokens=["<unk>", "<pad>"], show_progress=False),
    )
    own.enable_truncation(2)  # its own settings must not leak into mlsmith's encoding
    own.enable_padding(pad_id=1, pad_token="<pad>", length=50)
    (tmp_path / "tok").mkdir()
    own.save(str(tmp_path / "tok" / "tokenizer.json"))

    for path in (tmp_path / "tok", tmp_path / "tok" / "tokenizer.json"):
        config = text_config(tmp_path, tokenizer={"path": str(path)})
        data = prepare(config)
        pre = data.preprocessor
        assert pre.tokenizer_source == str(tmp_path / "tok" / "tokenizer.json")
        assert pre.pad_id == 1 and pre.vocab_size == own.get_vocab_size()
        text = "the film is brilliant"
        inputs = pre.transform(pd.DataFrame({"text": [text, "the"]}))
        assert inputs["input_ids"].shape == (2, 4)
        expected = [own.token_to_id(w) for w in text.split()]
        assert inputs["input_ids"][0].tolist() == expected
        assert inputs["input_ids"][1].tolist() == [own.token_to_id("the"), 1, 1, 1]
        assert data.summary["tokenizer"] == pre.tokenizer_source


def test_a_missing_or_broken_tokenizer_path_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.tokenizer\.path: no tokenizer found"):
        prepare(text_config(tmp_path, tokenizer={"path": str(tmp_path / "nope")}))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not a readable Hugging Face tokenizer"):
        prepare(text_config(tmp_path, tokenizer={"path": str(tmp_path / "bad.json")}))


def test_missing_tokenizers_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # import now raises ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'mlsmith\[text\]'"):
        tokenizers_module()


# --- preprocessing -----------------------------------------------------------------------------


def test_max_length_truncates_and_width_follows_the_longest_text(tmp_path: Path) -> None:
    data = prepare(text_config(tmp_path, max_length=6))
    for split in (data.train, data.val):
        ids, lengths = split.inputs["input_ids"], split.inputs["lengths"]
        assert ids.dtype == np.int32 and ids.shape == (len(split), 6)
        assert lengths.max() == 6 and lengths.min() >= 1
    pre = data.preprocessor
    long_text = "great " * 20 + "film"
    inputs = pre.transform(pd.DataFrame({"text": [long_text, "dull"]}))
    assert inputs["lengths"].tolist() == [6, 1]
    assert inputs["input_ids"][0].tolist() == [pre.tokenizer.token_to_id("great")] * 6
    assert inputs["input_ids"][1, 1:].tolist() == [pre.pad_id] * 5


def test_missing_text_is_empty_and_missing_target_is_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    frame = make_texts(rows=200)
    frame.loc[[3, 5], "text"] = np.nan
    frame.loc[[7, 8, 9], "label"] = None
    data = prepare(text_config(tmp_path, frame))
    assert sum(len(s) for s in (data.train, data.val, data.test)) == 197
    assert "dropped 3 of 200 rows whose target 'label' is missing" in caplog.text
    pre = data.preprocessor
    inputs = pre.transform(pd.DataFrame({"text": [None, np.nan, "", 12.5]}))
    assert inputs["lengths"].tolist()[:3] == [0, 0, 0] and inputs["lengths"][3] > 0
    assert inputs["input_ids"].shape[1] >= 1
    empty = pre.transform(pd.DataFrame({"text": pd.Series([], dtype=object)}))
    assert empty["input_ids"].shape == (0, 1) and empty["lengths"].shape == (0,)


def test_preprocessor_round_trips_through_plain_json(tmp_path: Path) -> None:
    data = prepare(text_config(tmp_path))
    data.preprocessor.save(tmp_path)
    state = json.loads((tmp_path / "preprocessing.json").read_text())
    assert state["kind"] == "text" and state["text_column"] == "text"
    assert json.loads(state["tokenizer"])["model"]["type"] == "WordPiece"  # the whole tokenizer
    loaded = load_preprocessor(tmp_path)
    frame = make_texts(rows=30, seed=9)
    for key, value in data.preprocessor.transform(frame).items():
        np.testing.assert_array_equal(loaded.transform(frame)[key], value)
    assert loaded.task.classes == data.task.classes
    assert loaded.model_inputs() == data.preprocessor.model_inputs()


def test_prepare_with_a_saved_preprocessor_lands_on_the_same_rows(tmp_path: Path) -> None:
    config = text_config(tmp_path)
    first = prepare(config)
    again = prepare(config, preprocessor=first.preprocessor)
    assert again.preprocessor is first.preprocessor
    assert again.fingerprint == first.fingerprint
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(
            getattr(again, name).inputs["input_ids"], getattr(first, name).inputs["input_ids"]
        )


def test_task_and_summary(tmp_path: Path) -> None:
    data = prepare(text_config(tmp_path, make_texts("multiclass", rows=240)))
    assert data.task.kind == "multiclass"
    assert data.task.classes == ["negative", "neutral", "positive"]
    assert data.summary["rows"] == {"train": 168, "val": 36, "test": 36}
    assert data.summary["tokenizer"] == "trained: wordpiece"
    assert data.summary["tokens_per_text"]["max"] <= 256


def test_a_numeric_target_with_many_values_is_refused(tmp_path: Path) -> None:
    frame = make_texts(rows=100)
    frame["label"] = np.linspace(0.0, 1.0, 100)
    with pytest.raises(DataError, match="text data is classification only"):
        prepare(text_config(tmp_path, frame))


# --- batches -----------------------------------------------------------------------------------


def _length_batches(
    n: int, batch_size: int, seed: int = 0, bucket_batches: int = BUCKET_BATCHES, **options: Any
) -> TextBatches:
    """Row i holds id i in every real position; lengths vary from 1 to 40."""
    rng = np.random.default_rng(5)
    lengths = rng.integers(1, 41, size=n).astype(np.int32)
    ids = np.where(np.arange(40) < lengths[:, None], np.arange(n)[:, None], -1).astype(np.int32)
    inputs = {"input_ids": ids, "lengths": lengths}
    target = np.arange(n, dtype=np.float32)
    options = BatchOptions(batch_size, seed=seed, **options)
    return TextBatches(inputs, target, options, bucket_batches=bucket_batches)


def _epoch_rows(batches: TextBatches, accumulate: int = 1) -> tuple[list[list[int]], int]:
    """Row ids of each micro-batch, checking masks and trimming; and the padded cells."""
    rows, padding = [], 0
    for step in batches.steps(accumulate):
        for inputs, target in step:
            ids, mask = inputs["input_ids"], inputs["attention_mask"]
            assert ids.dtype == torch.int64 and mask.dtype == torch.bool
            assert ids.shape == mask.shape
            lengths = mask.sum(dim=1)
            assert ids.shape[1] == lengths.max()  # trimmed to the batch's longest text
            assert torch.equal(mask, torch.arange(ids.shape[1]) < lengths[:, None])
            assert torch.equal(ids[mask], target.long().repeat_interleave(lengths))
            assert bool((ids[~mask] == -1).all())
            rows.append(target.long().tolist())
            padding += int((~mask).sum())
    return rows, padding


@pytest.mark.parametrize(("n", "batch_size", "accumulate"), [(1000, 16, 1), (997, 10, 3)])
def test_bucketed_epochs_visit_every_row_once(n: int, batch_size: int, accumulate: int) -> None:
    batches = _length_batches(n, batch_size, shuffle=True)
    orders = []
    for _ in range(3):
        rows, _ = _epoch_rows(batches, accumulate)
        flat = [i for batch in rows for i in batch]
        assert sorted(flat) == list(range(n))
        assert [len(b) for b in rows[:-1]] == [batch_size] * (len(rows) - 1)
        orders.append(flat)
    assert orders[0] != orders[1] != orders[2]


def test_bucketing_keeps_padding_small_and_batches_mixed() -> None:
    bucketed, bucketed_pad = _epoch_rows(_length_batches(2000, 32, shuffle=True))
    _, random_pad = _epoch_rows(_length_batches(2000, 32, shuffle=True, bucket_batches=0))
    _, fixed_pad = _epoch_rows(_length_batches(2000, 32))
    assert bucketed_pad < 0.1 * random_pad and bucketed_pad < 0.1 * fixed_pad
    # Still shuffled: consecutive batches come from anywhere in the table.
    firsts = [batch[0] for batch in bucketed[:20]]
    assert firsts != sorted(firsts)
    assert max(firsts) - min(firsts) > 1000


def test_bucketed_order_is_reproducible_from_the_seed_and_resumable() -> None:
    first, twin, other = (_length_batches(500, 8, seed=s, shuffle=True) for s in (3, 3, 4))
    assert _epoch_rows(first) == _epoch_rows(twin)
    assert _epoch_rows(first)[0] != _epoch_rows(other)[0]
    # A resumed run restores the generator state and sees the same batches.
    state = first.generator.get_state()
    expected = _epoch_rows(first)
    first.generator.set_state(state)
    assert _epoch_rows(first) == expected


def test_unshuffled_batches_keep_table_order() -> None:
    rows, _ = _epoch_rows(_length_batches(50, 16))
    assert rows == [list(range(i, min(i + 16, 50))) for i in range(0, 50, 16)]


def test_batches_of_empty_texts_have_one_padded_column() -> None:
    inputs = {"input_ids": np.zeros((3, 1), dtype=np.int32), "lengths": np.zeros(3, np.int32)}
    (batch, _), *_ = list(TextBatches(inputs, None, BatchOptions(8)))
    assert batch["input_ids"].shape == (3, 1) and not batch["attention_mask"].any()


def test_preprocessor_batches_are_text_batches(tmp_path: Path) -> None:
    data = prepare(text_config(tmp_path))
    pre: TextPreprocessor = data.preprocessor
    batches = pre.batches(
        data.train.inputs, data.train.target, BatchOptions(16, shuffle=True, train=True)
    )
    assert isinstance(batches, TextBatches) and len(batches) == len(data.train)
    inputs, _ = next(iter(batches))
    assert set(inputs) == {"input_ids", "attention_mask"}


# --- bad inputs through the CLI ----------------------------------------------------------------


def _write(tmp_path: Path, frame: pd.DataFrame, **data: Any) -> Path:
    import yaml

    path = tmp_path / "texts.csv"
    frame.to_csv(path, index=False)
    raw = config_dict(path, tmp_path / "runs")
    raw["data"] = {"type": "text", "path": str(path), "target": "label", **data}
    raw["model"] = {"type": "bag"}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    return config


def test_missing_text_column_is_a_clear_error(
    tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    config = _write(tmp_path, make_texts(rows=50), text_column="review")
    result = cli("train", config)
    assert result.code == 2
    assert "data.text_column column 'review' not found" in result.stderr
    assert "texts.csv" in result.stderr and "columns are: text, label" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_empty_table_is_a_clear_error(tmp_path: Path, cli: Callable[..., CliResult]) -> None:
    config = _write(tmp_path, make_texts(rows=5).iloc[:0])
    result = cli("train", config)
    assert result.code == 2
    assert "texts.csv: the data table is empty (0 rows)" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_label_column_is_a_clear_error(
    tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    config = _write(tmp_path, make_texts(rows=50).rename(columns={"label": "sentiment"}))
    result = cli("train", config)
    assert result.code == 2
    assert "target column 'label' not found" in result.stderr
    assert "Traceback" not in result.stderr
