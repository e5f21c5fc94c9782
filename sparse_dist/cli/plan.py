"""``sparse-dist plan``: the memory each rank of a run needs, from the config alone (nothing is allocated).

    sparse-dist plan --config configs/pins_t5_large.yaml --world-size 8                  # 8 GPUs of 80 GB
    sparse-dist plan --config configs/pins_t5_large.yaml --world-size 16 model.name_or_path=t5-11b
    sparse-dist plan --config configs/tiny_pins_bert_rte.yaml --world-size 2 --cpu zero.stage=3  # as on this machine

The model is built on the meta device from its transformers config; DeepSpeed's partitioning rules (ZeRO
0-3, CPU offload, bf16 on a GPU or fp32 on CPUs) and the pruning method's state give the bytes of weights,
gradients, optimizer state, mask scores and their optimizer state, importance statistics, packed masks
and the teacher's CPU partition, exactly; gradient buckets, gathered parameters and activations are
estimates. See docs/planner.md. A bad config or memory size is one line, exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from sparse_dist.config import ConfigError, load_config


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML run config")
    parser.add_argument("--world-size", type=int, required=True, help="number of ranks (GPUs or processes)")
    parser.add_argument("--device-memory", default="80GB", help="memory of one device (default 80GB; GB = GiB)")
    parser.add_argument("--cpu", action="store_true", help="plan a CPU run (fp32, gloo) instead of GPUs")
    parser.add_argument("--rank", type=int, help="show this rank (default: the one with the most device bytes)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON (bytes) instead of a table")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    return parser


def main(argv: list[str] | None = None, prog: str = "sparse-dist plan") -> int:
    args = build_parser(prog).parse_args(argv)
    from sparse_dist.plan import format_plan, malloc_mmap_threshold, parse_memory, plan_all_ranks, plan_json

    try:
        device_memory = parse_memory(args.device_memory)
    except ValueError:
        print(f"error: --device-memory: not a size: {args.device_memory!r} (e.g. 80GB, 40GiB)", file=sys.stderr)
        return 2
    if args.world_size < 1 or (args.rank is not None and not 0 <= args.rank < args.world_size):
        print(f"error: --world-size must be >= 1 and --rank in [0, world size), got {args.world_size}, {args.rank}",
              file=sys.stderr)
        return 2
    try:
        config = load_config(args.config, args.overrides, world_size=args.world_size)
        with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed's import notes go to stdout; the plan alone does
            plans = plan_all_ranks(config, args.world_size, on_gpu=not args.cpu,
                                   mmap_threshold=malloc_mmap_threshold(os.environ))
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
    if args.rank is not None:
        plan, why = plans[args.rank], ""
    else:  # ranks differ only by padding and by which fragments they own
        plan, why = max(plans, key=lambda p: (p.device_total(), -p.rank)), "the rank with the most device bytes"
    print(plan_json(plan, device_memory) if args.json else format_plan(plan, device_memory, why))
    return 0
