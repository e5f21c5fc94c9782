"""The memory planner against the scale benchmark's measured per-rank peaks (issue 14: within 15%).

    python benchmarks/planner_validation.py       # writes benchmarks/results/planner_validation.{json,md,png}

Run from the repository root: a run's ``zero.template`` override names its file relative to it.

Trains nothing. For every cell (model, method, teacher) of ``benchmarks/results/scale_benchmark*.json`` it
rebuilds the cell's config exactly as the benchmark did (the model's config from
``scale_benchmark.MODELS``; the run's recorded common overrides, the model's, the method's and the run's
``extra_overrides`` from ``--set``, in that order), runs :func:`sparse_dist.plan.plan_all_ranks`
in-process with the CPU rules (``--cpu``: fp32, torch's AdamW) at the cell's world size (2), and compares
each rank's predicted total (exact lines and estimates; on a CPU all of it is host memory) with that
rank's measured peak resident set (``VmHWM``). The error of a cell is that of its worse rank:
``(predicted - measured) / measured``. A minute on 2 cores (meta-device models only).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from provenance import provenance
from scale_benchmark import MODELS
from sparse_dist.config import load_config
from sparse_dist.plan import EXACT, malloc_mmap_threshold, plan_all_ranks

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
TARGET = 0.15
"""Issue 14: predicted per-rank memory within 15% of the measured peak."""


def measured_cells(results: Path) -> list[dict]:
    """Every cell of every ``scale_benchmark*.json`` with the overrides it ran with."""
    cells = []
    for path in sorted(results.glob("scale_benchmark*.json")):
        report = json.loads(path.read_text())
        for row in report["results"]:
            config_path, model_overrides = MODELS[row["model"]]
            cells.append({"source": path.name, "commit": report["commit"], "model": row["model"],
                          "method": row["method"], "world_size": row["world_size"], "config": config_path,
                          "overrides": [*report["common_overrides"], *model_overrides,
                                        *report["methods"][row["method"]], *report.get("extra_overrides", [])],
                          "measured_bytes": row["peak_rss_bytes"], "rss_at_start_bytes": row["rss_at_start_bytes"],
                          "mmap_threshold": malloc_mmap_threshold(report.get("malloc_environment", {}))})
    return cells


def validate(cell: dict) -> dict:
    """The cell with the planner's lines and totals per rank and the relative error of its worse rank."""
    config = load_config(REPO / cell["config"], cell["overrides"], world_size=cell["world_size"])
    plans = plan_all_ranks(config, cell["world_size"], on_gpu=False, mmap_threshold=cell["mmap_threshold"])
    predicted = [plan.device_total() + plan.host_total() for plan in plans]
    errors = [(p - m) / m for p, m in zip(predicted, cell["measured_bytes"])]
    worst = max(range(len(errors)), key=lambda r: abs(errors[r]))
    return {**cell, "parameters": plans[0].parameters, "predicted_bytes": predicted,
            "predicted_exact_bytes": [plan.device_total(EXACT) + plan.host_total(EXACT) for plan in plans],
            "lines": {line.name: line.total_bytes for line in plans[worst].lines},
            "errors": errors, "error": errors[worst], "within_target": all(abs(e) <= TARGET for e in errors)}


def markdown(rows: list[dict]) -> str:
    def gib(n: float) -> str:
        return f"{n / 2**30:.2f}"

    out = ["| model | method | parameters | measured peak (GiB, worse rank) | predicted (GiB) | of which exact | "
           "error | within 15% | source |", "|---|---|--:|--:|--:|--:|--:|---|---|"]
    for row in rows:
        r = row["errors"].index(row["error"])
        out.append(f"| {row['model']} | {row['method']} | {row['parameters'] / 1e6:,.2f}M | "
                   f"{gib(row['measured_bytes'][r])} | {gib(row['predicted_bytes'][r])} | "
                   f"{gib(row['predicted_exact_bytes'][r])} | {row['error']:+.1%} | "
                   f"{'yes' if row['within_target'] else 'no'} | {row['source']} |")
    within = sum(row["within_target"] for row in rows)
    out.append(f"\n{within} of {len(rows)} cells within {TARGET:.0%}; errors from {min(r['error'] for r in rows):+.1%} "
               f"to {max(r['error'] for r in rows):+.1%}.")
    return "\n".join(out)


def plot(rows: list[dict], path: Path) -> None:
    """Predicted and measured per-rank memory against parameter count (log-log), one colour per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, err) = plt.subplots(1, 2, figsize=(12, 4.5))
    methods = sorted({row["method"] for row in rows})
    colours = dict(zip(methods, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for method in methods:
        mine = [row for row in rows if row["method"] == method]
        x = [row["parameters"] for row in mine]
        ax.scatter(x, [max(row["measured_bytes"]) / 2**30 for row in mine], marker="o", color=colours[method],
                   label=f"{method} measured")
        ax.scatter(x, [max(row["predicted_bytes"]) / 2**30 for row in mine], marker="x", color=colours[method],
                   label=f"{method} predicted")
        err.scatter(x, [100 * row["error"] for row in mine], color=colours[method], label=method)
    ax.set(xscale="log", yscale="log", xlabel="parameters", ylabel="per-rank memory (GiB)",
           title="ZeRO-3, 2 ranks, CPU: peak RSS (o) and planner (x)")
    ax.legend(fontsize=6, ncol=2)
    for bound in (-100 * TARGET, 100 * TARGET):
        err.axhline(bound, color="grey", linestyle="--", linewidth=0.8)
    err.set(xscale="log", xlabel="parameters", ylabel="(predicted - measured) / measured (%)",
            title="planner error per cell (worse rank); dashed: +-15%")
    err.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", type=Path, default=RESULTS,
                        help="where scale_benchmark*.json are read and planner_validation.{json,md,png} go")
    parser.add_argument("--output", default="planner_validation", help="stem of the files written")
    args = parser.parse_args()
    rows = [validate(cell) for cell in measured_cells(args.results_dir)]
    rows.sort(key=lambda row: (row["parameters"], row["method"], row["source"]))
    table = markdown(rows)
    (args.results_dir / f"{args.output}.json").write_text(
        json.dumps({**provenance(), "target": TARGET, "cells": rows}, indent=1))
    (args.results_dir / f"{args.output}.md").write_text(table + "\n")
    plot(rows, args.results_dir / f"{args.output}.png")
    print(table)


if __name__ == "__main__":
    main()
