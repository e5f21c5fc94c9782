"""Export the latest checkpoint of a run: the script that launchers start (``deepspeed`` and ``torchrun``
need a script path); the command itself is ``sparse-dist export`` (sparse_dist/cli/export.py).

    python -m launch.export --run-dir runs/smp_minilm_sst2                       # one-rank runs
    deepspeed --num_gpus 2 launch/export.py --run-dir runs/pins_t5_large         # a 2-rank ZeRO-3 run
    python -m launch.export --run-dir runs/smp_minilm_sst2 --format compressed   # sparse-bitmask weights
"""

from sparse_dist.cli import exit_after
from sparse_dist.cli.export import main

__all__ = ["main"]

if __name__ == "__main__":
    exit_after(main, prog="launch/export.py")
