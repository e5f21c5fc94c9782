"""Where a ZeRO-3 rank's peak resident set goes: RSS at each point of building and stepping one scale-benchmark
cell, with glibc's allocator statistics and the planner's exact categories.

    python benchmarks/memory_breakdown.py --model t5-small --method dense    # ~1 min on 2 shared cores
    python benchmarks/memory_breakdown.py --model minilm --method pins

Runs the cell exactly as ``benchmarks/scale_benchmark.py`` does (2 gloo ranks, ZeRO-3, the same overrides)
and records on every rank, at each point (start, model built, engine initialised, trainer built, then after
the forward, backward, optimizer step and pruner step of each of ``--steps`` steps): ``VmRSS`` and ``VmHWM`` and the
resident set split into anonymous, file-backed (shared libraries, also mapped by the other rank) and shared
memory; glibc's ``mallinfo2`` (bytes in use, free but kept in the heap arenas, and in mmapped chunks). At the
end: :func:`sparse_dist.distributed.memory.measure_allocated` (the planner's exact categories), the
gradient partition buffer and reduce bucket DeepSpeed allocated, and the RSS after ``malloc_trim(0)`` (what
glibc gives back: freed memory it was keeping). Writes
``benchmarks/results/memory_breakdown_<model>_<method>.json``.
"""

from __future__ import annotations

import argparse
import ctypes
import json
from pathlib import Path

import torch

from provenance import provenance
from scale_benchmark import COMMON, METHODS, MODELS, WORLD_SIZE
from sparse_dist.distributed.spawn import run_distributed

RESULTS = Path(__file__).resolve().parent / "results"


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


_LIBC = ctypes.CDLL("libc.so.6")
_LIBC.mallinfo2.restype = _Mallinfo2


def snapshot(point: str) -> dict:
    """Resident set and glibc heap statistics now (bytes)."""
    status = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
            status[key] = int(rest.split()[0]) * 1024
    info = _LIBC.mallinfo2()
    return {"point": point, **status, "malloc_in_use": info.uordblks, "malloc_free_kept": info.fordblks,
            "malloc_mmapped": info.hblkhd, "malloc_heap": info.arena}


def run(model: str, method: str, steps: int, run_dir: str) -> dict:
    """One rank: build the cell's trainer with snapshots around its parts, step, measure."""
    import deepspeed
    import torch.distributed as dist

    import sparse_dist.trainer as trainer_module
    from sparse_dist.config import load_config
    from sparse_dist.data.sampler import TrainBatchSampler
    from sparse_dist.data.task_data import build_train_loader
    from sparse_dist.distributed.env import init_distributed
    from sparse_dist.distributed.memory import measure_allocated

    env = init_distributed()
    points = [snapshot("start")]

    def after(fn, point):
        def wrapper(*args, **kwargs):
            result = fn(*args, **kwargs)
            points.append(snapshot(point))
            return result
        return wrapper

    trainer_module.build_model = after(trainer_module.build_model, "model built (zero.Init)")
    deepspeed.initialize = after(deepspeed.initialize, "engine initialised")
    path, model_overrides = MODELS[model]
    config = load_config(path, [*COMMON, *model_overrides, *METHODS[method], f"job.run_dir={run_dir}"],
                         world_size=env.world_size)
    trainer = trainer_module.Trainer(config, env)
    if config.distill.self_regularization:
        trainer.distiller.on_evaluation(True)
    points.append(snapshot("trainer built"))
    sampler = TrainBatchSampler(len(trainer.task_data.train), config.training.global_batch_size,
                                config.training.micro_batch_size, env.rank, env.world_size, seed=1)
    batches = iter(build_train_loader(trainer.task_data, sampler))
    trainer.pruner.start()
    trainer.engine.train()
    engine = trainer.engine
    for i in range(steps):
        engine.forward = after(type(engine).forward.__get__(engine), f"step {i + 1} forward")
        engine.backward = after(type(engine).backward.__get__(engine), f"step {i + 1} backward")
        engine.step = after(type(engine).step.__get__(engine), f"step {i + 1} optimizer")
        trainer.pruner.step = after(type(trainer.pruner).step.__get__(trainer.pruner), f"step {i + 1} pruner")
        trainer.train_step([next(batches) for _ in range(config.grad_accum_steps)])
        trainer.step += 1
        dist.barrier()
    allocated = measure_allocated(engine, trainer.pruner,
                                  [t for t in [getattr(trainer.distiller, "self_teacher", None)] if t is not None])
    optimizer = engine.optimizer
    grad_buffer = getattr(optimizer, "grad_partitions_flat_buffer", None)
    trainable = sum(int(getattr(p, "ds_numel", p.numel())) for p in engine.module.parameters() if p.requires_grad)
    before_trim = snapshot("end")
    _LIBC.malloc_trim(0)
    return {"rank": env.rank, "points": [*points, before_trim, snapshot("after malloc_trim(0)")],
            "allocated": allocated, "trainable_parameters": trainable,
            "reduce_bucket_elements": int(getattr(optimizer, "reduce_bucket_size", 0)),
            "grad_partition_buffer_bytes":
                0 if grad_buffer is None else grad_buffer.numel() * grad_buffer.element_size(),
            "torch_threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="t5-small", choices=list(MODELS))
    parser.add_argument("--method", default="dense", choices=list(METHODS))
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps taken")
    args = parser.parse_args()
    ranks = run_distributed(run, WORLD_SIZE, args.model, args.method, args.steps,
                            f"/tmp/memory_breakdown_{args.model}", timeout_s=1800)
    path = RESULTS / f"memory_breakdown_{args.model}_{args.method.replace('+', '_')}.json"
    path.write_text(json.dumps({**provenance(), "model": args.model, "method": args.method, "ranks": ranks},
                               indent=1))
    mib = 2**20
    print(f"{'point':<28}" + "".join(f"{k:>12}" for k in ("RSS", "HWM", "anon", "file", "shmem", "in use",
                                                          "free kept", "mmapped")) + "   (MiB, rank 0)")
    for p in ranks[0]["points"]:
        print(f"{p['point']:<28}" + "".join(f"{p[k] / mib:12.0f}" for k in (
            "VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem", "malloc_in_use", "malloc_free_kept", "malloc_mmapped")))
    print({k: round(v / mib, 1) for k, v in ranks[0]["allocated"].items()}, "MiB;",
          f"trainable {ranks[0]['trainable_parameters']:,}, bucket {ranks[0]['reduce_bucket_elements']:,} elements, "
          f"grad partition buffer {ranks[0]['grad_partition_buffer_bytes'] / mib:.1f} MiB; wrote {path.name}")


if __name__ == "__main__":
    main()
