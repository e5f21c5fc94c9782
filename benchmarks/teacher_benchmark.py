"""What self-regularization costs: the reference design, and sparse_dist's offloaded teacher fetched a module
at a time (DeepSpeed's fetching) or a block at a time (the next block prefetched).

    python benchmarks/teacher_benchmark.py                       # MiniLM, SST-2, batch 32, 2 ranks
    python benchmarks/teacher_benchmark.py --world-sizes 1 2     # also 1 rank

The same PINS run (all-MiniLM-L6-v2 on SST-2, global batch 32, ZeRO-2 student) with three teachers:

- reference: the PINS paper's design, a second full model and a deep copy of the best state kept beside
  the student on the compute device (the teacher forward runs on that second model);
- module: sparse_dist's teacher held as ZeRO-3 partitions in CPU memory, 1/world_size per rank, brought to
  the compute device by DeepSpeed one module at a time (one all-gather per module, nothing prefetched);
- block: the same partitions brought over a transformer block per all-gather, the next block prefetched
  while the current one computes (:mod:`sparse_dist.distributed.block_fetch`).

Each run alternates steps with and without its teacher (with, without, without, with, ...), so that the
ratio of their median step times is measured side by side, under the same load; on a shared machine the
load moves between runs. Then the teacher's forward alone is timed against a no-grad forward of the
student's model on the same batches, alternating: the teacher's cost beyond a forward's arithmetic.
Per rank: teacher bytes kept on the compute device between steps, the most teacher parameters
materialised on the device at once during a forward (forward hooks), for block fetching also the most
gathered bytes alive at once with the all-gather buffers in flight, teacher bytes in host memory, the
process's peak resident memory; and what one teacher forward sends across ranks, counted in an extra,
untimed forward (:class:`~sparse_dist.distributed.comm_count.CollectiveCounter`): collectives, bytes of
their result buffers, the largest such buffer. On this CPU-only machine the compute device and the host
are the same memory; the split says where each byte would be on a GPU machine.
Writes ``benchmarks/results/<out>.json`` and ``.png`` (``--out``, default ``teacher_benchmark``).
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist

from provenance import provenance
from sparse_dist.config import load_config
from sparse_dist.distributed.comm_count import CollectiveCounter
from sparse_dist.distributed.gather import track_gathered_peak
from sparse_dist.distributed.spawn import run_distributed

RESULTS = Path(__file__).resolve().parent / "results"
DESIGNS = ("reference", "module", "block")
WARMUP_STEPS = 4
FORWARDS = 4
"""Timed pairs of forwards (teacher, student's model) after the steps, in alternating order, times two."""


class ReferenceTeacher:
    """The paper's design: a full second model and a deep copy of the best state on the compute device."""

    def __init__(self, student: torch.nn.Module):
        self.model = copy.deepcopy(student).eval()
        for param in self.model.parameters():
            param.requires_grad = False
        self.best_state = {k: v.detach().clone() for k, v in student.state_dict().items()}
        self.updates = 0

    def copy_from(self, student: torch.nn.Module) -> None:
        self.best_state = {k: v.detach().clone() for k, v in student.state_dict().items()}
        self.model.load_state_dict(self.best_state)
        self.updates += 1

    @torch.no_grad()
    def outputs(self, batch: dict[str, torch.Tensor]):
        return self.model(**{k: v for k, v in batch.items() if k != "idx"})

    def device_bytes(self) -> int:
        model = sum(p.numel() * p.element_size() for p in self.model.parameters())
        return model + sum(v.numel() * v.element_size() for v in self.best_state.values())


def run(design: str, steps: int, run_dir: str) -> dict:
    from sparse_dist.data.sampler import TrainBatchSampler
    from sparse_dist.data.task_data import build_train_loader
    from sparse_dist.distill.teacher import OffloadedTeacher
    from sparse_dist.distributed.env import init_distributed
    from sparse_dist.models.build import build_model
    from sparse_dist.trainer import Trainer

    env = init_distributed()
    total_steps = WARMUP_STEPS + 2 * steps
    config = load_config("configs/smp_minilm_sst2.yaml", [
        f"job.run_dir={run_dir}", "model.head=classifier", "pruning.method=pins", "pruning.scope=global",
        "pruning.target_remaining=0.5", "pruning.schedule=cubic", "pruning.prune_every_steps=10",
        "pruning.regularizer_lambda=null",  # the SMP config's regulariser: PINS has none
        "pruning.final_warmup_steps=0", "optimizer.lr=5e-5", f"training.max_steps={total_steps}",
        "training.micro_batch_size=" + str(32 // env.world_size), "data.max_train_examples=2000",
        "data.max_eval_examples=64", "eval.eval_every_steps=0", "checkpoint.save_every_steps=0",
        "checkpoint.save_final_model=false", "metrics.tensorboard=false", "metrics.progress_bar=false",
        "distill.self_regularization=true"], world_size=env.world_size)
    trainer = Trainer(config, env)
    if design == "reference":
        teacher = ReferenceTeacher(trainer.built.model)
        peak = {"bytes": teacher.device_bytes()}
    else:
        teacher_cfg = replace(config.model, gradient_checkpointing=False)
        teacher = OffloadedTeacher(lambda ds: build_model(teacher_cfg, trainer.task, ds, config.job.seed),
                                   trainer.ds_config, env.on_gpu, fetch=design)
        teacher.copy_from(trainer.built.model)
        peak = track_gathered_peak(teacher.model)
    sampler = TrainBatchSampler(len(trainer.task_data.train), 32, 32 // env.world_size, env.rank,
                                env.world_size, seed=1)
    batches = iter(build_train_loader(trainer.task_data, sampler))
    trainer.pruner.start()
    trainer.engine.train()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times = {True: [], False: []}
    for index in range(total_steps):
        with_teacher = index % 4 in (0, 3)  # with, without, without, with: drift in the load cancels out
        trainer.distiller.self_teacher = teacher if with_teacher else None
        dist.barrier()
        start = time.perf_counter()
        trainer.train_step([next(batches) for _ in range(config.grad_accum_steps)])
        trainer.step += 1
        if index >= WARMUP_STEPS:
            times[with_teacher].append(time.perf_counter() - start)
    # The teacher's forward alone, alternating with a no-grad forward of the student's model on the same
    # batch: what the teacher costs beyond the arithmetic of a forward, side by side.
    forwards = {"teacher": [], "student": []}
    student = trainer.engine.module
    student.eval()
    for index in range(2 * FORWARDS):
        batch = next(batches)
        for name in ("teacher", "student") if index % 2 else ("student", "teacher"):
            dist.barrier()
            start = time.perf_counter()
            with torch.no_grad():
                if name == "teacher":
                    teacher.outputs(batch)
                else:
                    student(**{k: v for k, v in batch.items() if k != "idx"})
            forwards[name].append(time.perf_counter() - start)
    student.train()
    counted = CollectiveCounter()
    for _ in range(config.grad_accum_steps):  # untimed: the counter sees every operator of the forward
        with counted:
            teacher.outputs(next(batches))
    fetcher = getattr(teacher, "fetcher", None)
    model_bytes = sum(int(getattr(p, "ds_numel", p.numel())) * 4 for p in trainer.built.model.parameters())
    largest_layer = max(sum(p.numel() * 4 for p in block.parameters())
                        for block in trainer.built.model.bert.encoder.layer)
    return {
        "step_time_s": statistics.median(times[True]),
        "step_time_without_teacher_s": statistics.median(times[False]),
        "teacher_forward_s": statistics.median(forwards["teacher"]),
        "student_forward_s": statistics.median(forwards["student"]),
        "teacher_device_bytes": teacher.device_bytes() if design == "reference" else 0,
        "teacher_device_peak_bytes": peak["bytes"],
        "teacher_device_peak_with_buffers_bytes": fetcher.stats.peak_live_bytes if fetcher else peak["bytes"],
        "teacher_host_bytes": teacher.host_bytes() if design != "reference" else 0,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "rss_growth_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before,
        "model_bytes": model_bytes, "largest_layer_bytes": largest_layer,
        "teacher_collectives_per_step": counted.calls, "teacher_collective_bytes_per_step": counted.bytes,
        "teacher_largest_collective_bytes": counted.largest_bytes, "teacher_collectives_by_op": dict(counted.by_op),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="timed steps with the teacher (and as many without)")
    parser.add_argument("--world-sizes", type=int, nargs="+", default=[2])
    parser.add_argument("--designs", nargs="+", default=list(DESIGNS), choices=DESIGNS)
    parser.add_argument("--out", default="teacher_benchmark", help="name of the JSON and PNG under results/")
    parser.add_argument("--replot", action="store_true", help="redraw the plot from the saved JSON and exit")
    args = parser.parse_args()
    if args.replot:
        plot(json.loads((RESULTS / f"{args.out}.json").read_text())["results"], RESULTS / f"{args.out}.png")
        return
    rows = []
    for world_size in args.world_sizes:
        for design in args.designs:
            ranks = run_distributed(run, world_size, design, args.steps, f"/tmp/teacher_bench_{design}_{world_size}")
            row = {"world_size": world_size, "design": design,
                   **{key: max(r[key] for r in ranks) for key in ranks[0] if key != "teacher_collectives_by_op"},
                   "teacher_collectives_by_op": ranks[0]["teacher_collectives_by_op"]}
            row["step_time_vs_none"] = row["step_time_s"] / row["step_time_without_teacher_s"]
            row["teacher_forward_vs_student_forward"] = row["teacher_forward_s"] / row["student_forward_s"]
            row["host_share_of_model"] = row["teacher_host_bytes"] / row["model_bytes"]
            row["device_peak_vs_largest_layer"] = row["teacher_device_peak_bytes"] / row["largest_layer_bytes"]
            rows.append(row)
            print(f"{world_size} rank(s) {design:<9} step {row['step_time_s'] * 1e3:7.1f} ms, without teacher "
                  f"{row['step_time_without_teacher_s'] * 1e3:7.1f} ms: {row['step_time_vs_none']:.3f}x; "
                  f"teacher forward "
                  f"{row['teacher_forward_s'] * 1e3:6.1f} ms, student's {row['student_forward_s'] * 1e3:6.1f} ms  "
                  f"device peak {row['teacher_device_peak_bytes'] / 2**20:6.1f} MiB "
                  f"({row['teacher_device_peak_with_buffers_bytes'] / 2**20:.1f} with buffers)  "
                  f"host {row['teacher_host_bytes'] / 2**20:6.1f} MiB  "
                  f"{row['teacher_collectives_per_step']} collectives/step, "
                  f"{row['teacher_collective_bytes_per_step'] / 2**20:.1f} MiB", flush=True)
    report = {**provenance(), "model": "sentence-transformers/all-MiniLM-L6-v2", "global_batch": 32,
              "timed_steps_per_arm": args.steps, "results": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(report, indent=1))
    plot(rows, RESULTS / f"{args.out}.png")
    print(f"wrote {RESULTS / args.out}.json and .png")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    world_sizes = sorted({r["world_size"] for r in rows})
    designs = [d for d in DESIGNS if any(r["design"] == d for r in rows)]
    figure, axes = plt.subplots(1, 4, figsize=(19, 4.2))
    panels = [("step_time_vs_none", 1, "step time with / without the teacher"),
              ("teacher_collectives_per_step", 1, "teacher collectives per step"),
              ("teacher_device_peak_bytes", 2**-20, "teacher parameters on the device, peak (MiB)"),
              ("teacher_host_bytes", 2**-20, "teacher in host memory per rank (MiB)")]
    width = 0.8 / len(designs)
    for axis, (key, scale, title) in zip(axes, panels):
        for i, design in enumerate(designs):
            values = [next((r[key] for r in rows if r["design"] == design and r["world_size"] == w), 0) * scale
                      for w in world_sizes]
            axis.bar([x + (i - (len(designs) - 1) / 2) * width for x in range(len(world_sizes))], values, width,
                     label=design)
        axis.set_xticks(range(len(world_sizes)), [f"{w} rank(s)" for w in world_sizes])
        axis.set_title(title)
    axes[0].axhline(1.25, color="gray", linestyle=":", label="target 1.25x")
    axes[2].axhline(rows[0]["largest_layer_bytes"] / 2**20, color="gray", linestyle="--", label="one transformer layer")
    handles, labels = [], []
    for axis in axes[[0, 2]]:
        h, lab = axis.get_legend_handles_labels()
        handles += [x for x, y in zip(h, lab) if y not in labels]
        labels += [y for y in lab if y not in labels]
    figure.legend(handles, labels, loc="lower center", ncol=5, frameon=False)
    figure.suptitle("PINS self-regularization on all-MiniLM-L6-v2 (SST-2, batch 32, ZeRO-2 student), CPU")
    figure.tight_layout(rect=(0, 0.08, 1, 1))
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
