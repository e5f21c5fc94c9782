"""The DeepSpeed config is derived from the run config, and templates cannot contradict it."""

import json

import pytest

from sparse_dist.config import ConfigError, load_config
from sparse_dist.distributed.deepspeed_config import build_deepspeed_config, merge_template, resolve_precision


def derive(overrides, world_size=2, on_gpu=False, precision="fp32"):
    config = load_config(None, overrides, world_size=world_size)
    return build_deepspeed_config(config.training, config.optimizer, config.zero, world_size, precision, on_gpu)


def test_batch_arithmetic():
    ds = derive(["training.global_batch_size=48", "training.micro_batch_size=4"], world_size=3)
    assert ds["train_batch_size"] == 48
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (4, 4)


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_zero_stage_and_offload(stage):
    overrides = [f"zero.stage={stage}"]
    if stage >= 1:
        overrides.append("zero.offload_optimizer=true")
    if stage == 3:
        overrides.append("zero.offload_params=true")
    zero = derive(overrides)["zero_optimization"]
    assert zero["stage"] == stage
    assert ("offload_optimizer" in zero) == (stage >= 1)
    assert ("offload_param" in zero) == (stage == 3)


def test_precision_and_optimizer_follow_the_machine():
    cpu = derive([], on_gpu=False, precision="fp32")
    assert cpu["bf16"]["enabled"] is False and cpu["optimizer"]["params"]["torch_adam"] is True
    gpu = derive([], on_gpu=True, precision="bf16")
    assert gpu["bf16"]["enabled"] is True and gpu["optimizer"]["params"]["torch_adam"] is False
    offload = derive(["zero.stage=2", "zero.offload_optimizer=true"], on_gpu=True, precision="bf16")
    assert offload["optimizer"]["params"]["torch_adam"] is False  # DeepSpeed's CPU Adam runs the step
    assert offload["zero_optimization"]["offload_optimizer"]["pin_memory"] is True


def test_resolve_precision():
    config = load_config(None, [], world_size=1)
    assert resolve_precision(config.training, on_gpu=False, gpu_supports_bf16=False) == "fp32"
    assert resolve_precision(config.training, on_gpu=True, gpu_supports_bf16=True) == "bf16"
    assert resolve_precision(config.training, on_gpu=True, gpu_supports_bf16=False) == "fp32"
    bf16 = load_config(None, ["training.precision=bf16"], world_size=1)
    with pytest.raises(ConfigError, match="training.precision: bf16 needs a GPU"):
        resolve_precision(bf16.training, on_gpu=False, gpu_supports_bf16=False)


def test_template_merges_nested_keys(tmp_path):
    template = tmp_path / "t.json"
    template.write_text(json.dumps({"zero_optimization": {"reduce_bucket_size": 1000}, "steps_per_print": 5}))
    ds = derive(["zero.stage=2", f"zero.template={template}"])
    assert ds["zero_optimization"] == {"stage": 2, "reduce_bucket_size": 1000, "memory_efficient_linear": False}
    assert ds["steps_per_print"] == 5


def test_template_cannot_contradict_the_run_config():
    derived = derive(["training.global_batch_size=16", "training.micro_batch_size=4"])
    with pytest.raises(ConfigError, match="sets train_batch_size=64"):
        merge_template(derived, {"train_batch_size": 64})
    with pytest.raises(ConfigError, match="sets zero_optimization.stage=3"):
        merge_template(derived, {"zero_optimization": {"stage": 3}})
    assert merge_template(derived, {"train_batch_size": 16})["train_batch_size"] == 16
