"""Distributed top-k selection against the obvious approach, on 2 local ranks (gloo).

    python benchmarks/select_benchmark.py                      # 1e6 ... 1e9 scores; ~10 minutes on 2 cores
    python benchmarks/select_benchmark.py --sizes 1e6 1e7      # a quicker run

For each total number of scores, split evenly over 2 ranks (standard normal, float32), and k = 10% of
them, three measurements, each in a fresh pair of processes so that peak memory is attributable:

- naive: all-gather every score to every rank, then ``torch.kthvalue``;
- sparse_dist: :func:`sparse_dist.distributed.select.select_topk`;
- floor: one plain ``sum`` over the local scores, the least any exact method must do.

The naive method runs up to ``--naive-max`` scores (1e8): beyond, every rank would hold all the scores
twice over (the gathered copy and ``kthvalue``'s working copy; 8 GB per rank at 1e9 on this 24 GB
machine shared with other jobs). Where it does not run, exactness is checked without it: the kept
set of the threshold (``Threshold.mask``), counted on every rank and summed, is exactly ``k``. A size
whose scores (4 bytes each, 1.5 times over for the sample, band and mask) do not fit in the memory
available when it starts is skipped and recorded as such.

Reported per rank: wall time (median of repeats after a warm-up), bytes sent and received (payload
of the collectives; ring all-reduce moves 2 (W-1)/W of the buffer, all-gather (W-1)/W of the result),
and peak extra memory (growth of the process's peak resident set over the scores already in memory).
Writes ``benchmarks/results/select_benchmark.json`` and ``select_benchmark.png``.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist

from provenance import provenance
from sparse_dist.distributed.comm import TorchCommunicator
from sparse_dist.distributed.select import GroupLayout, ScoreShard, select_topk
from sparse_dist.distributed.spawn import run_distributed

RESULTS = Path(__file__).resolve().parent / "results"
KEEP_FRACTION = 0.10
WORLD_SIZE = 2


def _local_scores(total: int, rank: int) -> torch.Tensor:
    share = total // WORLD_SIZE
    return torch.randn(share, generator=torch.Generator().manual_seed(1000 + rank))


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(method: str, total: int, repeats: int) -> dict:
    """On every rank: time, traffic and peak extra memory of one method."""
    rank = dist.get_rank()
    warm = _local_scores(1 << 21, rank)  # large enough to take the sampled path: loads the kernel
    comm = TorchCommunicator()
    select_topk([ScoreShard(warm, 0, rank, rank * warm.numel())], [1000], comm)
    del warm
    scores = _local_scores(total, rank)
    scores.sum()  # resident before the baseline
    k = int(KEEP_FRACTION * total)
    dist.barrier()
    baseline = _peak_rss_bytes()
    times, value, sent, rounds, threshold = [], None, 0, 0, None
    for _ in range(repeats + 1):
        dist.barrier()
        start = time.perf_counter()
        if method == "naive":
            gathered = torch.empty(scores.numel() * WORLD_SIZE)
            dist.all_gather_into_tensor(gathered, scores)
            value = float(torch.kthvalue(gathered, gathered.numel() - k + 1).values)
            del gathered
            sent = (WORLD_SIZE - 1) * scores.numel() * 4
        elif method == "sparse_dist":
            comm = TorchCommunicator()
            # As the pruner calls it: group sizes are known (a tensor per rank here).
            layout = GroupLayout(sizes=[total], tensors=[WORLD_SIZE], dtypes=[torch.float32])
            shard = ScoreShard(scores, 0, rank, 0)
            threshold = select_topk([shard], [k], comm, layout=layout)[0]
            value, sent, rounds = threshold.value, comm.bytes_sent, comm.calls
        else:
            value, sent = float(scores.sum()), 0
        times.append(time.perf_counter() - start)
    peak_extra = max(0, _peak_rss_bytes() - baseline)  # read before the check below allocates its mask
    kept = None
    if threshold is not None:  # exact without the naive answer: the kept set over all ranks has k scores
        # In chunks: a mask with ties at the threshold builds a position index of its shard (8 bytes a score).
        chunk = 1 << 24
        local = sum(int(threshold.mask(ScoreShard(scores[i:i + chunk], 0, rank, i)).sum())
                    for i in range(0, scores.numel(), chunk))
        count = torch.tensor([local], dtype=torch.int64)
        dist.all_reduce(count)
        kept = int(count)
    return {"time_s": statistics.median(times[1:]), "bytes_sent": sent, "bytes_received": sent,
            "rounds": rounds, "peak_extra_bytes": peak_extra, "value": value, "kept": kept}


def _available_bytes() -> int:
    """MemAvailable of /proc/meminfo: what can be allocated now without swapping or evicting much."""
    text = Path("/proc/meminfo").read_text()
    return int(re.search(r"MemAvailable:\s+(\d+) kB", text).group(1)) * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=float, default=[1e6, 1e7, 1e8, 3e8, 1e9])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--naive-max", type=float, default=1e8, help="largest size the naive method runs at")
    args = parser.parse_args()
    rows, skipped = [], []
    for size in args.sizes:
        total = int(size)
        needed, available = int(total * 4 * 1.5), _available_bytes()
        if needed > available:
            skipped.append({"total_scores": total, "needed_bytes": needed, "available_bytes": available})
            print(f"{total:>11,d} skipped: needs ~{needed / 2**30:.1f} GiB, {available / 2**30:.1f} GiB available",
                  flush=True)
            continue
        row = {"total_scores": total, "k": int(KEEP_FRACTION * total)}
        methods = ("naive", "sparse_dist", "floor") if total <= args.naive_max else ("sparse_dist", "floor")
        for method in methods:
            per_rank = run_distributed(measure, WORLD_SIZE, method, total, args.repeats, timeout_s=3600)
            row[method] = {key: max(r[key] for r in per_rank) for key in per_rank[0] if key not in ("value", "kept")}
            row[method]["value"] = per_rank[0]["value"]
            row[method]["kept"] = per_rank[0]["kept"]
            print(f"{total:>11,d} {method:<12} {row[method]['time_s'] * 1e3:9.1f} ms  "
                  f"{row[method]['bytes_sent'] / 2**20:9.2f} MiB sent  "
                  f"{row[method]['peak_extra_bytes'] / 2**20:8.1f} MiB peak extra", flush=True)
        ours, floor = row["sparse_dist"], row["floor"]
        row["exact_count"] = ours["kept"] == row["k"]
        if "naive" in row:
            naive = row["naive"]
            row["exact_agreement"] = ours["value"] == naive["value"]
            row["bytes_ratio_naive_over_ours"] = naive["bytes_sent"] / max(1, ours["bytes_sent"])
            row["memory_ours_over_naive"] = ours["peak_extra_bytes"] / max(1, naive["peak_extra_bytes"])
            row["speedup_over_naive"] = naive["time_s"] / ours["time_s"]
        row["time_over_floor"] = ours["time_s"] / floor["time_s"]
        rows.append(row)
    report = {
        **provenance(),
        "world_size": WORLD_SIZE, "keep_fraction": KEEP_FRACTION, "naive_max_scores": int(args.naive_max),
        "results": rows, "skipped": skipped,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "select_benchmark.json").write_text(json.dumps(report, indent=1))
    plot(rows, RESULTS / "select_benchmark.png")
    print(f"wrote {RESULTS / 'select_benchmark.json'} and select_benchmark.png")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["total_scores"] for r in rows]
    labels = {"naive": "all-gather + kthvalue", "sparse_dist": "sparse_dist", "floor": "one sum over local scores"}
    panels = [("time_s", 1e3, "wall time per selection (ms)", ("naive", "sparse_dist", "floor")),
              ("bytes_sent", 2**-20, "MiB sent per rank", ("naive", "sparse_dist")),
              ("peak_extra_bytes", 2**-20, "peak extra memory per rank (MiB)", ("naive", "sparse_dist"))]
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    for axis, (key, scale, title, methods) in zip(axes, panels):
        for method, style in zip(methods, ("o-", "s-", "^--")):
            points = [(n, r[method][key] * scale) for n, r in zip(sizes, rows) if method in r and r[method][key] > 0]
            axis.plot([p[0] for p in points], [p[1] for p in points], style, label=labels[method])
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("total scores over 2 ranks (keep 10%)")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle("Exact global top-k: sparse_dist's selection vs all-gathering the scores, 2 CPU ranks (gloo)")
    naive_max = max((n for n, r in zip(sizes, rows) if "naive" in r), default=0)
    figure.text(0.5, 0.005, "Memory readings of 0 (growth below the resident-set granularity) are not drawn. "
                f"The naive method runs up to {naive_max:.0e} scores (beyond, all scores twice on every rank).",
                ha="center", fontsize=8)
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
