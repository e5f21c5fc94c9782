"""A run at a glance: one PNG, and an HTML page embedding it, drawn from what a run directory holds.

:func:`read_run` collects the TensorBoard scalars (read with tensorboard's ``EventAccumulator``), the
resolved ``config.yaml``, the ``COMPLETED`` summary and the latest checkpoint's manifest; it works on a
finished run, on one a signal stopped (checkpoints, no ``COMPLETED``) and on one still being written.
The per-layer, per-type remaining fractions come from the exported ``sparsity.json`` of a finished run,
else from the last ``prune/kept_per_site`` text summary the trainer logs at every evaluation
(:func:`sparse_dist.observe.log_remaining_map`). :func:`write_report` draws loss and learning rate, the
dev metrics with teacher updates marked, remaining fraction (target and actual), mask flips, and the
heat map of remaining fraction per layer and matrix type.
"""

from __future__ import annotations

import base64
import html
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

SITE_COUNTS_TAG = "prune/kept_per_site"
"""Text summary holding JSON ``{site: {"kept", "total", "type", "layer"}}`` (the ``matrices`` of
``sparsity.json``), logged at every evaluation."""
REMAINING_MAP_TAG = "prune/remaining_map"
"""Image summary: the heat map of remaining fraction per layer and matrix type, at every evaluation."""


class NotARunError(ValueError):
    """A directory that holds no run (no ``config.yaml`` written by the trainer)."""


@dataclass
class RemainingGrid:
    """Remaining fraction per (layer, matrix type); NaN where a layer has no matrix of that type."""

    layers: list[str]
    types: list[str]
    remaining: np.ndarray
    """Shape (len(layers), len(types))."""


@dataclass
class RunRecord:
    """Everything the report draws, read from one run directory."""

    run_dir: Path
    config: dict
    state: str
    """``finished``, ``not finished`` (stopped, or still running) or ``started`` (nothing saved yet)."""
    scalars: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    checkpoint_step: int | None = None
    completed: dict | None = None
    grid: RemainingGrid | None = None
    grid_source: str = ""
    events_age_s: float | None = None
    """Seconds since the event files were last written (a small age suggests a run still going)."""

    @property
    def name(self) -> str:
        return self.config.get("job", {}).get("name", self.run_dir.name)

    @property
    def last_step(self) -> int:
        return max((points[-1][0] for points in self.scalars.values() if points), default=0)

    @property
    def eval_tags(self) -> list[str]:
        return sorted(tag for tag in self.scalars if tag.startswith("eval/"))

    def teacher_update_steps(self) -> list[int]:
        """Evaluation steps at which the teacher was replaced by the student (PINS self-regularization).

        ``teacher/updates`` is a running count logged with the training scalars, and the trainer evaluates
        after logging: a count that rose by k at log step s counts the updates of the last k evaluations
        in [previous log step, s).
        """
        counts = self.scalars.get("teacher/updates", [])
        evals = sorted({step for tag in self.eval_tags for step, _ in self.scalars[tag]})
        marks: list[int] = []
        previous_step, previous_count = 0, 0.0
        for step, count in counts:
            rise = int(round(count - previous_count))
            if rise > 0:
                inside = [s for s in evals if previous_step <= s < step] or [step]
                marks.extend(inside[-rise:])
            previous_step, previous_count = step, count
        return marks


def compute_remaining_grid(matrices: dict[str, dict]) -> RemainingGrid:
    """Remaining fraction per (layer, type) from per-site kept and total counts, in first-seen order."""
    layers: list[str] = []
    types: list[str] = []
    kept: dict[tuple[str, str], list[int]] = {}
    for entry in matrices.values():
        layer, kind = str(entry["layer"]), str(entry["type"])
        if layer not in layers:
            layers.append(layer)
        if kind not in types:
            types.append(kind)
        counts = kept.setdefault((layer, kind), [0, 0])
        counts[0] += int(entry["kept"])
        counts[1] += int(entry["total"])
    remaining = np.full((len(layers), len(types)), np.nan)
    for (layer, kind), (count, total) in kept.items():
        remaining[layers.index(layer), types.index(kind)] = count / total if total else np.nan
    return RemainingGrid(layers, types, remaining)


def draw_remaining_heatmap(ax, grid: RemainingGrid, title: str = "remaining fraction per layer and type") -> None:
    """The heat map on a matplotlib axis: layers down, matrix types across, the fraction in each cell."""
    image = ax.imshow(np.ma.masked_invalid(grid.remaining), vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(grid.types)), grid.types, rotation=45 if len(grid.types) > 8 else 0, ha="right"
                  if len(grid.types) > 8 else "center", fontsize=8)
    ax.set_yticks(range(len(grid.layers)), grid.layers, fontsize=8)
    ax.set_xlabel("matrix type")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=10)
    if grid.remaining.size <= 200:  # numbers stay legible up to about BERT-large's 24 x 6
        for (i, j), value in np.ndenumerate(grid.remaining):
            if not math.isnan(value):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if value > 0.6 else "white")
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.02)


def render_remaining_heatmap_png(grid: RemainingGrid, title: str) -> np.ndarray:
    """The heat map alone as an RGB array (H, W, 3), for TensorBoard's image summaries."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # Margins in inches, rotated type names needing more below; tight_layout would double the cost.
    left, right, top, bottom = 0.8, 1.0, 0.35, 1.3 if len(grid.types) > 8 else 0.6
    width, height = left + right + 0.55 * len(grid.types), top + bottom + 0.28 * len(grid.layers)
    figure = Figure(figsize=(width, height), dpi=90)
    figure.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height)
    canvas = FigureCanvasAgg(figure)
    draw_remaining_heatmap(figure.add_subplot(), grid, title)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


# --- reading a run directory ---------------------------------------------------------------------------


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is a run directory: the trainer writes ``config.yaml`` there before anything else."""
    return (Path(path) / "config.yaml").is_file()


def _read_scalars(log_dir: Path) -> tuple[dict[str, list[tuple[int, float]]], str | None]:
    """Every scalar series (step order) and the last ``prune/kept_per_site`` text, from the event files."""
    if not log_dir.is_dir() or not any(log_dir.glob("events.out.tfevents.*")):
        return {}, None
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # size_guidance 0 keeps every point (the default samples 10,000 scalars and 10 tensors per tag).
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0, "images": 1})
    accumulator.Reload()
    tags = accumulator.Tags()
    scalars = {}
    for tag in tags.get("scalars", []):
        by_step = {event.step: event.value for event in accumulator.Scalars(tag)}  # a resumed step: the last
        scalars[tag] = sorted(by_step.items())
    site_counts = None
    text_tag = f"{SITE_COUNTS_TAG}/text_summary"
    if text_tag in tags.get("tensors", []):
        from tensorboard.util import tensor_util

        last = max(accumulator.Tensors(text_tag), key=lambda event: event.step)
        value = tensor_util.make_ndarray(last.tensor_proto).reshape(-1)[0]
        site_counts = value.decode() if isinstance(value, bytes) else str(value)
    return scalars, site_counts


def _latest_checkpoint_step(run_dir: Path) -> int | None:
    steps = []
    for manifest in (run_dir / "checkpoints").glob("step*/manifest.json"):
        try:
            steps.append(int(json.loads(manifest.read_text())["step"]))
        except (ValueError, KeyError, OSError):
            continue  # a checkpoint being written or damaged: the report does not judge it
    return max(steps, default=None)


def _sparsity_summary(run_dir: Path) -> tuple[dict | None, str]:
    """Per-site counts of the exported model (``final/model/sparsity.json``, or ``export/model``)."""
    for candidate in ("final/model/sparsity.json", "export/model/sparsity.json"):
        path = run_dir / candidate
        if path.is_file():
            return json.loads(path.read_text())["matrices"], candidate
    return None, ""


def read_run(run_dir: str | Path) -> RunRecord:
    """Read one run directory; raises :class:`NotARunError` if it is not one."""
    run_dir = Path(run_dir)
    if not is_run_dir(run_dir):
        reason = "does not exist" if not run_dir.exists() else "has no config.yaml written by a run"
        raise NotARunError(f"{run_dir} is not a run directory: it {reason}")
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    scalars, site_counts = _read_scalars(run_dir / "tensorboard")
    completed_path = run_dir / "COMPLETED"
    completed = json.loads(completed_path.read_text()) if completed_path.is_file() else None
    checkpoint_step = _latest_checkpoint_step(run_dir)
    state = "finished" if completed else "not finished" if checkpoint_step is not None or scalars else "started"
    record = RunRecord(run_dir, config, state, scalars, checkpoint_step, completed)
    events = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    if events:
        record.events_age_s = time.time() - max(p.stat().st_mtime for p in events)
    elif completed:  # TensorBoard off (metrics.tensorboard=false): the evaluations COMPLETED lists
        for entry in completed.get("evals", []):
            for key, value in entry.items():
                if key != "step":
                    tag = "prune/remaining_target" if key == "target_remaining" else f"eval/{key}"
                    record.scalars.setdefault(tag, []).append((entry["step"], value))
        if (config.get("pruning") or {}).get("method", "none") == "none":
            record.scalars.pop("prune/remaining_target", None)
    matrices, source = _sparsity_summary(run_dir) if completed else (None, "")
    if matrices is None and site_counts:
        matrices, source = json.loads(site_counts), f"TensorBoard {SITE_COUNTS_TAG} (last evaluation)"
    if matrices:
        record.grid, record.grid_source = compute_remaining_grid(matrices), source
    return record


# --- drawing -------------------------------------------------------------------------------------------


def _plot(ax, points: list[tuple[int, float]], **style) -> None:
    from matplotlib.ticker import MaxNLocator

    if points:
        steps, values = zip(*points)
        ax.plot(steps, values, **style)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # optimizer steps


def _empty(ax, title: str, message: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="gray")
    ax.set_xticks([])
    ax.set_yticks([])


def _headline(record: RunRecord) -> str:
    model, data, pruning = (record.config.get(k) or {} for k in ("model", "data", "pruning"))
    max_steps = record.config.get("training", {}).get("max_steps", "?")
    method = pruning.get("method") if pruning.get("method") not in (None, "none") else "dense"
    step = record.completed["steps"] if record.completed else record.last_step
    line = (f"{record.name}: {model.get('name_or_path', '?')} on {data.get('task', '?')}, {method}, "
            f"step {step}/{max_steps}, {record.state}")
    if record.state != "finished":
        line += f" (latest checkpoint: step {record.checkpoint_step})" if record.checkpoint_step else " (no checkpoint)"
    if record.completed and record.completed.get("final"):
        line += "; final " + ", ".join(f"{k} {v:.4f}" for k, v in record.completed["final"].items())
    return line


def draw_report(record: RunRecord):
    """The report figure (a matplotlib ``Figure``, no pyplot state)."""
    from matplotlib.figure import Figure

    why = "" if record.events_age_s is not None else "\n(no TensorBoard events: metrics.tensorboard=false?)"

    figure = Figure(figsize=(15, 8.5), dpi=100, layout="constrained")
    grid = figure.add_gridspec(2, 3)
    s = record.scalars

    ax = figure.add_subplot(grid[0, 0])
    if s.get("train/loss"):
        _plot(ax, s["train/loss"], color="tab:blue", label="train/loss")
        for tag, color in (("train/ce_loss", "tab:cyan"), ("train/kd_loss", "tab:purple")):
            _plot(ax, s.get(tag, []), color=color, linewidth=0.8, label=tag)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title("training loss and learning rate", fontsize=10)
        if s.get("train/lr"):
            lr_axis = ax.twinx()
            _plot(lr_axis, s["train/lr"], color="tab:orange", linestyle="--", label="train/lr")
            lr_axis.set_ylabel("learning rate", color="tab:orange")
        ax.legend(loc="best", fontsize=8)
    else:
        _empty(ax, "training loss and learning rate", "no training scalars logged yet" + why)

    ax = figure.add_subplot(grid[0, 1])
    if record.eval_tags:
        for tag in record.eval_tags:
            _plot(ax, s[tag], marker="o", markersize=3, label=tag)
        for i, step in enumerate(record.teacher_update_steps()):
            ax.axvline(step, color="tab:red", linestyle=":", linewidth=1, label="teacher update" if i == 0 else None)
        ax.set_xlabel("step")
        ax.set_title("dev metrics", fontsize=10)
        ax.legend(fontsize=8)
    else:
        _empty(ax, "dev metrics", "no evaluation logged yet" + why)

    ax = figure.add_subplot(grid[0, 2])
    if s.get("prune/remaining") or s.get("prune/remaining_target"):
        _plot(ax, s.get("prune/remaining", []), color="tab:green", marker=".", label="actual")
        _plot(ax, s.get("prune/remaining_target", []), color="black", linestyle="--", linewidth=1, label="target")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("step")
        ax.set_ylabel("fraction of prunable weights")
        ax.set_title("remaining fraction", fontsize=10)
        ax.legend(fontsize=8)
    else:
        _empty(ax, "remaining fraction", "no pruning logged (dense run, or none yet)")

    ax = figure.add_subplot(grid[1, 0])
    if s.get("prune/mask_flips"):
        _plot(ax, s["prune/mask_flips"], color="tab:brown", marker=".")
        ax.set_xlabel("step")
        ax.set_ylabel("fraction of the mask changed")
        ax.set_title("mask flips since the previous log line", fontsize=10)
    else:
        _empty(ax, "mask flips", "not logged" + why)

    ax = figure.add_subplot(grid[1, 1:])
    if record.grid is not None:
        draw_remaining_heatmap(ax, record.grid, f"remaining fraction per layer and type ({record.grid_source})")
    else:
        _empty(ax, "remaining fraction per layer and type", "no per-matrix counts yet (dense run, or no evaluation)")

    figure.suptitle(_headline(record), fontsize=11)
    return figure


def _html_page(record: RunRecord, png: bytes) -> str:
    rows = [("run directory", str(record.run_dir.resolve())), ("state", record.state),
            ("last logged step", str(record.last_step)),
            ("latest checkpoint", f"step {record.checkpoint_step}" if record.checkpoint_step is not None else "none")]
    if record.events_age_s is not None:
        rows.append(("events last written", f"{record.events_age_s:.0f} s before this report"))
    if record.completed:
        rows.append(("final dev", ", ".join(f"{k} {v:.4f}" for k, v in record.completed.get("final", {}).items())))
        if record.completed.get("sparsity"):
            rows.append(("remaining", f"{record.completed['sparsity']['remaining']:.4f}"))
    table = "\n".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    image = base64.b64encode(png).decode("ascii")
    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(record.name)}</title>\n"
            "<style>body{font-family:sans-serif;margin:1.5em}th{text-align:left;padding-right:1em}"
            "img{max-width:100%}</style></head>\n"
            f"<body><h1>{html.escape(record.name)}</h1>\n<table>\n{table}\n</table>\n"
            f"<img alt=\"run report\" src=\"data:image/png;base64,{image}\">\n</body></html>\n")


def write_report(run_dir: str | Path, out_dir: str | Path | None = None) -> tuple[Path, Path]:
    """Write ``report.png`` and ``report.html`` (the PNG embedded) into ``out_dir`` (default: the run
    directory); returns their paths. Raises :class:`NotARunError` for a directory that is not a run."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    record = read_run(run_dir)
    out = Path(out_dir) if out_dir is not None else record.run_dir
    out.mkdir(parents=True, exist_ok=True)
    figure = draw_report(record)
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    png_path, html_path = out / "report.png", out / "report.html"
    png_path.write_bytes(buffer.getvalue())
    html_path.write_text(_html_page(record, buffer.getvalue()))
    return png_path, html_path
