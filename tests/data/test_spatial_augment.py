"""Box- and mask-aware augmentation keeps the targets on the pixels they describe, whatever the
seed and options (property tests over generated scenes)."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mlsmith.data.shapes import draw_scene
from mlsmith.data.spatial_augment import (
    SpatialAugment,
    Targets,
    augment,
    box_bounds,
    build_transform,
)

options = st.builds(
    SpatialAugment,
    hflip=st.booleans(),
    scale_jitter=st.one_of(st.none(), st.just((0.5, 1.5)), st.just((0.8, 2.0))),
    crop=st.booleans(),
)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(scene_seed=st.integers(0, 10_000), seed=st.integers(0, 2**62), option=options)
def test_boxes_stay_the_tight_bounds_of_their_shapes(
    scene_seed: int, seed: int, option: SpatialAugment
) -> None:
    """Each shape's box, moved by the transform, still bounds that shape's pixels moved by the
    same transform: never smaller, and without a crop tight to a pixel or two (masks are
    resampled nearest-neighbour)."""
    scene = draw_scene(np.random.default_rng(scene_seed), 64)
    transform = build_transform(option, boxes=True)
    if transform is None:
        return
    sample = Targets(
        image=torch.from_numpy(scene.image).permute(2, 0, 1).contiguous(),
        boxes=torch.from_numpy(scene.boxes),
        # The instance ids as labels: a kept box says which shape it is.
        labels=torch.arange(1, len(scene.labels) + 1),
        mask=torch.from_numpy(scene.instances),
    )
    out = augment(sample, transform, seed)
    assert out.boxes is not None and out.labels is not None and out.mask is not None
    assert out.image.shape[-2:] == out.mask.shape
    assert len(out.boxes) == len(out.labels)
    height, width = out.mask.shape
    instances = out.mask.numpy()
    for box, instance in zip(out.boxes.tolist(), out.labels.tolist(), strict=True):
        x0, y0, x1, y1 = box
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        bounds = box_bounds(instances, instance)
        if bounds is None:  # a sliver nearest-neighbour resampling dropped entirely
            assert (x1 - x0) * (y1 - y0) < 4
            continue
        # Never smaller than its shape (to the pixel nearest-neighbour resampling may move).
        assert bounds[0] >= x0 - 1.01 and bounds[1] >= y0 - 1.01, (box, bounds)
        assert bounds[2] <= x1 + 1.01 and bounds[3] <= y1 + 1.01, (box, bounds)
        if not option.crop:
            # And tight: a crop cuts a circle's box to the crop, not to the arc it leaves.
            # Shrinking drops thin tips (a triangle's apex) up to one source pixel wide.
            low = option.scale_jitter[0] if option.scale_jitter else 1.0
            tolerance = 1.01 if low >= 1.0 else 1.01 + 1.0 / low
            assert np.allclose(box, bounds, atol=tolerance), (box, bounds)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(scene_seed=st.integers(0, 10_000), seed=st.integers(0, 2**62), option=options)
def test_masks_stay_on_their_pixels(scene_seed: int, seed: int, option: SpatialAugment) -> None:
    """An image painted from its mask (class k at grey 60k) still matches the moved mask inside
    each region (edges blur under bilinear resizing; interiors do not); cropped-in padding is
    the ignore index."""
    scene = draw_scene(np.random.default_rng(scene_seed), 64)
    transform = build_transform(option, boxes=False)
    if transform is None:
        return
    painted = np.repeat((scene.mask * 60)[None], 3, axis=0).astype(np.uint8)
    out = augment(
        Targets(image=torch.from_numpy(painted), mask=torch.from_numpy(scene.mask)), transform, seed
    )
    assert out.mask is not None and out.boxes is None
    mask, image = out.mask.numpy(), out.image[0].numpy().astype(int)
    assert image.shape == mask.shape
    assert set(np.unique(mask)) <= {0, 1, 2, 3, 255}
    # Interior pixels: every pixel within r shares the class, r beyond the reach of bilinear
    # resampling (one output pixel, or the scale factor when enlarging).
    r = 1 + (int(np.ceil(option.scale_jitter[1])) if option.scale_jitter else 0)
    padded = np.pad(mask, r, mode="edge")
    same = np.ones(mask.shape, dtype=bool)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            same &= padded[r + dy : r + dy + mask.shape[0], r + dx : r + dx + mask.shape[1]] == mask
    interior = same & (mask != 255)
    error = np.abs(image - 60 * mask.astype(int))
    if option.scale_jitter is None or option.scale_jitter[0] >= 1.0:
        assert error[interior].max(initial=0) <= 2
    else:
        # Shrinking resamples the mask nearest-neighbour and the image by averaging: a thin
        # tip the mask drops still tints the image. Nearly every interior pixel agrees all the
        # same (worst seen: 0.965 over 1,200 scenes); a mask left unflipped against its image
        # agrees on 0.84 of them (median).
        assert (error[interior] <= 2).mean() >= 0.95


def test_one_seed_one_augmentation() -> None:
    scene = draw_scene(np.random.default_rng(1), 64)
    transform = build_transform(
        SpatialAugment(hflip=True, scale_jitter=(0.5, 1.5), crop=True), boxes=True
    )
    assert transform is not None
    sample = Targets(
        image=torch.from_numpy(scene.image).permute(2, 0, 1).contiguous(),
        boxes=torch.from_numpy(scene.boxes),
        labels=torch.from_numpy(scene.labels),
    )
    first, again = augment(sample, transform, 7), augment(sample, transform, 7)
    assert torch.equal(first.image, again.image) and torch.equal(first.boxes, again.boxes)
    state = torch.get_rng_state()
    augment(sample, transform, 8)
    assert torch.equal(torch.get_rng_state(), state)  # the global stream is untouched
    assert build_transform(SpatialAugment(), boxes=True) is None
