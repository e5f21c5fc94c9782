"""What self-regularization costs: no teacher, the reference design, and sparse_dist's offloaded teacher.

    python benchmarks/teacher_benchmark.py                 # MiniLM, SST-2, batch 32, 1 and 2 ranks (~5 min)
    python benchmarks/teacher_benchmark.py --world-sizes 2 --out teacher_benchmark_2ranks

The same PINS run (all-MiniLM-L6-v2 on SST-2, global batch 32, ZeRO-2 student) three ways:

- none: no self-regularization;
- reference: the PINS paper's design, a second full model and a deep copy of the best state kept beside
  the student on the compute device (the teacher forward runs on that second model);
- sparse_dist: the teacher held as ZeRO-3 partitions in CPU memory, 1/world_size per rank, brought to the
  compute device one module at a time for its no-grad forward.

Per rank: teacher bytes kept on the compute device between steps, the largest amount of teacher
parameters materialised on the compute device at once during a teacher forward (measured with forward
hooks), teacher bytes kept in host memory, the process's peak resident memory, and the median step time;
for the offloaded teacher also what one step's teacher forward sends across ranks, counted in an extra,
untimed forward (:class:`~sparse_dist.distributed.comm_count.CollectiveCounter`): collectives, bytes of
their result buffers, and the largest such buffer.
On this CPU-only machine the compute device and the host are the same memory; the split says where each
byte would be on a GPU machine. Writes ``benchmarks/results/<out>.json`` and ``.png`` (``--out``, default
``teacher_benchmark``).
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
from provenance import provenance

from sparse_dist.config import load_config
from sparse_dist.distributed.comm_count import CollectiveCounter
from sparse_dist.distributed.gather import track_gathered_peak
from sparse_dist.distributed.spawn import run_distributed

RESULTS = Path(__file__).resolve().parent / "results"
DESIGNS = ("none", "reference", "sparse_dist")


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
    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(**{k: v for k, v in batch.items() if k != "idx"}).logits

    def device_bytes(self) -> int:
        model = sum(p.numel() * p.element_size() for p in self.model.parameters())
        return model + sum(v.numel() * v.element_size() for v in self.best_state.values())


def run(design: str, steps: int, run_dir: str) -> dict:
    from sparse_dist.distributed.env import init_distributed
    from sparse_dist.trainer import Trainer

    env = init_distributed()
    config = load_config("configs/smp_minilm_sst2.yaml", [
        f"job.run_dir={run_dir}", "model.head=classifier", "pruning.method=pins", "pruning.scope=global",
        "pruning.target_remaining=0.5", "pruning.schedule=cubic", "pruning.prune_every_steps=10",
        "pruning.regularizer_lambda=null",  # the SMP config's regulariser: PINS has none
        "pruning.final_warmup_steps=0", "optimizer.lr=5e-5", f"training.max_steps={steps + 3}",
        "training.micro_batch_size=" + str(32 // env.world_size), "data.max_train_examples=2000",
        "data.max_eval_examples=64", "eval.eval_every_steps=0", "checkpoint.save_every_steps=0",
        "checkpoint.save_final_model=false", "metrics.tensorboard=false", "metrics.progress_bar=false",
        f"distill.self_regularization={'false' if design == 'none' else 'true'}"], world_size=env.world_size)
    trainer = Trainer(config, env)
    teacher, peak = None, {"bytes": 0}
    if design == "reference":
        teacher = ReferenceTeacher(trainer.built.model)
        trainer.distiller.self_teacher = teacher
    elif design == "sparse_dist":
        trainer.distiller.on_evaluation(True)  # builds the offloaded teacher and copies the student into it
        teacher = trainer.distiller.self_teacher
        peak = track_gathered_peak(teacher.model)
    from sparse_dist.data.sampler import TrainBatchSampler
    from sparse_dist.data.task_data import build_train_loader

    sampler = TrainBatchSampler(len(trainer.task_data.train), 32, 32 // env.world_size, env.rank,
                                env.world_size, seed=1)
    batches = iter(build_train_loader(trainer.task_data, sampler))
    trainer.pruner.start()
    trainer.engine.train()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times = []
    for _ in range(steps + 3):
        dist.barrier()
        start = time.perf_counter()
        trainer.train_step([next(batches) for _ in range(config.grad_accum_steps)])
        trainer.step += 1
        times.append(time.perf_counter() - start)
    counted = CollectiveCounter()
    if design == "sparse_dist":  # untimed: the counter sees every operator of the forward
        for _ in range(config.grad_accum_steps):
            with counted:
                teacher.outputs(next(batches))
    model_bytes = sum(int(getattr(p, "ds_numel", p.numel())) * 4 for p in trainer.built.model.parameters())
    largest_layer = max(sum(p.numel() * 4 for p in block.parameters())
                        for block in trainer.built.model.bert.encoder.layer)
    return {
        "step_time_s": statistics.median(times[3:]),
        "teacher_device_bytes": teacher.device_bytes() if design == "reference" else 0,
        "teacher_device_peak_bytes": peak["bytes"] if design == "sparse_dist"
        else (teacher.device_bytes() if design == "reference" else 0),
        "teacher_host_bytes": teacher.host_bytes() if design == "sparse_dist" else 0,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "rss_growth_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before,
        "model_bytes": model_bytes, "largest_layer_bytes": largest_layer,
        "teacher_collectives_per_step": counted.calls, "teacher_collective_bytes_per_step": counted.bytes,
        "teacher_largest_collective_bytes": counted.largest_bytes, "teacher_collectives_by_op": dict(counted.by_op),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--world-sizes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", default="teacher_benchmark", help="name of the JSON and PNG under results/")
    parser.add_argument("--replot", action="store_true", help="redraw the plot from the saved JSON and exit")
    args = parser.parse_args()
    if args.replot:
        plot(json.loads((RESULTS / f"{args.out}.json").read_text())["results"], RESULTS / f"{args.out}.png")
        return
    rows = []
    for world_size in args.world_sizes:
        for design in DESIGNS:
            ranks = run_distributed(run, world_size, design, args.steps, f"/tmp/teacher_bench_{design}_{world_size}")
            row = {"world_size": world_size, "design": design,
                   **{key: max(r[key] for r in ranks) for key in ranks[0] if key != "teacher_collectives_by_op"},
                   "teacher_collectives_by_op": ranks[0]["teacher_collectives_by_op"]}
            rows.append(row)
            mib = {k: row[k] / 2**20 for k in ("teacher_device_bytes", "teacher_device_peak_bytes",
                                               "teacher_host_bytes")}
            print(f"{world_size} rank(s) {design:<12} step {row['step_time_s'] * 1e3:7.1f} ms  teacher on device "
                  f"{mib['teacher_device_bytes']:6.1f} MiB (peak {mib['teacher_device_peak_bytes']:6.1f})  in host "
                  f"{mib['teacher_host_bytes']:6.1f} MiB  peak RSS {row['peak_rss_bytes'] / 2**30:.2f} GiB  "
                  f"{row['teacher_collectives_per_step']} collectives/step, "
                  f"{row['teacher_collective_bytes_per_step'] / 2**20:.1f} MiB", flush=True)
    for row in rows:
        base = next(r for r in rows if r["world_size"] == row["world_size"] and r["design"] == "none")
        row["step_time_vs_none"] = row["step_time_s"] / base["step_time_s"]
        row["host_share_of_model"] = row["teacher_host_bytes"] / row["model_bytes"]
        row["device_peak_vs_largest_layer"] = row["teacher_device_peak_bytes"] / row["largest_layer_bytes"]
    report = {**provenance(),
              "model": "sentence-transformers/all-MiniLM-L6-v2", "global_batch": 32, "results": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(report, indent=1))
    plot(rows, RESULTS / f"{args.out}.png")
    print(f"wrote {RESULTS / args.out}.json and .png")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    world_sizes = sorted({r["world_size"] for r in rows})
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = [("step_time_s", 1e3, "median step time (ms)"),
              ("teacher_device_peak_bytes", 2**-20, "teacher on the compute device, peak (MiB)"),
              ("teacher_host_bytes", 2**-20, "teacher in host memory per rank (MiB)")]
    width = 0.25
    for axis, (key, scale, title) in zip(axes, panels):
        for i, design in enumerate(DESIGNS):
            values = [next(r[key] for r in rows if r["design"] == design and r["world_size"] == w) * scale
                      for w in world_sizes]
            axis.bar([x + (i - 1) * width for x in range(len(world_sizes))], values, width, label=design)
        axis.set_xticks(range(len(world_sizes)), [f"{w} rank(s)" for w in world_sizes])
        axis.set_title(title)
    layer = rows[0]["largest_layer_bytes"] / 2**20
    axes[1].axhline(layer, color="gray", linestyle="--", label="one transformer layer")
    handles, labels = axes[1].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=4, frameon=False)
    figure.suptitle("PINS self-regularization on all-MiniLM-L6-v2 (SST-2, batch 32, ZeRO-2 student), CPU")
    figure.tight_layout(rect=(0, 0.08, 1, 1))
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
