"""Tiny labelled text data for the text tests: a learnable signal, varied lengths, gaps."""

from __future__ import annotations

import numpy as np
import pandas as pd

# Words with no class signal, and words that give each class away (a text carries 1 to 3).
_FILLER = """the a film movie story plot and of to it is this that with as for its on but an by
director actors scene scenes script cast one two very more most quite rather almost"""
_SIGNAL = {
    "positive": "great wonderful moving brilliant delightful superb charming funny",
    "negative": "dull boring tedious awful clumsy bland lifeless messy",
    "neutral": "documentary sequel remake trilogy biopic adaptation anthology prequel",
}
FILLER = _FILLER.split()
SIGNAL = {label: words.split() for label, words in _SIGNAL.items()}


def make_texts(kind: str = "binary", rows: int = 200, seed: int = 0) -> pd.DataFrame:
    """Columns ``text`` and ``label``; 2 classes (binary) or 3 (multiclass).

    Texts are 2 to 30 words long, so batches need padding; a few labels are flipped so the task
    is not trivially separable.
    """
    rng = np.random.default_rng(seed)
    classes = ["negative", "positive"] if kind == "binary" else ["negative", "neutral", "positive"]
    labels = rng.choice(classes, size=rows)
    texts = []
    for label in labels:
        words = list(rng.choice(FILLER, size=rng.integers(1, 28)))
        words += list(rng.choice(SIGNAL[label], size=rng.integers(1, 4)))
        rng.shuffle(words)
        texts.append(" ".join(words).capitalize() + rng.choice([".", "!", "..."]))
    flip = rng.random(rows) < 0.05
    labels[flip] = rng.choice(classes, size=int(flip.sum()))
    return pd.DataFrame({"text": texts, "label": labels})
