"""Progress bars for long work that do not flood a log: redrawn in place on a terminal, and a
line every half minute when stderr is a file or a pipe (a CI log, `nas serve`, a DVC stage)."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

LOG_INTERVAL_SECONDS = 30.0


class _Bar(tqdm):
    def set_postfix(self, ordered_dict: Any = None, refresh: bool = False, **kwargs: Any) -> None:
        """As tqdm's, but drawn by the next update, at the bar's interval (tqdm redraws at once)."""
        super().set_postfix(ordered_dict, refresh, **kwargs)


def progress(total: int, desc: str, unit: str, **options: Any) -> tqdm:
    """Set the postfix before the update that should show it."""
    interval = 0.1 if sys.stderr.isatty() else LOG_INTERVAL_SECONDS
    return _Bar(total=total, desc=desc, unit=unit, dynamic_ncols=True, mininterval=interval, **options)
