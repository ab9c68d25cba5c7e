"""Image classification data: a class-per-subfolder directory, a CSV of paths, or a NumPy .npz.

Every image goes through one pipeline, so training, evaluation and prediction see the same
pixels: decode with Pillow (EXIF orientation applied) to grayscale or RGB -> uint8 tensor
(C, H, W) -> the fitted channel count -> resized to cover the fitted size, then center-cropped to
it. That uint8 image is what is stored; augmentation (training only), float conversion and
normalisation happen per batch. The fitted state (classes, size, channels, mean/std,
augmentation) is plain JSON.

One concept per module, in the order data flows:

* :mod:`.sources` reads a folder, a CSV/Parquet of paths or an .npz into a frame of rows;
* :mod:`.decode` decodes and fits images to one size and channel count, and computes channel
  statistics;
* :mod:`.augment` holds the per-sample seeded augmentation and the normalisation;
* :mod:`.batches` batches a uint8 cache in memory (:class:`ImageBatches`) or streams decoded
  samples from DataLoader workers (:class:`StreamBatches`), both bit-identical for a seed;
* :mod:`.preprocess` is the fitted :class:`ImagePreprocessor`;
* :mod:`.prepare` reads, splits, decodes and fits for a run.

``mlsmith.families`` calls :func:`prepare` and :func:`load_preprocessor` on this package.
"""

from __future__ import annotations

from mlsmith.data.images.batches import ImageBatches, StreamBatches
from mlsmith.data.images.decode import decode_file
from mlsmith.data.images.prepare import prepare
from mlsmith.data.images.preprocess import ImagePreprocessor, load_preprocessor

__all__ = [
    "ImageBatches",
    "ImagePreprocessor",
    "StreamBatches",
    "decode_file",
    "load_preprocessor",
    "prepare",
]
