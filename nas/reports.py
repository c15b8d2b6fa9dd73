"""Pictures of a search, drawn from its lineage history, and of a recurrent cell (matplotlib is
imported lazily)."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nas.space.cell import CellSpec, tree_children
from nas.trial import Evaluation

_FAILED_COLOUR = "#9e9e9e"
_MAX_SIZE = (30.0, 20.0)  # inches
_ANNOTATE_BELOW = 60  # runs
_PLOT_SIZE = (7.0, 4.0)  # inches

# Column orders of the row helpers, so that an empty history still gives a CSV with a header.
TRAJECTORY_COLUMNS = ("trial", "val_acc", "best_val_acc")
PARETO_COLUMNS = ("run_id", "arch_id", "params", "val_acc", "pareto")


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


def _finished(e: Evaluation) -> bool:
    return e.ok and e.val_acc is not None


def trajectory_rows(history: list[Evaluation]) -> list[dict[str, Any]]:
    """One row per trial in history order: its validation accuracy (None if it failed) and the best
    accuracy over the finished trials so far (None until the first success)."""
    rows: list[dict[str, Any]] = []
    best: float | None = None
    for i, e in enumerate(history, start=1):
        val = e.val_acc if _finished(e) else None
        if val is not None and (best is None or val > best):
            best = val
        rows.append({"trial": i, "val_acc": val, "best_val_acc": best})
    return rows


def pareto_front(points: list[tuple[int, float]]) -> list[int]:
    """Indices of the (params, accuracy) points that no other point beats on both (fewer or equal
    params and higher or equal accuracy, one strictly), sorted by params. Of equal points only the
    first is kept, so the front has no duplicates."""
    # Cheapest first, and among equal params the most accurate (then the earliest) first: a point
    # is on the front exactly when it is more accurate than everything before it in this order.
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1], i))
    front: list[int] = []
    for i in order:
        if not front or points[i][1] > points[front[-1]][1]:
            front.append(i)
    return front


def pareto_rows(history: list[Evaluation]) -> list[dict[str, Any]]:
    """One row per finished trial in history order, `pareto` marking the accuracy/size front."""
    done = [(e, e.val_acc) for e in history if _finished(e)]
    front = set(pareto_front([(e.params, val) for e, val in done]))
    return [{"run_id": e.run_id, "arch_id": e.arch_id, "params": e.params, "val_acc": val,
             "pareto": i in front} for i, (e, val) in enumerate(done)]


def write_csv(rows: list[dict[str, Any]], path: str | Path, columns: Sequence[str]) -> Path:
    """Write rows as CSV (None as an empty cell) under the header `columns`, which an empty file
    still gets: `dvc plots` needs it. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


def _axes(title: str) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=_PLOT_SIZE, dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=9)
    ax.grid(True, linewidth=0.4, alpha=0.5)
    return fig, ax


def _note(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=9, color="#555555")


def _save(fig: Any, ax: Any, path: str | Path) -> Path:
    if ax.get_legend_handles_labels()[0]:  # an empty legend only warns
        ax.legend(fontsize=7, loc="best")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight")
    return path


def trajectory_plot(history: list[Evaluation], path: str | Path, title: str = "") -> Path:
    """Draw the search's progress as a PNG: each trial's validation accuracy as a dot (failed trials
    as grey crosses along the bottom), the best so far as a step line, x the trial number.
    Returns the path."""
    from matplotlib.ticker import MaxNLocator

    rows = trajectory_rows(history)
    fig, ax = _axes(title or f"{len(rows)} trials")
    done = [r for r in rows if r["val_acc"] is not None]
    failed = [r["trial"] for r in rows if r["val_acc"] is None]
    if done:
        ax.scatter([r["trial"] for r in done], [r["val_acc"] for r in done], s=18, color="tab:blue",
                   zorder=3, label="trial")
        best = [r for r in rows if r["best_val_acc"] is not None]
        ax.step([r["trial"] for r in best], [r["best_val_acc"] for r in best], where="post",
                color="tab:orange", linewidth=1.5, zorder=2, label="best so far")
    if failed:
        # Failures have no accuracy: pin them to the bottom edge (axes coordinates) so that they
        # never stretch the accuracy range.
        ax.plot(failed, [0.02] * len(failed), linestyle="none", marker="x", color=_FAILED_COLOUR,
                transform=ax.get_xaxis_transform(), clip_on=False, zorder=3, label="failed")
    if not done:
        ax.set_ylim(0.0, 1.0)  # nothing sets a range: show the whole accuracy scale
        _note(ax, "no finished trials" if rows else "no trials")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel("validation accuracy")
    return _save(fig, ax, path)


def pareto_plot(history: list[Evaluation], path: str | Path, title: str = "") -> Path:
    """Draw validation accuracy against parameter count (log scale) as a PNG: every finished trial
    as a dot, the Pareto front highlighted and joined by a step line. Returns the path."""
    rows = pareto_rows(history)
    fig, ax = _axes(title or f"{len(rows)} finished trials")
    # A log axis cannot show a count of zero (unmeasured): leave those out and say so.
    shown = [r for r in rows if r["params"] > 0]
    front = sorted((r for r in shown if r["pareto"]), key=lambda r: r["params"])
    if shown:
        ax.scatter([r["params"] for r in shown], [r["val_acc"] for r in shown], s=18, color="tab:blue",
                   alpha=0.6, zorder=2, label="trial")
        ax.step([r["params"] for r in front], [r["val_acc"] for r in front], where="post",
                color="tab:red", linewidth=1.2, zorder=3)
        ax.scatter([r["params"] for r in front], [r["val_acc"] for r in front], s=40, color="tab:red",
                   edgecolors="black", linewidths=0.6, zorder=4, label="Pareto front")
        ax.set_xscale("log")
    hidden = len(rows) - len(shown)
    if not shown:
        _note(ax, f"{hidden} finished trials without a parameter count" if hidden else "no finished trials")
    elif hidden:
        ax.text(0.01, 0.01, f"{hidden} without a parameter count not shown", transform=ax.transAxes,
                fontsize=7, color="#555555")
    ax.set_xlabel("parameters (log scale)" if shown else "parameters")
    ax.set_ylabel("validation accuracy")
    return _save(fig, ax, path)


def write_plot_data(history: list[Evaluation], folder: str | Path) -> list[Path]:
    """The CSVs `dvc plots` draws: the trajectory, every trial's size and accuracy, and the Pareto front alone."""
    folder = Path(folder)
    pareto = pareto_rows(history)
    return [write_csv(trajectory_rows(history), folder / "trajectory.csv", TRAJECTORY_COLUMNS),
            write_csv(pareto, folder / "pareto.csv", PARETO_COLUMNS),
            write_csv([r for r in pareto if r["pareto"]], folder / "pareto_front.csv", PARETO_COLUMNS)]


def one_shot_plot(curve: list[dict[str, float]], scores: Sequence[float]) -> bytes:
    """A PNG of a SMASH hypernetwork: its training curve (loss and batch accuracy by step) beside
    a histogram of the candidates' scores."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    train, hist = fig.subplots(1, 2)
    steps = [c["step"] for c in curve]
    train.plot(steps, [c["loss"] for c in curve], color="tab:blue", label="loss")
    train.set_xlabel("step (one batch of one new network)")
    train.set_ylabel("loss", color="tab:blue")
    accuracy = train.twinx()
    accuracy.plot(steps, [c["accuracy"] for c in curve], color="tab:orange")
    accuracy.set_ylabel("batch accuracy", color="tab:orange")
    train.set_title("hypernetwork training", fontsize=9)
    hist.hist(list(scores), bins=30, color="tab:green")
    hist.set_xlabel("validation accuracy with generated weights")
    hist.set_ylabel("candidates")
    hist.set_title(f"{len(scores)} candidates scored", fontsize=9)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()


def draw_cell(spec: CellSpec) -> bytes:
    """A PNG of the cell's tree: leaves at the bottom, the root (h_t) on top, the memory path if any."""
    import textwrap

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    level, lift = 3.0, 1.5  # vertical gap between tree levels; height of an inject box above its node
    memory, ink = "#b07a2a", "#444444"
    fig = Figure(figsize=(8, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.01, 0.01, 0.98, 0.88))
    ax.set_axis_off()
    fig.suptitle(textwrap.fill(spec.describe(), 120), fontsize=7)

    # Leaves sit at x = 0..base-1, each parent midway above its two children.
    pos: dict[int, tuple[float, float]] = {i: (float(i), 0.0) for i in range(spec.base)}
    children = tree_children(spec.base)
    for parent, (left, right) in children.items():
        pos[parent] = ((pos[left][0] + pos[right][0]) / 2, pos[left][1] + level)

    # Boxes are drawn before the arrows, which are clipped at the boxes' outlines.
    boxes: dict[str, Any] = {}

    def box(key: str, text: str, xy: tuple[float, float], color: str = "#3b6ea5", fill: str = "#dbe8f5") -> None:
        boxes[key] = ax.annotate(text, xy, ha="center", va="center", fontsize=8,
                                 bbox={"boxstyle": "round", "facecolor": fill, "edgecolor": color})

    def arrow(src: tuple[float, float], dst: tuple[float, float], color: str = ink, text: str = "",
              patch_a: str | None = None, patch_b: str | None = None) -> None:
        """An arrow src -> dst, with `text` at src; a named box at either end cuts the arrow at its outline."""
        ends = {"patchA": boxes[patch_a].get_bbox_patch() if patch_a else None,
                "patchB": boxes[patch_b].get_bbox_patch() if patch_b else None}
        ax.annotate(text, xy=dst, xytext=src, ha="center", va="center", fontsize=8, color=color,
                    arrowprops={"arrowstyle": "->", "color": color, "shrinkA": 3, "shrinkB": 2,
                                **{k: v for k, v in ends.items() if v is not None}})

    for i, op in enumerate(spec.nodes):
        box(str(i), "\n".join(op), pos[i])
    # Where each node's output leaves from: its inject box when c_{t-1} is injected there.
    out = {str(i): str(i) for i in range(spec.size)}
    if spec.inject is not None and spec.inject_at is not None and spec.memory_from is not None:
        # The memory arrows keep to the side of a node away from the edge to its parent.
        right_children = {right for _, right in children.values()}

        def away(node: int) -> float:
            return 0.4 if node in right_children else -0.4

        x, y = pos[spec.inject_at]
        box("inject", "\n".join(spec.inject), (x, y + lift), color=memory, fill="#f5e3c8")
        out[str(spec.inject_at)] = "inject"
        arrow(pos[spec.inject_at], (x, y + lift), patch_a=str(spec.inject_at), patch_b="inject")
        arrow((x + away(spec.inject_at), y + lift + 0.8), (x, y + lift), memory, "$c_{t-1}$", patch_b="inject")
        mx, my = pos[spec.memory_from]
        arrow((mx, my), (mx + away(spec.memory_from), my + 0.8), memory, patch_a=str(spec.memory_from))
        ax.annotate("$c_t$", (mx + 1.2 * away(spec.memory_from), my + 0.95), ha="center", fontsize=8, color=memory)
    for i in range(spec.base):
        arrow((i - 0.2, -1.2), pos[i], text="$x_t$", patch_b=str(i))
        arrow((i + 0.2, -1.2), pos[i], text="$h_{t-1}$", patch_b=str(i))
    for parent, (left, right) in children.items():
        for child in (left, right):
            source = out[str(child)]
            arrow(boxes[source].xy, pos[parent], patch_a=source, patch_b=str(parent))
    root = out[str(spec.size - 1)]
    root_x, root_y = boxes[root].xy
    arrow((root_x, root_y), (root_x, root_y + 1.1), patch_a=root)
    ax.annotate("$h_t$", (root_x, root_y + 1.3), ha="center", va="center", fontsize=9)

    ax.set_xlim(-1, spec.base)  # centred on the leaves
    ax.set_ylim(-1.6, root_y + 1.8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
