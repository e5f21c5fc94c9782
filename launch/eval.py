"""Evaluate an exported model: the script that launchers start (``deepspeed`` needs a script path); the
command itself is ``sparse-dist eval`` (sparse_dist/cli/eval.py).

    python -m launch.eval --model runs/tiny_bert_sst2/final/model --task sst2 --data-dir ../shared/data
    deepspeed --num_gpus 2 launch/eval.py --model runs/tiny_bert_sst2/final/model --task sst2 --data-dir ../shared/data
    torchrun --nproc_per_node 2 launch/eval.py --model runs/tiny_ner_conll/final/model --task conll2003
"""

from sparse_dist.cli import exit_after
from sparse_dist.cli.eval import main

__all__ = ["main"]

if __name__ == "__main__":
    exit_after(main, prog="launch/eval.py")
