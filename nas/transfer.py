"""Transfer from the lineage store: candidates start from another run's weights.

`--init-from` names a run, or an experiment (meaning its best run), trained perhaps on
another data set. Every candidate that inherits nothing else (a mutation's parent, a
shorter rung it continues) starts from that run's weights: training loads each tensor
whose node and shape match (`nas.train`), so a network of another layout still takes what
fits, and a head for another number of classes starts fresh. The source is the
candidate's `inherit_from`, so it is part of the trial key, and a parent in its lineage
(`nas.parents`, `nas.transfer_from`), so `nas lineage` draws the edge across experiments.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from nas.lineage import LineageError, LineageStore
from nas.loop import Submit
from nas.trial import Candidate


def transfer_source(init_from: str, tracking_uri: str | None, root: Path) -> str:
    """The run `init_from` names: the best run of the experiment of that name, else the run of that id."""
    best = LineageStore(tracking_uri, init_from, root).best(1)
    if best:
        return str(best[0].run_id)
    try:
        LineageStore(tracking_uri, init_from, root).weights(init_from)
    except LineageError as error:
        raise LineageError(f"--init-from {init_from} names neither an experiment with a finished trial nor a run "
                           f"with weights ({error}). Pass an experiment name or a run id from `nas runs`.") from None
    return init_from


def transferred(candidate: Candidate, source: str) -> Candidate:
    """The candidate starting from `source`'s weights, unless it already inherits or continues a run."""
    if candidate.inherit_from or candidate.resume_from:
        return candidate
    return replace(candidate, inherit_from=source, parents=(*candidate.parents, source),
                   info={**candidate.info, "transfer_from": source})


def transferring(submit: Submit, source: str) -> Submit:
    """A runner that trains every candidate `transferred` from `source` (the strategy never sees it:
    the loop tells each result with the strategy's own candidate)."""
    return lambda candidate: submit(transferred(candidate, source))


__all__ = ["transfer_source", "transferred", "transferring"]
