"""The exact selection on shards whose scores differ in scale, with and without the band retry, side by side.

    python benchmarks/band_retry_benchmark.py            # about a minute on 2 cores

Layers of a deep model differ in gradient scale, so PLATON's and PINS's scores of some shards crowd near
the threshold far more than the group's sample predicts, and their band overflows its buffer
(:data:`sparse_dist.distributed.select.BAND_CAPACITY_FACTOR`). The shipped selection then collects those
shards' bands again at their size (one more reduce); before, any overflow sent the whole group to a radix
search over every score, which is what ``BAND_RETRY_FRACTION`` set beyond any band still does. Both run
here in the same 2 gloo ranks on the same scores: 72 shards per rank of 400,000 fp32 scores
``u^4 * 10^-(i mod 6)`` (``u`` uniform; six scales), one group, for several ``k``. Each median of
``--repeats`` CPU-time measurements after a warm-up; the two thresholds must be equal. Writes
``benchmarks/results/band_retry_benchmark.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from provenance import provenance
from sparse_dist.distributed.spawn import run_distributed

RESULTS = Path(__file__).resolve().parent / "results"
SHARDS, PER_SHARD, SCALES = 72, 400_000, 6


def measure(fractions: list[float], repeats: int) -> list[dict]:
    """On each rank: CPU ms of the selection with the retry and with the full search, per kept fraction."""
    import torch.distributed as dist

    import sparse_dist.distributed.select as select
    from sparse_dist.distributed.comm import TorchCommunicator

    comm = TorchCommunicator()
    generator = torch.Generator().manual_seed(dist.get_rank())
    scores = [torch.rand(PER_SHARD, generator=generator).pow(4) * 10.0 ** -(i % SCALES) for i in range(SHARDS)]
    total = SHARDS * PER_SHARD * dist.get_world_size()
    # Tensor i of the group is shard i of rank 0 followed by shard i of rank 1.
    shards = [select.ScoreShard(s, 0, i, dist.get_rank() * PER_SHARD) for i, s in enumerate(scores)]
    layout = select.GroupLayout(sizes=[total], tensors=[SHARDS], dtypes=[torch.float32])
    shipped = select.BAND_RETRY_FRACTION
    rows = []
    for fraction in fractions:
        k = int(fraction * total)
        row = {"kept_fraction": fraction, "k": k}
        for name, retry in (("retry", shipped), ("full_search", 1 << 62)):
            select.BAND_RETRY_FRACTION = retry
            times = []
            for _ in range(repeats + 1):  # the first is a warm-up
                dist.barrier()
                began = time.process_time()
                threshold = select.select_topk(shards, [k], comm, layout=layout)[0]
                times.append((time.process_time() - began) * 1e3)
            row[f"{name}_cpu_ms"] = statistics.median(times[1:])
            row[f"{name}_threshold"] = (threshold.value, threshold.tie_tensor, threshold.tie_position)
        select.BAND_RETRY_FRACTION = shipped
        row["thresholds_equal"] = row["retry_threshold"] == row["full_search_threshold"]
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.5, 0.1, 0.97])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    ranks = run_distributed(measure, 2, args.fractions, args.repeats)
    rows = [{**row, "retry_cpu_ms_per_rank": [r[i]["retry_cpu_ms"] for r in ranks],
             "full_search_cpu_ms_per_rank": [r[i]["full_search_cpu_ms"] for r in ranks]}
            for i, row in enumerate(ranks[0])]
    for row in rows:
        row["full_search_over_retry"] = max(row["full_search_cpu_ms_per_rank"]) / max(row["retry_cpu_ms_per_rank"])
        print(f"kept {row['kept_fraction']:5.2f}: retry {max(row['retry_cpu_ms_per_rank']):7.1f} ms, full search "
              f"{max(row['full_search_cpu_ms_per_rank']):7.1f} ms ({row['full_search_over_retry']:.2f}x), "
              f"thresholds equal: {row['thresholds_equal']}")
    assert all(row["thresholds_equal"] for row in rows), "the two paths chose different thresholds"
    report = {**provenance(), "world_size": 2, "shards_per_rank": SHARDS, "scores_per_shard": PER_SHARD,
              "scales": SCALES, "repeats": args.repeats, "results": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "band_retry_benchmark.json"
    path.write_text(json.dumps(report, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
