"""The memory planner's table for docs/planner.md: PINS with its self-regularization teacher on t5-large, t5-3b
and t5-11b, ZeRO-3 in bf16 on 8, 16 and 64 GPUs of 80 GB, optimizer offloaded (as configs/pins_t5_large.yaml
ships) and not.

    python benchmarks/planner_table.py            # writes benchmarks/results/planner_table.json and .md

Nothing is allocated: each row is :func:`sparse_dist.plan.plan_all_ranks` of ``configs/pins_t5_large.yaml``
with the model, the world size, the offload and a global batch of 256 (it must divide by 4 x 64; the
per-rank memory depends on the micro-batch, not on it) overridden, at the rank with the most device bytes:
the same numbers as ``sparse-dist plan --config configs/pins_t5_large.yaml --world-size N --json
model.name_or_path=M training.global_batch_size=256 zero.offload_optimizer=B``. A minute or two on 2 cores.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from provenance import provenance
from sparse_dist.config import load_config
from sparse_dist.plan import EXACT, parse_memory, plan_all_ranks

RESULTS = Path(__file__).resolve().parent / "results"
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "pins_t5_large.yaml"
MODELS, GPUS, DEVICE_MEMORY = ("t5-large", "t5-3b", "t5-11b"), (8, 16, 64), parse_memory("80GB")
COLUMNS = ("weights", "gradients", "optimizer state", "importance statistics", "masks")


def plan_row(model: str, gpus: int, offload: bool) -> dict:
    overrides = [f"model.name_or_path={model}", "training.global_batch_size=256",
                 f"zero.offload_optimizer={str(offload).lower()}"]
    config = load_config(CONFIG, overrides, world_size=gpus)
    plan = max(plan_all_ranks(config, gpus, on_gpu=True), key=lambda p: (p.device_total(), -p.rank))
    return {"model": model, "gpus": gpus, "offload_optimizer": offload, "overrides": overrides, "rank": plan.rank,
            "parameters": plan.parameters,
            "lines": {line.name: {"device_bytes": line.device_bytes, "host_bytes": line.host_bytes, "kind": line.kind}
                      for line in plan.lines},
            "device_bytes_exact": plan.device_total(EXACT), "device_bytes": plan.device_total(),
            "host_bytes": plan.host_total(), "fits": plan.fits(DEVICE_MEMORY)}


def markdown(rows: list[dict], offload: bool) -> str:
    def gib(n: int) -> str:
        return f"{n / 2**30:.2f}"

    def cell(row: dict, name: str) -> str:
        line = row["lines"][name]
        total = line["device_bytes"] + line["host_bytes"]
        return gib(total) + (" (host)" if line["host_bytes"] and not line["device_bytes"] else "")

    out = ["| model | GPUs | " + " | ".join(COLUMNS) + " | teacher partition (host) | device, exact | "
           "activations (estimate) | device, with estimates | host | fits in 80 GB |",
           "|---|--:|" + "--:|" * (len(COLUMNS) + 5) + "---|"]
    for row in (r for r in rows if r["offload_optimizer"] == offload):
        out.append(f"| {row['model']} ({row['parameters'] / 1e6:,.0f}M) | {row['gpus']} | "
                   + " | ".join(cell(row, name) for name in COLUMNS)
                   + f" | {gib(row['lines']['teacher partition']['host_bytes'])} | {gib(row['device_bytes_exact'])} | "
                   f"{gib(row['lines']['activations']['device_bytes'])} | {gib(row['device_bytes'])} | "
                   f"{gib(row['host_bytes'])} | {'yes' if row['fits'] else 'no'} |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="where planner_table.{json,md} go")
    results = parser.parse_args().results_dir
    rows = [plan_row(model, gpus, offload) for offload in (True, False) for model in MODELS for gpus in GPUS]
    results.mkdir(parents=True, exist_ok=True)
    (results / "planner_table.json").write_text(json.dumps({"provenance": provenance(), "rows": rows}, indent=1))
    tables = [f"zero.offload_optimizer={str(offload).lower()}\n\n{markdown(rows, offload)}"
              for offload in (True, False)]
    (results / "planner_table.md").write_text("\n\n".join(tables) + "\n")
    print("\n\n".join(tables))


if __name__ == "__main__":
    main()
