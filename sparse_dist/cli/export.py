"""``sparse-dist export``: the latest checkpoint of a run as a plain transformers model (masks folded in)
and, for SMP, as a mask-only artifact. Run it with the world size the run was trained with:

    sparse-dist export --run-dir runs/smp_minilm_sst2                               # one-rank runs
    sparse-dist export --run-dir runs/smp_minilm_sst2 --format compressed --out /tmp/compact
    deepspeed --num_gpus 2 launch/export.py --run-dir runs/pins_t5_large            # a 2-rank ZeRO-3 run

``--format compressed`` writes the prunable matrices in compressed-tensors' sparse-bitmask format (kept
values, a bitmask, row offsets; the format in config.json), which compressed-tensors decompresses back to
exactly the dense export's weights. Under ZeRO-3 parameters are gathered one at a time into host memory
on rank 0: no rank ever holds the whole model in accelerator memory. Outputs go to <run-dir>/export (or
--out).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sparse_dist.config import ConfigError, load_config

MODEL_FORMATS = ("dense", "compressed")  # sparse_dist.pruning.export.MODEL_FORMATS, without importing torch


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True, help="run directory (holds config.yaml and checkpoints/)")
    parser.add_argument("--out", help="output directory (default: <run-dir>/export)")
    parser.add_argument("--format", choices=MODEL_FORMATS, default="dense",
                        help="how the model's weights are stored (default: dense)")
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    return parser


def _compressed_tensors_missing() -> str | None:
    try:
        import compressed_tensors
        from compressed_tensors.compressors import BitmaskCompressor  # noqa: F401  (0.12-0.13 have it)
    except ImportError:
        return ("--format compressed needs compressed-tensors >= 0.12, < 0.14 "
                "(pip install 'sparse-dist[compressed]')")
    del compressed_tensors
    return None


def main(argv: list[str] | None = None, prog: str = "sparse-dist export") -> int:
    args = build_parser(prog).parse_args(argv)
    run_dir = Path(args.run_dir)
    if args.format == "compressed" and (missing := _compressed_tensors_missing()):
        print(f"error: {missing}", file=sys.stderr)
        return 2
    try:
        config = load_config(run_dir / "config.yaml", [f"job.run_dir={run_dir}", "checkpoint.resume=true"])
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2

    from sparse_dist.distributed.env import init_distributed, init_logging, shutdown_distributed

    env = init_distributed()
    init_logging(env.rank)
    status = _export(config, env, run_dir, args)
    shutdown_distributed(env)
    return status


def _export(config, env, run_dir: Path, args: argparse.Namespace) -> int:
    """Restore the run's last checkpoint on this rank and export it; the exit status (0, 1 or 2)."""
    from sparse_dist.trainer import Trainer

    try:
        trainer = Trainer(config, env)  # refuses another run's checkpoints (or an old ZeRO one on another world size)
    except ConfigError as error:
        if env.is_main:
            print(f"config error: {error}", file=sys.stderr)
        return 2
    if not trainer.restore():
        print(f"error: {run_dir} has no usable checkpoint to export", file=sys.stderr)
        return 1
    trainer.export(Path(args.out) if args.out else run_dir / "export", model_format=args.format)
    return 0
