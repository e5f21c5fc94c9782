"""sparse_dist: prune pre-trained language models while adapting them to a task, under DeepSpeed ZeRO."""

__version__ = "0.1.0"
