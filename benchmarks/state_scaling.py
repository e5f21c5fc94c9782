"""World-size scaling of the pruning state: the same model at 1, 2, 4 and 8 gloo ranks under ZeRO-3.

    python benchmarks/state_scaling.py                          # 1, 2, 4, 8 ranks, two methods; ~20 min on 2 cores
    python benchmarks/state_scaling.py --world-sizes 1 2        # a quicker run

all-MiniLM-L6-v2 (22.7M parameters, 36 prunable matrices, 10.6M prunable weights) on SST-2, ZeRO-3, a
global batch of 8 sentences of at most 64 tokens, 3 optimizer steps per run, at each world size (the
processes may outnumber the cores: timing is not measured). Two runs per world size, which between them
hold every kind of pruning state:

- movement (per matrix, masks every step): learned scores, their fp32 master copy and Adam moments, and
  the packed masks;
- PINS (global, masks every step) with its self-regularization teacher: importance statistics (window,
  average, uncertainty), the packed masks, and the teacher's partition, built after the last step as at
  a dev improvement (``distiller.on_evaluation(True)``: the teacher is copied from the student).

Reported per rank (the largest over ranks): bytes of each kind of pruning state, which should fall as
1/N; and, per selection (one exact distributed top-k, :func:`sparse_dist.distributed.select.select_topk`,
counted by wrapping the pruner's ``select``), the payload bytes each rank sends and the collective
rounds (all-reduce calls), which should not grow with N. Ring all-reduce sends 2 (N-1)/N of a buffer per
rank (0 at N = 1, at most twice the buffer), so the bytes of a fixed-size reduce grow by that factor
(1, 1.5, 1.75 at 2, 4, 8 ranks) and no more; the buffer itself (bytes sent / 2 (N-1)/N) is reported too.
Writes ``benchmarks/results/state_scaling.json`` and ``state_scaling.png``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch.distributed as dist

from provenance import provenance
from sparse_dist.distributed.spawn import run_distributed

RESULTS = Path(__file__).resolve().parent / "results"
DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
STEPS = 3
METHODS = {
    "movement": {"pruning": {"method": "movement", "scope": "local", "target_remaining": 0.5}},
    "pins+teacher": {"pruning": {"method": "pins", "scope": "global", "target_remaining": 0.5, "window_steps": 1,
                                 "prune_every_steps": 1},
                     "distill": {"self_regularization": True}},
}


def overrides(method: str, run_dir: str) -> list[str]:
    sections = {
        "job": {"run_dir": run_dir, "seed": 1},
        "model": {"name_or_path": MODEL, "dropout": 0.0},
        "data": {"task": "sst2", "local_dir": str(DATA_DIR), "max_seq_length": 64, "max_train_examples": 64,
                 "max_eval_examples": 8},
        "training": {"max_steps": STEPS, "global_batch_size": 8, "micro_batch_size": 1},
        "optimizer": {"warmup_steps": 0},
        "zero": {"stage": 3},
        "eval": {"eval_every_steps": 0},
        "checkpoint": {"save_every_steps": 0, "save_final_model": False},
        "metrics": {"log_every_steps": 1000, "progress_bar": False, "tensorboard": False},
    }
    for section, values in METHODS[method].items():
        sections.setdefault(section, {}).update(values)
    return [f"{section}.{key}={str(value).lower() if isinstance(value, bool) else value}"
            for section, values in sections.items() for key, value in values.items()]


def _nbytes(tensor) -> int:
    return 0 if tensor is None else tensor.numel() * tensor.element_size()


def pruning_state_bytes(trainer) -> dict[str, int]:
    """This rank's bytes of each kind of pruning state (0 for kinds the method does not have)."""
    pruner = trainer.pruner
    state = {"masks": sum(_nbytes(m.bits) for m in pruner.masks), "scores": 0, "score_master": 0,
             "score_optimizer_state": 0, "importance_statistics": 0, "teacher_partition": 0}
    if hasattr(pruner, "layers"):  # learned scores: the fragments are the scores' partitions
        for fragment in pruner.fragments:
            working, master = fragment.working(), fragment.master()
            state["scores"] += _nbytes(working)
            if master is not None and master.data_ptr() != working.data_ptr():
                state["score_master"] += _nbytes(master)
            state["score_optimizer_state"] += sum(_nbytes(fragment.optimizer_state(key))
                                                  for key in fragment.optimizer_state_keys())
    for statistics in getattr(pruner, "states", ()):  # PLATON and PINS
        state["importance_statistics"] += sum(_nbytes(t) for t in statistics.tensors().values())
    teacher = getattr(trainer.distiller, "self_teacher", None)
    if teacher is not None:
        state["teacher_partition"] = teacher.host_bytes()
    state["total"] = sum(state.values())
    return state


def measure(method: str, run_dir: str) -> dict:
    """On every rank: train ``STEPS`` steps; this rank's pruning-state bytes and each selection's traffic."""
    from sparse_dist.config import load_config
    from sparse_dist.distributed.env import init_distributed
    from sparse_dist.trainer import Trainer

    env = init_distributed()
    config = load_config(None, overrides(method, run_dir), world_size=env.world_size)
    trainer = Trainer(config, env)
    comm, select = trainer.pruner.comm, trainer.pruner.select
    selections = []

    def counted_select(*args, **kwargs):
        bytes_before, calls_before = comm.bytes_sent, comm.calls
        masks = select(*args, **kwargs)
        selections.append({"bytes_sent": comm.bytes_sent - bytes_before, "rounds": comm.calls - calls_before})
        return masks

    trainer.pruner.select = counted_select
    trainer.train()
    if config.distill.self_regularization:
        trainer.distiller.on_evaluation(True)  # the teacher a dev improvement makes: a copy of the student
    dist.barrier()
    return {"state_bytes": pruning_state_bytes(trainer), "selections": selections,
            "prunable_weights": sum(site.numel for site in trainer.pruner.sites),
            "selection_groups": len(trainer.pruner.grouping.sizes)}


def summarize(per_rank: list[dict], world_size: int) -> dict:
    """The largest value over ranks of every byte count; selections as max and mean over the run's calls."""
    keys = per_rank[0]["state_bytes"]
    selections = [s for rank in per_rank for s in rank["selections"]]
    ring = 2 * (world_size - 1) / world_size  # bytes sent per byte of buffer in a ring all-reduce
    return {"world_size": world_size, "prunable_weights": per_rank[0]["prunable_weights"],
            "selection_groups": per_rank[0]["selection_groups"],
            "state_bytes_per_rank": {key: max(r["state_bytes"][key] for r in per_rank) for key in keys},
            "state_bytes_sum_over_ranks": sum(r["state_bytes"]["total"] for r in per_rank),
            "selections_per_rank": len(per_rank[0]["selections"]),
            "selection_bytes_sent_max": max(s["bytes_sent"] for s in selections),
            "selection_bytes_sent_mean": sum(s["bytes_sent"] for s in selections) / len(selections),
            "selection_buffer_bytes_max": max(s["bytes_sent"] for s in selections) / ring if ring else None,
            "selection_rounds_max": max(s["rounds"] for s in selections),
            "selection_rounds_mean": sum(s["rounds"] for s in selections) / len(selections)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-sizes", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    args = parser.parse_args()
    results: dict[str, list[dict]] = {}
    for method in args.methods:
        rows = results.setdefault(method, [])
        for world_size in args.world_sizes:
            with tempfile.TemporaryDirectory() as run_dir:
                row = summarize(run_distributed(measure, world_size, method, run_dir, timeout_s=3600), world_size)
            rows.append(row)
            state = row["state_bytes_per_rank"]
            print(f"{method:<13} N={world_size}: {state['total'] / 2**20:8.2f} MiB pruning state per rank "
                  f"({', '.join(f'{k} {v / 2**20:.2f}' for k, v in state.items() if v and k != 'total')}); "
                  f"selection: {row['selection_bytes_sent_max'] / 2**10:.1f} KiB sent, "
                  f"{row['selection_rounds_max']} rounds (max of {row['selections_per_rank']})", flush=True)
        base = rows[0]
        for row in rows:  # against 1/N of the smallest world size measured
            ideal = base["state_bytes_per_rank"]["total"] * base["world_size"] / row["world_size"]
            row["state_bytes_over_ideal"] = row["state_bytes_per_rank"]["total"] / ideal
    report = {**provenance(), "model": MODEL, "zero_stage": 3, "steps": STEPS,
              "methods": {m: METHODS[m] for m in args.methods}, "results": results}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "state_scaling.json").write_text(json.dumps(report, indent=1))
    plot(results, RESULTS / "state_scaling.png")
    print(f"wrote {RESULTS / 'state_scaling.json'} and state_scaling.png")


KINDS = {"scores": ("scores", "tab:blue"), "score_master": ("scores' fp32 master", "tab:cyan"),
         "score_optimizer_state": ("scores' Adam moments", "tab:green"),
         "importance_statistics": ("importance statistics", "tab:orange"), "masks": ("packed masks", "tab:red"),
         "teacher_partition": ("teacher partition", "tab:brown"), "total": ("total", "black")}
STYLES = {"movement": "-", "pins+teacher": "--"}


def plot(results: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(17, 5))
    for method, rows in results.items():
        sizes, style = [r["world_size"] for r in rows], STYLES.get(method, ":")
        for kind, (label, color) in KINDS.items():
            values = [r["state_bytes_per_rank"][kind] / 2**20 for r in rows]
            if any(values):
                axes[0].plot(sizes, values, style, marker="o", color=color, label=f"{method}: {label}",
                             linewidth=2 if kind == "total" else 1)
        sent = [(r["world_size"], r["selection_bytes_sent_max"] / 2**20, r["selection_buffer_bytes_max"])
                for r in rows if r["world_size"] > 1]
        axes[1].plot([n for n, _, _ in sent], [b for _, b, _ in sent], style, marker="o", color="tab:blue",
                     label=f"{method}: sent per rank")
        axes[1].plot([n for n, _, _ in sent], [f / 2**20 for _, _, f in sent], style, marker="s", color="tab:gray",
                     label=f"{method}: reduced buffer (sent / (2(N-1)/N))")
        axes[2].plot(sizes, [r["selection_rounds_max"] for r in rows], style, marker="o", color="tab:purple",
                     label=f"{method}: max")
        axes[2].plot(sizes, [r["selection_rounds_mean"] for r in rows], style, marker="x", color="tab:olive",
                     label=f"{method}: mean")
    titles = ["pruning state per rank (MiB, log scale)", "per selection: MiB per rank (largest selection)",
              "per selection: collective rounds (all-reduce calls)"]
    for axis, title in zip(axes, titles):
        axis.set_xscale("log", base=2)
        axis.set_xticks([1, 2, 4, 8], ["1", "2", "4", "8"])
        axis.set_xlabel("ranks (gloo, ZeRO-3)")
        axis.set_title(title, fontsize=10)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    axes[0].set_yscale("log")
    axes[1].set_ylim(bottom=0)
    axes[2].set_ylim(bottom=0)
    figure.suptitle("World-size scaling of the pruning state: all-MiniLM-L6-v2 (10.6M prunable weights), SST-2, "
                    "3 steps; movement per matrix (36 groups), PINS global (1 group) with its teacher")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
