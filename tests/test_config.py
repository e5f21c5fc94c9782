"""Config loading: precedence, rejection of bad configs with one clear line, shipped configs."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sparse_dist.config import ConfigError, RunConfig, config_to_dict, describe_config, dump_config, load_config

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_defaults_then_yaml_then_overrides(tmp_path):
    path = write(tmp_path, "training:\n  max_steps: 50\n  micro_batch_size: 8\noptimizer:\n  lr: 1.0e-4\n")
    config = load_config(path, ["training.max_steps=70"], world_size=1)
    assert config.training.max_steps == 70  # override beats YAML
    assert config.training.micro_batch_size == 8  # YAML beats default
    assert config.optimizer.lr == 1e-4
    assert config.training.global_batch_size == RunConfig().training.global_batch_size  # default kept


def test_override_values_are_typed(tmp_path):
    config = load_config(None, ["optimizer.betas=[0.8, 0.95]", "model.dropout=null", "zero.offload_optimizer=true",
                                "zero.stage=2", "optimizer.lr=3e-5"], world_size=1)
    assert config.optimizer.betas == (0.8, 0.95)
    assert config.model.dropout is None
    assert config.zero.offload_optimizer is True
    assert config.optimizer.lr == 3e-5


def test_grad_accum_steps_derived_from_world_size():
    config = load_config(None, ["training.global_batch_size=32", "training.micro_batch_size=4"], world_size=2)
    assert config.grad_accum_steps == 4


@pytest.mark.parametrize("overrides, world_size, message", [
    (["training.max_stpes=5"], 1, "training.max_stpes: unknown key in section 'training'; did you mean "
                                  "'training.max_steps'?"),
    (["trainer.max_steps=5"], 1, "trainer: unknown key in the top level; did you mean 'training'?"),
    (["training.max_steps=abc"], 1, "training.max_steps: must be an integer, got 'abc'"),
    (["training.max_steps=2.5"], 1, "training.max_steps: must be an integer, got 2.5"),
    (["training.max_steps=-5"], 1, "training.max_steps: must be >= 1, got -5"),
    (["training.global_batch_size=30", "training.micro_batch_size=4"], 2,
     "training.global_batch_size: must be a multiple of micro_batch_size x world_size = 4 x 2, got 30"),
    (["zero.stage=4"], 1, "zero.stage: must be 0, 1, 2 or 3, got 4"),
    (["zero.offload_params=true", "zero.stage=2"], 1, "zero.offload_params: needs zero.stage = 3, got True"),
    (["zero.offload_optimizer=yes-please"], 1, "zero.offload_optimizer: must be true or false"),
    (["training.precision=fp16"], 1, "training.precision: must be one of 'auto', 'fp32', 'bf16', got 'fp16'"),
    (["data.task=imdb"], 1, "data.task: must be one of conll2003, cola, sst2"),
    (["optimizer.betas=[0.9]"], 1, "optimizer.betas: must be a list of 2 values"),
    (["optimizer.warmup_steps=20", "training.max_steps=10"], 1, "optimizer.warmup_steps: must be in [0, "
                                                                "training.max_steps], got 20"),
    (["zero.template=/nonexistent.json"], 1, "zero.template: file not found"),
    (["training.max_steps"], 1, "override 'training.max_steps': expected section.key=value"),
    (["max_steps=3"], 1, "the key must be section.key"),
])
def test_bad_configs_rejected_with_the_key_named(overrides, world_size, message):
    with pytest.raises(ConfigError) as caught:
        load_config(None, overrides, world_size=world_size)
    text = str(caught.value)
    assert message in text
    assert "\n" not in text


def test_bad_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "training: [unclosed\n"))
    with pytest.raises(ConfigError, match="the top level must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="training: must be a mapping"):
        load_config(write(tmp_path, "training: 5\n"))


def test_resolved_config_round_trips(tmp_path):
    config = load_config(None, ["training.max_steps=9", "optimizer.betas=[0.8, 0.9]", "zero.stage=3"], world_size=1)
    dump_config(config, tmp_path / "resolved.yaml")
    again = load_config(tmp_path / "resolved.yaml", world_size=1)
    assert again == config
    assert yaml.safe_load((tmp_path / "resolved.yaml").read_text()) == config_to_dict(config)


def test_every_key_is_documented():
    text = describe_config()
    for section, values in config_to_dict(RunConfig()).items():
        for key in values:
            line = next(line for line in text.splitlines() if line.strip().startswith(f"{key}:"))
            assert line.split("#", 1)[1].strip(), f"{section}.{key} has no docstring"


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load_and_validate(path):
    for world_size in (1, 2):
        config = load_config(path, world_size=world_size)
        assert config.training.max_steps >= 1


def test_cli_rejects_bad_config_before_any_process_group(tmp_path):
    # WORLD_SIZE=2 without a second rank: if the launcher tried to start a process group it would hang.
    env = {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1", "PATH": "/usr/bin"}
    done = subprocess.run([sys.executable, "-m", "launch.train", "--config", str(REPO / "configs/tiny_bert_sst2.yaml"),
                           "training.max_steps=-1"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == "config error: training.max_steps: must be >= 1, got -1"
