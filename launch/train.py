"""Train (and prune) a model: the script that launchers start (``deepspeed``, ``torchrun`` and the SLURM
scripts need a script path); the command itself is ``sparse-dist train`` (sparse_dist/cli/train.py).

    python -m launch.train --config configs/tiny_bert_sst2.yaml                      # one process
    deepspeed --num_gpus 2 launch/train.py --config configs/minilm_sst2.yaml        # 2 ranks (CPU: gloo)
    torchrun --nproc_per_node 2 launch/train.py --config configs/minilm_sst2.yaml training.max_steps=50
    python -m launch.train --help-config                                             # every key, documented
    python -m launch.train --completed --config configs/minilm_sst2.yaml            # 0 if this run is complete
"""

from sparse_dist.cli import exit_after
from sparse_dist.cli.train import main

__all__ = ["main"]

if __name__ == "__main__":
    exit_after(main, prog="launch/train.py")
