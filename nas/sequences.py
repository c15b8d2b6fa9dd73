"""Sequence data sets generated on the fly (nothing to download), for searching recurrent cells."""

from __future__ import annotations

import numpy as np


def adding_problem(n: int, length: int, seed: int, classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """The adding problem (Hochreiter & Schmidhuber 1997) as a classification task.

    Each of the `n` sequences has two channels over `length` steps: channel 0 holds values
    drawn uniformly from [0, 1), channel 1 is a marker that is 1.0 at exactly two steps, one
    in the first half (steps 0 .. length//2 - 1) and one in the second, and 0.0 elsewhere.
    The network must add the two marked values; their sum s lies in [0, 2).

    The original task regresses s, but this project trains classifiers only, so the label is
    s quantised into `classes` equal-width bins over [0, 2): y = min(floor(s / 2 * classes),
    classes - 1). Solving it still needs the network to find and remember both marked values
    across the whole sequence; more classes make the target finer.

    Returns x of shape (n, 2, length), float32, and y of shape (n,), int64. The same
    arguments always give the same arrays (a numpy Generator seeded with `seed`).
    """
    if n < 1:
        raise ValueError(f"n (the number of sequences) must be at least 1, got {n}.")
    if length < 2:
        raise ValueError(f"length must be at least 2 so that each half can hold a marker, got {length}.")
    if classes < 2:
        raise ValueError(f"classes must be at least 2, got {classes}.")
    rng = np.random.default_rng(seed)
    values = rng.random((n, length), dtype=np.float32)
    half = length // 2
    first = rng.integers(0, half, size=n)
    second = rng.integers(half, length, size=n)
    rows = np.arange(n)
    markers = np.zeros((n, length), dtype=np.float32)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    # Add in float64 so the label follows exactly from the float32 values a model sees.
    total = values[rows, first].astype(np.float64) + values[rows, second]
    y = np.minimum((total / 2 * classes).astype(np.int64), classes - 1)
    return np.stack([values, markers], axis=1), y
