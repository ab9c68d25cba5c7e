"""Boxes and masks as the detection and segmentation kinds read them: the generated shapes
data set (exact targets), COCO and CSV boxes (a round trip, and every malformed input a clear
error), class-id and colour masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mlsmith.data.annotations import (
    BoxAnnotations,
    read_annotations,
    read_coco,
    read_mask,
    write_coco,
)
from mlsmith.data.shapes import CLASSES, COCO_FILE, CSV_FILE, draw_scene, write_shapes
from mlsmith.errors import DataError


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shapes(tmp_path_factory.mktemp("shapes"), 24, size=64, seed=3)


def test_every_box_is_the_tight_bounds_of_its_shape_in_the_mask() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        scene = draw_scene(rng, 64)
        assert set(np.unique(scene.mask)) <= {0, 1, 2, 3}
        assert 1 <= len(scene.boxes) <= 3
        for i, ((x0, y0, x1, y1), label) in enumerate(
            zip(scene.boxes.astype(int), scene.labels, strict=True), start=1
        ):
            shape = scene.instances == i
            assert (scene.mask[shape] == label).all()
            rows, cols = np.nonzero(shape)
            # Exact: the box is the tight bounds of the shape's pixels.
            assert (x0, y0, x1, y1) == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
        assert set(np.unique(scene.instances)) == set(range(len(scene.labels) + 1))


def test_the_same_seed_writes_the_same_files(tmp_path: Path, shapes: Path) -> None:
    again = write_shapes(tmp_path / "again", 24, size=64, seed=3)
    for name in ("images/0007.png", "masks/0007.png", COCO_FILE, CSV_FILE):
        assert (again / name).read_bytes() == (shapes / name).read_bytes()


def test_coco_and_csv_give_the_same_boxes(shapes: Path) -> None:
    coco = read_annotations(shapes / COCO_FILE, shapes / "images")
    table = read_annotations(shapes / CSV_FILE, shapes / "images")
    assert coco.classes == list(CLASSES)
    # The CSV's classes are its labels sorted: the same three here, in another order.
    assert sorted(table.classes) == sorted(CLASSES)
    by_file = {i.file: i for i in table.images}
    assert len(coco.images) == 24
    for image in coco.images:
        other = by_file[image.file]
        assert (image.width, image.height) == (other.width, other.height) == (64, 64)
        names = [coco.classes[k - 1] for k in image.labels]
        assert names == [table.classes[k - 1] for k in other.labels]
        np.testing.assert_array_equal(image.boxes, other.boxes)


def test_a_coco_round_trip_keeps_every_box(tmp_path: Path, shapes: Path) -> None:
    first = read_coco(shapes / COCO_FILE, shapes / "images")
    write_coco(first, tmp_path / "again.json")
    second = read_coco(tmp_path / "again.json", shapes / "images")
    assert second.classes == first.classes
    for a, b in zip(first.images, second.images, strict=True):
        assert a.file == b.file
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.labels, b.labels)


def test_masks_hold_class_ids_matching_their_images(shapes: Path) -> None:
    mask = read_mask(shapes / "masks" / "0000.png", (64, 64), n_classes=4)
    assert mask.dtype == np.uint8 and mask.shape == (64, 64)
    image = read_coco(shapes / COCO_FILE, shapes / "images").images[0]
    for (x0, y0, x1, y1), label in zip(image.boxes.astype(int), image.labels, strict=True):
        assert (mask[y0:y1, x0:x1] == label).any()


# --- malformed boxes ---------------------------------------------------------------------------


def _csv(
    tmp_path: Path, shapes: Path, rows: list[list[object]], columns: list[str] | None = None
) -> Path:
    path = tmp_path / "boxes.csv"
    columns = columns or ["image", "x_min", "y_min", "x_max", "y_max", "label"]
    pd.DataFrame(rows, columns=columns).to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([["0000.png", 5, 5, 5, 20, "a"]], r"box \[5, 5, 5, 20\] has no area"),
        ([["0000.png", 5, 5, 80, 20, "a"]], r"lies outside the 64x64 image"),
        ([["0000.png", 5, None, 10, 20, "a"]], r"line 2: a box needs four numbers"),
        ([["0000.png", 5, 5, 10, 20, None]], r"line 2: a box without a label"),
        ([["missing.png", 5, 5, 10, 20, "a"]], r"image 'missing.png' not found"),
    ],
)
def test_a_bad_csv_box_is_a_data_error_naming_it(
    tmp_path: Path, shapes: Path, rows: list[list[object]], message: str
) -> None:
    with pytest.raises(DataError, match=message):
        read_annotations(_csv(tmp_path, shapes, rows), shapes / "images")


def test_a_csv_without_a_column_names_it(tmp_path: Path, shapes: Path) -> None:
    path = _csv(tmp_path, shapes, [["0000.png", 1, 1, 5]], ["image", "x_min", "y_min", "x_max"])
    with pytest.raises(DataError, match=r"missing column\(s\) y_max, label"):
        read_annotations(path, shapes / "images")


def test_an_image_row_without_a_box_is_an_image_without_objects(
    tmp_path: Path, shapes: Path
) -> None:
    rows = [["0000.png", 1, 1, 9, 9, "a"], ["0001.png", None, None, None, None, None]]
    found = read_annotations(_csv(tmp_path, shapes, rows), shapes / "images")
    assert [len(i.boxes) for i in found.images] == [1, 0]


def test_a_box_a_pixel_past_the_edge_is_clipped(tmp_path: Path, shapes: Path) -> None:
    rows = [["0000.png", -0.5, 0, 64.5, 10, "a"]]
    [image] = read_annotations(_csv(tmp_path, shapes, rows), shapes / "images").images
    assert image.boxes.tolist() == [[0.0, 0.0, 64.0, 10.0]]


def _coco(tmp_path: Path, shapes: Path, change: str) -> Path:
    data = json.loads((shapes / COCO_FILE).read_text())
    if change == "category":
        data["annotations"][0]["category_id"] = 9
    elif change == "bbox":
        del data["annotations"][0]["bbox"]
    elif change == "size":
        data["images"][0]["width"] = 100
    elif change == "image":
        data["annotations"][0]["image_id"] = 999
    elif change == "no categories":
        data["categories"] = []
    elif change == "not coco":
        data = [1, 2]
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("category", r"annotation 1 has category_id 9, not in 'categories' \(\[1, 2, 3\]\)"),
        ("bbox", r"annotation 1: expected 'bbox' as \[x, y, width, height\]"),
        ("size", r"image '0000.png' is 64x64 pixels, the annotations say 100x64"),
        ("image", r"annotation 1 refers to image id 999"),
        ("no categories", r"'categories' is empty"),
        ("not coco", r"expected a COCO object"),
    ],
)
def test_a_bad_coco_file_is_a_data_error_naming_it(
    tmp_path: Path, shapes: Path, change: str, message: str
) -> None:
    with pytest.raises(DataError, match=message):
        read_annotations(_coco(tmp_path, shapes, change), shapes / "images")


def test_an_annotations_file_of_another_kind_is_refused(tmp_path: Path, shapes: Path) -> None:
    (tmp_path / "boxes.xml").write_text("<boxes/>")
    with pytest.raises(DataError, match=r"a COCO .json file or a .csv of boxes, found '.xml'"):
        read_annotations(tmp_path / "boxes.xml", shapes / "images")
    with pytest.raises(DataError, match=r"annotations file not found"):
        read_annotations(tmp_path / "none.json", shapes / "images")


# --- malformed masks ---------------------------------------------------------------------------


def test_a_mask_of_another_size_or_with_unknown_ids_is_refused(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((32, 48), np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(DataError, match=r"the mask is 48x32 pixels, its image 64x64"):
        read_mask(tmp_path / "small.png", (64, 64), n_classes=4)
    ids = np.zeros((8, 8), np.uint8)
    ids[0, 0], ids[1, 1], ids[2, 2] = 7, 255, 3
    Image.fromarray(ids).save(tmp_path / "ids.png")
    with pytest.raises(DataError, match=r"class ids \[7\] are not below the 4 classes"):
        read_mask(tmp_path / "ids.png", (8, 8), n_classes=4)
    assert read_mask(tmp_path / "ids.png", (8, 8), n_classes=8)[1, 1] == 255  # ignored pixels


def test_colour_masks_map_through_the_classes(tmp_path: Path) -> None:
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[:2] = (255, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    colours = {(0, 0, 0): 0, (255, 0, 0): 1}
    mask = read_mask(tmp_path / "rgb.png", (4, 4), n_classes=2, colours=colours)
    assert mask[:2].tolist() == [[1] * 4] * 2 and mask[2:].sum() == 0
    rgb[3, 3] = (0, 255, 0)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match=r"colour \(0, 255, 0\) is not in data.classes"):
        read_mask(tmp_path / "rgb.png", (4, 4), n_classes=2, colours=colours)
    with pytest.raises(DataError, match=r"must be grayscale or a palette image, found mode 'RGB'"):
        read_mask(tmp_path / "rgb.png", (4, 4), n_classes=2)


def test_box_annotations_are_plain_data() -> None:
    assert BoxAnnotations([], ["a"]).classes == ["a"]
