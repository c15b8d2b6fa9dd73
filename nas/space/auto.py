"""`--space auto`: a search space chosen from the shape of the data.

Images (C, H, W) get 2-D convolutions, signals (C, L) 1-D convolutions, and flat vectors
(F,) a space that holds both perceptrons and 1-D convolutions over the features: a table
of named columns rarely has an order that convolutions could use, but a series stored one
value per column does, and only training tells the two apart.

    >>> path, note = resolve_space("auto", (40,))
    >>> note
    'space auto: flat vectors of 40 features -> spaces/flat.yaml (perceptrons and 1-D convolutions over the features)'
    >>> sequence_hint([f"x{i}" for i in range(40)])
    'the columns x0..x39 look like a sequence; --shape 1,40 searches 1-D convolutions over it directly'
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from nas.space.domain import SpaceError

SPACES = Path(__file__).resolve().parents[2] / "spaces"
SMALL_IMAGE = 16  # images up to 16x16 (digits' 8x8) get the focused space, which random search covers in few trials
MIN_SEQUENCE = 3  # fewer points than the smallest kernel is no sequence to convolve over


def resolve_space(space: str, shape: tuple[int, ...],
                  columns: Sequence[str] | None = None) -> tuple[str, str]:
    """(path of the space file, one line for the user): a path is kept, "auto" is chosen
    from `shape` (one example, no batch); `columns` (flat data's feature names) may add
    a hint that the features are a sequence."""
    if space != "auto":
        return space, f"space {space}"
    if len(shape) == 3:
        c, h, w = shape
        small = h <= SMALL_IMAGE and w <= SMALL_IMAGE
        name, what = (("small-cnn.yaml", "a few stride-1 2-D conv blocks for small images") if small
                      else ("cnn.yaml", "2-D conv blocks with pooling and skips"))
        found = f"images of {c}x{h}x{w}"
    elif len(shape) == 2:
        name, what = "conv1d.yaml", "1-D convolutions over the length"
        found = f"signals of {shape[0]} channel{'s' * (shape[0] != 1)} x {shape[1]} points"
    elif len(shape) == 1:
        name, what = "flat.yaml", "perceptrons and 1-D convolutions over the features"
        found = f"flat vectors of {shape[0]} features"
    else:
        raise SpaceError(f"--space auto has no space for examples of shape {shape}; it knows images (C,H,W), "
                         "signals (C,L) and flat vectors (F,). Pass --space with a YAML file, or --shape.")
    note = f"space auto: {found} -> spaces/{name} ({what})"
    hint = sequence_hint(columns) if len(shape) == 1 and columns else None
    return str(SPACES / name), note + (f"; {hint}" if hint else "")


def sequence_hint(columns: Sequence[str]) -> str | None:
    """A hint when feature columns are a common prefix plus consecutive integers (x0..x39,
    f_1..f_40): such a table is a signal, and --shape can say so. None otherwise."""
    parts = [re.fullmatch(r"(.*?)(\d+)", name) for name in columns]
    if len(columns) < MIN_SEQUENCE or not all(parts):
        return None
    prefixes = {m.group(1) for m in parts}
    numbers = [int(m.group(2)) for m in parts]
    if len(prefixes) != 1 or numbers != list(range(numbers[0], numbers[0] + len(numbers))):
        return None
    return (f"the columns {columns[0]}..{columns[-1]} look like a sequence; --shape 1,{len(columns)} "
            "searches 1-D convolutions over it directly")
