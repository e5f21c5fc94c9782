"""Small run configs for tests: a tiny model on a slice of real data, as ``section.key=value`` lists."""

from __future__ import annotations

from pathlib import Path

from sparse_dist.config import RunConfig, load_config

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"


def tiny_overrides(run_dir: Path | str, model: str = "tiny-bert", task: str = "sst2", **sections) -> list[str]:
    """Overrides for a short deterministic run (dropout 0) of ``model`` on ``task``.

    Keyword arguments are ``section={"key": value}`` dicts merged over the defaults below.
    """
    base = {
        "job": {"run_dir": str(run_dir), "seed": 7},
        "model": {"name_or_path": model, "dropout": 0.0},
        "data": {"task": task, "local_dir": str(DATA_DIR), "max_seq_length": 48, "max_train_examples": 64,
                 "max_eval_examples": 21},
        "training": {"max_steps": 3, "global_batch_size": 8, "micro_batch_size": 4},
        "optimizer": {"lr": 3e-3, "warmup_steps": 0},
        "eval": {"eval_every_steps": 0, "micro_batch_size": 4, "max_new_tokens": 8},
        "checkpoint": {"save_final_model": False},
        "metrics": {"log_every_steps": 1, "progress_bar": False, "tensorboard": False},
    }
    for section, values in sections.items():
        base.setdefault(section, {}).update(values)
    return [f"{section}.{key}={_yaml(value)}" for section, values in base.items() for key, value in values.items()]


def _yaml(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def tiny_config(run_dir: Path | str, world_size: int = 1, **kwargs) -> RunConfig:
    return load_config(None, tiny_overrides(run_dir, **kwargs), world_size=world_size)
