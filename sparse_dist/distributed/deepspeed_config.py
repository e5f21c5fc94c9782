"""The DeepSpeed config, derived from the run config in one place.

Batch arithmetic, ZeRO stage, offload, optimizer and precision all come from the run config; a JSON
template (``zero.template``, see ``configs/deepspeed/``) may be merged on top for DeepSpeed knobs the
run config does not model (bucket sizes, prefetch depth, ...). The template cannot change what the
run config decides: a template key that contradicts a derived value is an error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sparse_dist.config import ConfigError, OptimizerConfig, TrainingConfig, ZeroConfig


def resolve_precision(training: TrainingConfig, on_gpu: bool, gpu_supports_bf16: bool) -> str:
    """'fp32' on CPU; 'bf16' on a GPU that supports it when precision is auto."""
    if training.precision == "auto":
        return "bf16" if on_gpu and gpu_supports_bf16 else "fp32"
    if training.precision == "bf16" and not (on_gpu and gpu_supports_bf16):
        raise ConfigError("training.precision: bf16 needs a GPU with bf16 support, got 'bf16' on this machine")
    return training.precision


def build_deepspeed_config(training: TrainingConfig, optimizer: OptimizerConfig, zero: ZeroConfig,
                           world_size: int, precision: str, on_gpu: bool) -> dict[str, Any]:
    """The DeepSpeed config dict for ``deepspeed.initialize`` and for ZeRO-3 model construction."""
    micro = training.micro_batch_size
    accum = training.global_batch_size // (micro * world_size)
    # DeepSpeed's "memory efficient linear" replaces torch.nn.functional.linear for the whole process the
    # first time a model is built under zero.Init, and never restores it: the numerics of every later model
    # (another run in the same process, a teacher, ZeRO-0 after ZeRO-3) would depend on what ran before.
    zero_section: dict[str, Any] = {"stage": zero.stage, "memory_efficient_linear": False}
    if zero.offload_optimizer:
        zero_section["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu}
    if zero.offload_params:
        zero_section["offload_param"] = {"device": "cpu", "pin_memory": on_gpu}
    if zero.stage == 3:
        # Gather full parameters for save_16bit_model and keep ZeRO-3's bookkeeping deterministic.
        zero_section["stage3_gather_16bit_weights_on_model_save"] = True
    adam = {
        "lr": optimizer.lr,
        "betas": list(optimizer.betas),
        "eps": optimizer.eps,
        "weight_decay": optimizer.weight_decay,
        "adam_w_mode": True,
        # FusedAdam needs a GPU; on CPU without offload the torch implementation runs the step.
        # With optimizer offload DeepSpeed's CPU Adam (a small C++ op) runs it on either machine.
        "torch_adam": not on_gpu and not zero.offload_optimizer,
    }
    config: dict[str, Any] = {
        "train_batch_size": training.global_batch_size,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        # Clipping is done by DeepSpeed so that the step uses exactly the clipped, averaged gradient.
        "gradient_clipping": training.max_grad_norm,
        "zero_optimization": zero_section,
        "optimizer": {"type": "AdamW", "params": adam},
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": False},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
    }
    if zero.template is not None:
        config = merge_template(config, json.loads(Path(zero.template).read_text()), source=zero.template)
    return config


_DERIVED_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")


def merge_template(derived: dict[str, Any], template: dict[str, Any], source: str = "template") -> dict[str, Any]:
    """Merge a DeepSpeed JSON template into the derived config (nested dicts merge key by key).

    Batch sizes and the ZeRO stage are owned by the run config: a template that sets them to another
    value is rejected, so the YAML stays the single source of truth.
    """
    for key in _DERIVED_KEYS:
        if key in template and template[key] != derived[key]:
            raise ConfigError(f"zero.template: {source} sets {key}={template[key]!r}, but the run config derives "
                              f"{derived[key]!r}; set batch sizes in the training section instead")
    stage = template.get("zero_optimization", {}).get("stage")
    if stage is not None and stage != derived["zero_optimization"]["stage"]:
        raise ConfigError(f"zero.template: {source} sets zero_optimization.stage={stage!r}, but zero.stage is "
                          f"{derived['zero_optimization']['stage']!r}")
    return _deep_merge(derived, template)


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
