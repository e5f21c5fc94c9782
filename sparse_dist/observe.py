"""What a run shows: TensorBoard scalars, a progress bar, memory readings, the remaining-fraction map.

Side effects live on rank 0 only, by construction: :func:`build_metrics_logger` and
:func:`build_progress_bar` return objects that do nothing on the other ranks, so call sites never test
the rank. TensorBoard tags are hierarchical and keyed by optimizer step (``train/loss``,
``eval/accuracy``, ``sys/mem_gib``, ...).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import psutil
import torch
from tqdm import tqdm


class MetricsLogger:
    """Writes scalars to TensorBoard event files under ``<run_dir>/tensorboard``."""

    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, scalars: dict[str, float], step: int) -> None:
        for tag, value in scalars.items():
            self._writer.add_scalar(tag, value, global_step=step)

    def log_text(self, tag: str, text: str, step: int) -> None:
        self._writer.add_text(tag, text, global_step=step)

    def log_remaining_map(self, matrices: dict[str, dict], step: int) -> None:
        """The heat map of remaining fraction per layer and matrix type as an image, and the per-site
        counts it is drawn from as JSON text (what ``sparse-dist report`` reads for an unfinished run)."""
        from sparse_dist.report import (
            REMAINING_MAP_TAG,
            SITE_COUNTS_TAG,
            compute_remaining_grid,
            render_remaining_heatmap_png,
        )

        grid = compute_remaining_grid(matrices)
        image = render_remaining_heatmap_png(grid, f"remaining fraction at step {step}")
        self._writer.add_image(REMAINING_MAP_TAG, image, global_step=step, dataformats="HWC")
        self._writer.add_text(SITE_COUNTS_TAG, json.dumps(matrices), global_step=step)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class NullMetricsLogger:
    """The logger of ranks other than 0, and of runs with TensorBoard switched off."""

    def log(self, scalars: dict[str, float], step: int) -> None:
        pass

    def log_text(self, tag: str, text: str, step: int) -> None:
        pass

    def log_remaining_map(self, matrices: dict[str, dict], step: int) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def build_metrics_logger(run_dir: Path, enabled: bool, is_main: bool) -> MetricsLogger | NullMetricsLogger:
    return MetricsLogger(run_dir / "tensorboard") if enabled and is_main else NullMetricsLogger()


def log_remaining_map(metrics: MetricsLogger | NullMetricsLogger, pruner, step: int) -> None:
    """Log the remaining fraction per layer and matrix type (nothing for a dense run). All ranks call:
    the kept counts are summed over ranks (one all-reduce of one integer per matrix); only rank 0 draws."""
    kept = pruner.kept_per_site()
    if kept:
        metrics.log_remaining_map({site.name: {"kept": count, "total": site.numel, "type": site.kind,
                                               "layer": site.layer} for site, count in zip(pruner.sites, kept)}, step)


def build_progress_bar(total: int, initial: int, enabled: bool, is_main: bool, desc: str = "train") -> tqdm:
    """A tqdm bar over optimizer steps on rank 0; a disabled (silent) bar elsewhere."""
    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                disable=not (enabled and is_main))


def memory_gib(device: torch.device) -> dict[str, float]:
    """Peak accelerator memory (GPU) and resident host memory of this process, in GiB."""
    readings = {"sys/host_mem_gib": psutil.Process(os.getpid()).memory_info().rss / 2**30}
    if device.type == "cuda":
        readings["sys/mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        readings["sys/mem_gib"] = readings["sys/host_mem_gib"]
    return readings
