"""Pictures of a search, drawn from its lineage history (matplotlib is imported lazily)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from nas.trial import Evaluation

_FAILED_COLOUR = "#9e9e9e"
_MAX_SIZE = (30.0, 20.0)  # inches
_ANNOTATE_BELOW = 60  # runs


def family_tree(history: list[Evaluation], path: str | Path, title: str = "") -> Path:
    """Draw the lineage of a search as a PNG: one node per run (x: order within its generation,
    y: generation, top to bottom), coloured by validation accuracy (a colour bar; failed runs grey),
    an edge from each parent run to its child labelled with the child's mutation (info["mutation"]).
    Parents outside `history` (another experiment) are drawn as small hollow markers at the top.
    Works for a history without any parents (random search: one row). Returns the path."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    path = Path(path)
    keys = [e.run_id or f"#{i}" for i, e in enumerate(history)]  # runs without an id still get a node
    rows: dict[int, list[int]] = defaultdict(list)
    for i, e in enumerate(history):
        rows[e.candidate.generation].append(i)
    pos: dict[str, tuple[float, float]] = {}
    for gen, members in rows.items():
        for x, i in enumerate(members):
            pos[keys[i]] = (x - (len(members) - 1) / 2, float(gen))
    external = list(dict.fromkeys(p for e in history for p in e.candidate.parents if p not in pos))
    top = (min(rows) if rows else 0) - 1.0
    for x, run_id in enumerate(external):
        pos[run_id] = (x - (len(external) - 1) / 2, top)

    widest = max([len(m) for m in rows.values()] + [len(external), 1])
    n_rows = len(rows) + (1 if external else 0)
    size = (min(max(6.0, 1.0 * widest + 2.5), _MAX_SIZE[0]), min(max(3.0, 1.2 * n_rows + 1.5), _MAX_SIZE[1]))
    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()

    accs = [e.val_acc for e in history if e.ok and e.val_acc is not None]
    lo, hi = (min(accs), max(accs)) if accs else (0.0, 1.0)
    norm = Normalize(vmin=lo - 0.01 if lo == hi else lo, vmax=hi + 0.01 if lo == hi else hi)
    cmap = colormaps["viridis"]

    for key, e in zip(keys, history):
        cx, cy = pos[key]
        for parent in e.candidate.parents:
            px, py = pos[parent]
            ax.plot([px, cx], [py, cy], color="#555555", linewidth=0.8, zorder=1)
            mutation = e.candidate.info.get("mutation")
            if mutation:
                ax.text((px + cx) / 2, (py + cy) / 2, str(mutation), fontsize=6, ha="center", va="center",
                        zorder=2, bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8})
    if external:
        ax.scatter([pos[p][0] for p in external], [top] * len(external), s=30, facecolors="none",
                   edgecolors="#555555", linewidths=1.0, zorder=3)
    colours = [cmap(norm(e.val_acc)) if e.ok and e.val_acc is not None else _FAILED_COLOUR for e in history]
    ax.scatter([pos[k][0] for k in keys], [pos[k][1] for k in keys], s=160, c=colours,
               edgecolors="black", linewidths=0.6, zorder=3)
    if len(history) < _ANNOTATE_BELOW:
        for key, e in zip(keys, history):
            ax.annotate(e.arch_id[:6], pos[key], xytext=(0, -11), textcoords="offset points",
                        fontsize=6, ha="center", va="top", zorder=4)

    ticks = sorted(rows) + ([top] if external else [])
    ax.set_yticks(ticks, [f"gen {int(g)}" for g in sorted(rows)] + (["external"] if external else []), fontsize=7)
    ax.set_xticks([])
    ax.set_ylim(max(ticks, default=0) + 0.7, min(ticks, default=0) - 0.7)  # generation 0 at the top
    ax.set_xlim(-widest / 2 - 0.2, widest / 2 + 0.2)
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, fraction=0.04, pad=0.02)
    bar.set_label("validation accuracy (grey: failed)", fontsize=7)
    bar.ax.tick_params(labelsize=6)
    ax.set_title(title or f"{len(history)} runs", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight")
    return path
