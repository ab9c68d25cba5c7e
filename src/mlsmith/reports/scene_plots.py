"""Figures for detection and segmentation runs: validation images with the truth beside the
prediction (boxes drawn, or masks painted), and each class's precision-recall curve.

They are drawn once, when the run is scored (the images are at hand then), and kept as PNG
files in the run directory, which the report embeds.
"""

from __future__ import annotations

import numpy as np

from mlsmith.reports.plots import WIDTH, figure, legend, to_png

GRID_FILE = "scene_grid.png"
PR_FILE = "pr_curves.png"
GRID_IMAGES = 6
MIN_SCORE_SHOWN = 0.3  # detections below this score are left out of the picture


def _shown(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    return (image[0], "gray") if image.shape[0] == 1 else (image.transpose(1, 2, 0), None)


def scene_grid(
    images: np.ndarray, truth: np.ndarray, decoded: np.ndarray, kind: str, classes: list[str]
) -> bytes | None:
    """The first images of a split in two rows, the truth above the prediction."""
    count = min(GRID_IMAGES, len(images))
    if count == 0:
        return None
    from matplotlib import colormaps
    from matplotlib.patches import Rectangle

    palette = colormaps["tab10"]
    with figure(width=WIDTH * 1.6, height=5.2, layout=None) as fig:
        fig.subplots_adjust(left=0.06, right=0.99, top=0.88, bottom=0.02, hspace=0.08, wspace=0.05)
        axes = fig.subplots(2, GRID_IMAGES, squeeze=False)
        for row, (title, targets) in enumerate((("truth", truth), ("predicted", decoded))):
            axes[row][0].set_ylabel(title, fontsize=9)
            for c in range(GRID_IMAGES):
                ax = axes[row][c]
                ax.set_xticks([])
                ax.set_yticks([])
                if c >= count:
                    ax.axis("off")
                    continue
                pixels, cmap = _shown(images[c])
                ax.imshow(pixels, cmap=cmap)
                if kind == "segmentation":
                    mask = np.ma.masked_where(
                        (targets[c] == 0) | (targets[c] == 255), targets[c].astype(float)
                    )
                    ax.imshow(mask, cmap="tab10", vmin=0, vmax=9, alpha=0.55, interpolation="none")
                    continue
                rows = targets[c]
                labels = rows[:, 4] if row == 0 else rows[:, 5]
                keep = (labels > 0) & ((rows[:, 4] >= MIN_SCORE_SHOWN) if row == 1 else True)
                for box, label in zip(rows[keep, :4], labels[keep], strict=True):
                    colour = palette(int(label) % 10)
                    ax.add_patch(
                        Rectangle(
                            (box[0], box[1]),
                            box[2] - box[0],
                            box[3] - box[1],
                            fill=False,
                            edgecolor=colour,
                            linewidth=1.2,
                        )
                    )
        # Colour i is class id i (a mask's value, a box's label); a mask's id 0 is background.
        names = classes[1:] if kind == "segmentation" else classes
        handles = [Rectangle((0, 0), 1, 1, color=palette(i % 10)) for i in range(1, len(names) + 1)]
        fig.legend(handles, names, loc="upper right", fontsize=8, ncol=len(names))
        what = "masks" if kind == "segmentation" else f"boxes (score >= {MIN_SCORE_SHOWN})"
        fig.suptitle(f"Validation images: true and predicted {what}", fontsize=10, x=0.3)
        return to_png(fig)


def pr_curves(precision: np.ndarray, classes: list[str]) -> bytes | None:
    """Each class's precision at recall 0..1 (IoU 0.5), its AP in the legend."""
    from mlsmith.vision_metrics import RECALL_POINTS

    if not np.isfinite(precision).any():
        return None
    with figure() as fig:
        ax = fig.subplots()
        for k, name in enumerate(classes):
            if not np.isfinite(precision[k]).all():
                continue
            ax.plot(RECALL_POINTS, precision[k], label=f"{name} (AP {precision[k].mean():.3f})")
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_title("Precision-recall per class, IoU 0.5 (validation)")
        legend(ax)
        return to_png(fig)
