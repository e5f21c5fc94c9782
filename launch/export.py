"""Export the latest checkpoint of a run as a plain transformers model (masks folded in) and, for SMP,
as a mask-only artifact. Run it with the world size the run was trained with:

    python -m launch.export --run-dir runs/smp_minilm_sst2                       # one-rank runs
    deepspeed --num_gpus 2 launch/export.py --run-dir runs/pins_t5_large         # a 2-rank ZeRO-3 run

Under ZeRO-3 parameters are gathered one at a time into host memory on rank 0: no rank ever holds
the whole model in accelerator memory. Outputs go to <run-dir>/export (or --out).
"""

import argparse
import sys
from pathlib import Path

from sparse_dist.config import ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True, help="run directory (holds config.yaml and checkpoints/)")
    parser.add_argument("--out", help="output directory (default: <run-dir>/export)")
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    try:
        config = load_config(run_dir / "config.yaml", [f"job.run_dir={run_dir}", "checkpoint.resume=true"])
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2

    from sparse_dist.distributed.env import init_distributed, init_logging
    from sparse_dist.trainer import Trainer

    env = init_distributed()
    init_logging(env.rank)
    try:
        trainer = Trainer(config, env)  # refuses another run's checkpoints (or an old ZeRO one on another world size)
    except ConfigError as error:
        if env.is_main:
            print(f"config error: {error}", file=sys.stderr)
        return 2
    if not trainer.restore():
        print(f"error: {run_dir} has no usable checkpoint to export", file=sys.stderr)
        return 1
    trainer.export(Path(args.out) if args.out else run_dir / "export")
    return 0


if __name__ == "__main__":
    sys.exit(main())
