"""Tests for mlsmith.data.images: folder / CSV / npz sources, decoding, fitted preprocessing,
in-memory and streamed batches, and the user errors bad inputs give."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from tests.conftest import CliResult
from tests.image_data import (
    image_config,
    make_images,
    save_png,
    write_csv,
    write_folder,
    write_npz,
)

from mlsmith.config import Config, load_config
from mlsmith.data.base import PREPROCESSING_FILE
from mlsmith.data.batches import BatchOptions
from mlsmith.data.images import (
    ImageBatches,
    ImagePreprocessor,
    StreamBatches,
    decode_file,
    load_preprocessor,
    prepare,
)
from mlsmith.errors import DataError, MissingExtraError


def _config(path: Path, tmp_path: Path, **data: Any) -> Config:
    return load_config(image_config(path, tmp_path / "runs", **data))


def _batches_of(batches: Any, epochs: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for _ in range(epochs):
        for step in batches.steps(1):
            for inputs, target in step:
                out.append((inputs["image"].clone(), target.clone()))
    return out


# --- sources ----------------------------------------------------------------------------------


def test_folder_labels_from_subfolders_grayscale_and_as_stored_size(tmp_path: Path) -> None:
    images, labels = make_images(10, classes=3, size=(12, 20))
    root = write_folder(tmp_path / "imgs", images, labels, names=["cat", "dog", "owl"])
    data = prepare(_config(root, tmp_path))

    assert data.task.kind == "multiclass"
    assert data.task.classes == ["cat", "dog", "owl"]
    pre = data.preprocessor
    assert isinstance(pre, ImagePreprocessor)
    assert (pre.channels, pre.height, pre.width) == (1, 12, 20)
    assert data.train.inputs["image"].dtype == np.uint8
    assert data.train.inputs["image"].shape[1:] == (1, 12, 20)
    assert len(data.train) + len(data.val) + len(data.test or []) == 30
    assert data.summary["cache"] == "memory"
    # The pixels are the PNGs' own: the first test image is one of the written ones exactly.
    written = {img.tobytes() for img in images}
    assert data.train.inputs["image"][0, 0].tobytes() in written


def test_csv_of_paths_relative_to_the_csv_reads_the_same_images(tmp_path: Path) -> None:
    images, labels = make_images(8, classes=2)
    csv = write_csv(tmp_path / "csvdata", images, labels)
    frame = pd.read_csv(csv)
    assert not Path(frame["path"][0]).is_absolute()
    data = prepare(_config(csv, tmp_path))
    assert data.task.kind == "binary" and data.task.classes == ["c0", "c1"]
    all_inputs = np.concatenate([data.train.inputs["image"], data.val.inputs["image"]])
    assert data.test is not None
    all_inputs = np.concatenate([all_inputs, data.test.inputs["image"]])
    assert sorted(x.tobytes() for x in all_inputs[:, 0]) == sorted(x.tobytes() for x in images)


def test_npz_grayscale_and_rgb_layouts(tmp_path: Path) -> None:
    gray, labels = make_images(8, classes=3)
    data = prepare(_config(write_npz(tmp_path / "g.npz", gray, labels), tmp_path))
    assert data.preprocessor.model_inputs() == {"channels": 1, "height": 16, "width": 16}
    assert data.task.classes == [0, 1, 2]

    rgb, labels = make_images(8, classes=3, channels=3)
    for name, stored in (("nhwc", rgb), ("nchw", rgb.transpose(0, 3, 1, 2))):
        data = prepare(_config(write_npz(tmp_path / f"{name}.npz", stored, labels), tmp_path))
        assert data.preprocessor.model_inputs()["channels"] == 3
        split = data.train.inputs["image"]
        assert split.shape[1:] == (3, 16, 16)
        assert {x.tobytes() for x in split} <= {x.transpose(2, 0, 1).tobytes() for x in rgb}


def test_rgb_pngs_and_mixed_gray_and_rgb_become_three_channels(tmp_path: Path) -> None:
    rgb, labels = make_images(6, classes=2, channels=3)
    gray, _ = make_images(6, classes=2, seed=1)
    mixed = tmp_path / "mixed"
    write_folder(mixed, rgb, labels)
    for i, (image, label) in enumerate(zip(gray, labels, strict=True)):
        save_png(image, mixed / f"c{label}" / f"gray{i}.png")
    data = prepare(_config(mixed, tmp_path))
    pre = data.preprocessor
    assert isinstance(pre, ImagePreprocessor) and pre.channels == 3
    every = np.concatenate(
        [data.train.inputs["image"], data.val.inputs["image"], data.test.inputs["image"]]  # type: ignore[union-attr]
    )
    gray_like = [x for x in every if (x[0] == x[1]).all() and (x[1] == x[2]).all()]
    assert len(gray_like) == len(gray)  # grayscale images repeated to 3 equal channels
    assert {x[0].tobytes() for x in gray_like} == {x.tobytes() for x in gray}

    # channels: 1 turns RGB into luminance.
    data = prepare(_config(mixed, tmp_path, channels=1))
    assert data.train.inputs["image"].shape[1] == 1


@pytest.mark.parametrize("mode", ["RGBA", "P", "LA", "I;16"])
def test_other_pillow_modes_decode_to_gray_or_rgb(tmp_path: Path, mode: str) -> None:
    from PIL import Image

    base = np.linspace(0, 255, 64, dtype=np.uint8).reshape(8, 8)
    image = Image.fromarray(base).convert("RGB" if mode in ("RGBA", "P") else "L")
    image = Image.fromarray(base.astype(np.uint16) * 257) if mode == "I;16" else image.convert(mode)
    path = tmp_path / f"x_{mode.replace(';', '')}.png"
    image.save(path)
    decoded = decode_file(str(path), None, None)
    assert decoded.dtype == torch.uint8
    assert decoded.shape[0] == (3 if mode in ("RGBA", "P") else 1)
    if mode == "I;16":  # 16-bit scaled to 8 bits, not clipped
        np.testing.assert_array_equal(decoded[0].numpy(), base)


def test_image_size_resizes_keeping_aspect_then_center_crops(tmp_path: Path) -> None:
    images, labels = make_images(6, classes=2, size=(20, 30))
    root = write_folder(tmp_path / "imgs", images, labels)
    data = prepare(_config(root, tmp_path, image_size=10))
    assert data.train.inputs["image"].shape[1:] == (1, 10, 10)
    assert data.summary["image_size"] == [10, 10]
    # New images of any size are fitted the same way at prediction time.
    big = tmp_path / "big.png"
    save_png(np.zeros((40, 50), dtype=np.uint8), big)
    inputs = data.preprocessor.transform(pd.DataFrame({"path": [str(big)]}))
    assert inputs["image"].shape == (1, 1, 10, 10)


def test_mean_and_std_come_from_the_training_split_only(tmp_path: Path) -> None:
    images, labels = make_images(10, classes=2, seed=4)
    npz = write_npz(tmp_path / "a.npz", images, labels)
    data = prepare(_config(npz, tmp_path))
    pre = data.preprocessor
    assert isinstance(pre, ImagePreprocessor)
    train = data.train.inputs["image"].astype(np.float64) / 255.0
    assert pre.mean == pytest.approx([train.mean()], rel=1e-9)
    assert pre.std == pytest.approx([train.std()], rel=1e-9)

    # Saturate every non-training image: the statistics do not move.
    poisoned = images.copy()
    train_pixels = {x.tobytes() for x in data.train.inputs["image"][:, 0]}
    for i, image in enumerate(images):
        if image.tobytes() not in train_pixels:
            poisoned[i] = 255
    again = prepare(_config(write_npz(tmp_path / "b.npz", poisoned, labels), tmp_path))
    assert again.preprocessor.mean == pre.mean  # type: ignore[attr-defined]
    assert again.preprocessor.std == pre.std  # type: ignore[attr-defined]

    given = prepare(_config(npz, tmp_path, mean=[0.5], std=[0.25])).preprocessor
    assert (given.mean, given.std) == ([0.5], [0.25])  # type: ignore[attr-defined]


def test_fingerprint_follows_file_bytes_and_labels(tmp_path: Path) -> None:
    images, labels = make_images(6, classes=2)
    root = write_folder(tmp_path / "imgs", images, labels)
    first = prepare(_config(root, tmp_path)).fingerprint
    assert prepare(_config(root, tmp_path)).fingerprint == first
    # Moving the folder keeps it (names are relative); changing one pixel does not.
    moved = tmp_path / "moved"
    root.rename(moved)
    assert prepare(_config(moved, tmp_path)).fingerprint == first
    victim = sorted(moved.rglob("*.png"))[0]
    from PIL import Image

    with Image.open(victim) as opened:
        pixels = np.array(opened)
    pixels[0, 0] ^= 1
    save_png(pixels, victim)
    assert prepare(_config(moved, tmp_path)).fingerprint != first

    npz_images, npz_labels = make_images(6, classes=2)
    a = prepare(_config(write_npz(tmp_path / "a.npz", npz_images, npz_labels), tmp_path))
    npz_labels[0] = 1 - npz_labels[0]
    b = prepare(_config(write_npz(tmp_path / "b.npz", npz_images, npz_labels), tmp_path))
    assert a.fingerprint != b.fingerprint


def test_val_and_test_paths_replace_the_split(tmp_path: Path) -> None:
    train, train_labels = make_images(6, classes=2, seed=1)
    val, val_labels = make_images(2, classes=2, seed=2)
    test, test_labels = make_images(3, classes=2, seed=3)
    config = _config(
        write_folder(tmp_path / "train", train, train_labels),
        tmp_path,
        val_path=str(write_folder(tmp_path / "val", val, val_labels)),
        test_path=str(write_npz(tmp_path / "test.npz", test, np.array(["c0", "c1"])[test_labels])),
    )
    data = prepare(config)
    assert (len(data.train), len(data.val), len(data.test or [])) == (12, 4, 6)
    assert "+" in data.fingerprint


def test_preprocessing_json_round_trip(tmp_path: Path) -> None:
    images, labels = make_images(6, classes=3, channels=3)
    root = write_folder(tmp_path / "imgs", images, labels)
    config = _config(root, tmp_path, image_size=12, augment={"hflip": True, "rotation": 10})
    data = prepare(config)
    run_dir = tmp_path / "run"
    data.preprocessor.save(run_dir)
    state = json.loads((run_dir / PREPROCESSING_FILE).read_text())
    assert state["kind"] == "image"
    assert state["task"]["classes"] == ["c0", "c1", "c2"]
    assert (state["height"], state["width"], state["channels"]) == (12, 12, 3)
    assert len(state["mean"]) == len(state["std"]) == 3
    assert state["augment"]["hflip"] is True and state["augment"]["rotation"] == 10
    loaded = load_preprocessor(run_dir)
    assert loaded.to_dict() == data.preprocessor.to_dict()  # type: ignore[attr-defined]
    # A resumed/evaluated run rebuilds the same splits with the saved preprocessing.
    again = prepare(config, preprocessor=loaded)
    np.testing.assert_array_equal(again.train.inputs["image"], data.train.inputs["image"])
    assert again.fingerprint == data.fingerprint


# --- prediction-time data ---------------------------------------------------------------------


def test_read_folder_for_prediction_is_recursive_without_labels(tmp_path: Path) -> None:
    images, labels = make_images(4, classes=2)
    root = write_folder(tmp_path / "imgs", images, labels)
    pre = prepare(_config(root, tmp_path)).preprocessor
    loose = tmp_path / "loose"
    save_png(images[0], loose / "a.png")
    save_png(images[1], loose / "deep" / "er" / "b.png")
    (loose / "notes.txt").write_text("not an image")
    frame = pre.read(str(loose))
    assert list(frame["path"]) == [str(loose / "a.png"), str(loose / "deep/er/b.png")]
    assert "label" not in frame.columns
    assert pre.transform(frame)["image"].shape == (2, 1, 16, 16)
    with pytest.raises(DataError, match="not in a class subfolder"):
        pre.to_split(frame, "loose")


def test_unseen_label_in_new_data_is_a_data_error(tmp_path: Path) -> None:
    images, labels = make_images(4, classes=2)
    pre = prepare(_config(write_folder(tmp_path / "imgs", images, labels), tmp_path)).preprocessor
    other = write_folder(tmp_path / "other", images[:4], np.array([0, 1, 2, 2]))
    with pytest.raises(DataError, match=r"other.*labels not seen in the training data: c2"):
        pre.to_split(pre.read(str(other)), str(other))


def test_iter_read_chunks_a_csv(tmp_path: Path) -> None:
    images, labels = make_images(5, classes=2)
    csv = write_csv(tmp_path / "d", images, labels)
    pre = prepare(_config(csv, tmp_path)).preprocessor
    chunks = list(pre.iter_read(str(csv), 4))
    assert [len(c) for c in chunks] == [4, 4, 2]
    assert all(Path(p).is_file() for c in chunks for p in c["path"])


# --- batches ----------------------------------------------------------------------------------


def test_batches_normalise_and_augment_reproducibly(tmp_path: Path) -> None:
    images, labels = make_images(10, classes=2)
    config = _config(
        write_npz(tmp_path / "a.npz", images, labels),
        tmp_path,
        augment={"crop_scale": [0.6, 1.0], "hflip": True, "rotation": 15, "color_jitter": 0.3},
    )
    data = prepare(config)
    pre = data.preprocessor

    plain = pre.batches(data.val.inputs, data.val.target, BatchOptions(4))
    assert isinstance(plain, ImageBatches)
    inputs, _ = next(iter(plain))
    expected = (data.val.inputs["image"][:4].astype(np.float32) / 255 - pre.mean[0]) / pre.std[0]  # type: ignore[attr-defined]
    np.testing.assert_allclose(inputs["image"].numpy(), expected, rtol=1e-5, atol=1e-5)

    def train_batches() -> Any:
        options = BatchOptions(4, shuffle=True, seed=7, train=True)
        return pre.batches(data.train.inputs, data.train.target, options)

    torch.manual_seed(0)
    first = _batches_of(train_batches(), epochs=2)
    torch.manual_seed(123)  # the global RNG plays no part
    second = _batches_of(train_batches(), epochs=2)
    for (a, ta), (b, tb) in zip(first, second, strict=True):
        assert torch.equal(a, b) and torch.equal(ta, tb)
    # Augmentation changes the pixels, and differs between epochs.
    unaugmented = _batches_of(
        pre.batches(data.train.inputs, data.train.target, BatchOptions(4, shuffle=True, seed=7))
    )
    assert not torch.equal(first[0][0], unaugmented[0][0])
    half = len(first) // 2
    assert any(
        not torch.equal(a, b) for (a, _), (b, _) in zip(first[:half], first[half:], strict=True)
    )


def test_replaying_an_epoch_from_its_start_state_gives_the_same_batches(tmp_path: Path) -> None:
    """What exact mid-epoch resume relies on: the generator state at the epoch start is enough."""
    images, labels = make_images(10, classes=2)
    data = prepare(
        _config(write_npz(tmp_path / "a.npz", images, labels), tmp_path, augment={"rotation": 20})
    )
    batches = data.preprocessor.batches(
        data.train.inputs, data.train.target, BatchOptions(3, shuffle=True, seed=1, train=True)
    )
    _batches_of(batches)  # epoch 1
    start = batches.generator.get_state()
    epoch2 = _batches_of(batches)
    torch.rand(5)  # the global RNG moves on
    batches.generator.set_state(start)
    assert all(
        torch.equal(a, b) for (a, _), (b, _) in zip(_batches_of(batches), epoch2, strict=True)
    )


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_batches_equal_cached_batches(tmp_path: Path, workers: int) -> None:
    images, labels = make_images(7, classes=2, size=(14, 18), channels=3)
    root = write_folder(tmp_path / "imgs", images, labels)
    augment = {"crop_scale": [0.7, 1.0], "hflip": True, "randaugment": True}
    memory = prepare(_config(root, tmp_path, image_size=12, augment=augment))
    stream = prepare(
        _config(root, tmp_path, image_size=12, augment=augment, cache="stream", num_workers=workers)
    )
    assert stream.summary["cache"] == "stream" and "path" in stream.train.inputs
    assert stream.fingerprint == memory.fingerprint
    assert stream.preprocessor.to_dict()["mean"] == pytest.approx(
        memory.preprocessor.to_dict()["mean"]
    )
    stream.preprocessor.mean = memory.preprocessor.mean  # type: ignore[attr-defined]
    stream.preprocessor.std = memory.preprocessor.std  # type: ignore[attr-defined]
    # Plain, shuffled and augmented, then drawn by the balanced sampler: the same batches.
    for train, balanced in ((False, False), (True, False), (True, True)):
        options = BatchOptions(
            4, shuffle=train, seed=3, drop_last=train, train=train, balanced=balanced
        )
        cached = memory.preprocessor.batches(memory.train.inputs, memory.train.target, options)
        streamed = stream.preprocessor.batches(stream.train.inputs, stream.train.target, options)
        assert isinstance(streamed, StreamBatches)
        assert streamed.n_steps(2) == cached.n_steps(2)
        a, b = _batches_of(cached, epochs=2), _batches_of(streamed, epochs=2)
        assert len(a) == len(b) > 0
        for (x, tx), (y, ty) in zip(a, b, strict=True):
            assert torch.equal(x, y) and torch.equal(tx, ty)


def test_auto_cache_streams_what_does_not_fit(tmp_path: Path) -> None:
    images, labels = make_images(5, classes=2, size=(64, 64))
    root = write_folder(tmp_path / "imgs", images, labels)
    # 10 images of 64x64 gray are 40 KiB; a 1 MiB limit caches them, image_size 512 does not.
    assert prepare(_config(root, tmp_path, cache_limit_mb=1)).summary["cache"] == "memory"
    big = prepare(_config(root, tmp_path, cache_limit_mb=1, image_size=512, num_workers=0))
    assert big.summary["cache"] == "stream"
    pre = big.preprocessor
    frame = pre.read(str(root))
    assert "path" in pre.transform(frame)


# --- bad input --------------------------------------------------------------------------------


def _train(
    cli: Callable[..., CliResult], tmp_path: Path, data_path: Path, **data: Any
) -> CliResult:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(image_config(data_path, tmp_path / "runs", **data)))
    return cli("train", config, "--no-progress")


def _assert_user_error(result: CliResult, *fragments: str) -> None:
    assert result.code == 2, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def test_empty_folder_is_a_user_error(cli: Callable[..., CliResult], tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "cats").mkdir(parents=True)
    _assert_user_error(_train(cli, tmp_path, empty), str(empty), "no image files found")
    assert not (tmp_path / "runs").exists()


def test_unreadable_image_is_a_user_error(cli: Callable[..., CliResult], tmp_path: Path) -> None:
    images, labels = make_images(4, classes=2)
    root = write_folder(tmp_path / "imgs", images, labels)
    broken = root / "c1" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    _assert_user_error(_train(cli, tmp_path, root), str(broken), "cannot be read as an image")


def test_unreadable_image_while_streaming_is_a_user_error(
    cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    images, labels = make_images(4, classes=2)
    root = write_folder(tmp_path / "imgs", images, labels)
    truncated = root / "c0" / "0000.png"
    truncated.write_bytes(truncated.read_bytes()[:60])  # a valid header, then nothing
    result = _train(cli, tmp_path, root, cache="stream", num_workers=1)
    _assert_user_error(result, str(truncated), "cannot be read as an image")


def test_missing_path_column_is_a_user_error(cli: Callable[..., CliResult], tmp_path: Path) -> None:
    images, labels = make_images(4, classes=2)
    csv = write_csv(tmp_path / "d", images, labels)
    pd.read_csv(csv).rename(columns={"path": "file"}).to_csv(csv, index=False)
    _assert_user_error(_train(cli, tmp_path, csv), str(csv), "image path column 'path' not found")
    # Pointing data.path_column at it works.
    assert _train(cli, tmp_path, csv, path_column="file").code == 0


def test_missing_image_file_and_label_column_are_user_errors(
    cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    images, labels = make_images(4, classes=2)
    csv = write_csv(tmp_path / "d", images, labels)
    (tmp_path / "d" / "files" / "img0002.png").unlink()
    _assert_user_error(_train(cli, tmp_path, csv), "image file not found", "img0002.png")
    pd.read_csv(csv).drop(columns=["label"]).to_csv(csv, index=False)
    _assert_user_error(_train(cli, tmp_path, csv), "label column 'label' not found")


def test_images_of_different_sizes_need_image_size(
    cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    images, labels = make_images(4, classes=2)
    root = write_folder(tmp_path / "imgs", images, labels)
    save_png(np.zeros((20, 20), dtype=np.uint8), root / "c0" / "odd.png")
    _assert_user_error(_train(cli, tmp_path, root), "differ in size", "data.image_size")
    assert _train(cli, tmp_path, root, image_size=16).code == 0


def test_loose_images_and_bad_npz_are_user_errors(
    cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    images, labels = make_images(4, classes=2)
    root = write_folder(tmp_path / "imgs", images, labels)
    save_png(images[0], root / "stray.png")
    _assert_user_error(_train(cli, tmp_path, root), "stray.png", "one subfolder per class")

    npz = tmp_path / "x.npz"
    np.savez(npz, pixels=images, label=labels)
    _assert_user_error(_train(cli, tmp_path, npz), "no array 'images'", "pixels")
    np.savez(npz, images=images, label=labels[:3])
    _assert_user_error(_train(cli, tmp_path, npz), "one label per image")
    (tmp_path / "junk.npz").write_text("not a zip")
    _assert_user_error(_train(cli, tmp_path, tmp_path / "junk.npz"), "cannot be read")


def test_missing_vision_extra_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images, labels = make_images(4, classes=2)
    config = _config(write_npz(tmp_path / "a.npz", images, labels), tmp_path)
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision -> ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'mlsmith\[vision\]'"):
        prepare(config)
