"""The compact export: compressed-tensors' sparse-bitmask format, decompressed by that library back to the
dense masked export's weights, bit for bit."""

import json

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from harness import run_distributed
from runs import tiny_config
from sparse_dist.distributed.env import init_distributed
from sparse_dist.pruning.compressed import load_compressed_model, load_compressed_state_dict
from sparse_dist.trainer import Trainer

pytestmark = pytest.mark.distributed


def train_then_export_compressed(run_dir: str) -> tuple[int, bool]:
    """A tiny magnitude run (its dense export in final/model), then ``launch/export.py --format compressed``."""
    from launch.export import main as export_main

    env = init_distributed()
    config = tiny_config(run_dir, world_size=env.world_size, checkpoint={"save_final_model": True},
                         pruning={"method": "magnitude", "scope": "global", "target_remaining": 0.3,
                                  "final_warmup_steps": 1})
    Trainer(config, env).train()
    status = export_main(["--run-dir", run_dir, "--format", "compressed", "--out", f"{run_dir}_compressed"])
    return status, dist.is_initialized()  # the caller started the group: the command leaves it up


def bits(tensor: torch.Tensor) -> bytes:
    return tensor.contiguous().numpy().tobytes()  # -0.0 and 0.0 differ here, unlike under torch.equal


def test_compressed_export_decompresses_to_the_dense_export_bit_for_bit(tmp_path):
    run_dir = tmp_path / "run"
    assert run_distributed(train_then_export_compressed, 1, str(run_dir))[0] == (0, True)
    dense_dir, compressed_dir = run_dir / "final" / "model", tmp_path / "run_compressed" / "model"
    dense = load_file(str(dense_dir / "model.safetensors"))
    sparsity = json.loads((dense_dir / "sparsity.json").read_text())
    assert sparsity["remaining"] == pytest.approx(0.3, abs=1e-3)
    assert json.loads((compressed_dir / "sparsity.json").read_text()) == sparsity

    config = json.loads((compressed_dir / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors"
    assert config["sparsity_config"]["format"] == "sparse-bitmask"
    assert sorted(config["sparsity_config"]["targets"]) == sorted(sparsity["matrices"])
    stored = load_file(str(compressed_dir / "model.safetensors"))
    assert all(f"{name}.bitmask" in stored and f"{name}.weight" not in stored for name in sparsity["matrices"])

    decompressed = load_compressed_state_dict(compressed_dir)  # compressed-tensors' own decompression
    assert sorted(decompressed) == sorted(dense)
    for name, tensor in dense.items():
        assert decompressed[name].dtype == tensor.dtype and decompressed[name].shape == tensor.shape, name
        assert bits(decompressed[name]) == bits(tensor), name
    model_state = load_compressed_model(compressed_dir).state_dict()
    assert all(bits(model_state[name]) == bits(tensor) for name, tensor in dense.items())
    assert (compressed_dir / "model.safetensors").stat().st_size < (dense_dir / "model.safetensors").stat().st_size


def test_a_tied_head_is_tied_again_when_the_compressed_export_is_loaded(tmp_path):
    """A label-word export is a masked-LM model whose decoder is the word-embedding table (tied): the file holds
    the table once, so the loaded model must tie the decoder to it again, as ``from_pretrained`` does, or its
    logits come from a random decoder."""
    from transformers import BertConfig, BertForMaskedLM

    from sparse_dist.pruning.compressed import save_compressed_model

    torch.manual_seed(0)
    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, tie_word_embeddings=True)
    model = BertForMaskedLM(config).eval()
    site = "bert.encoder.layer.0.attention.self.query"
    with torch.no_grad():
        weight = model.get_submodule(site).weight
        weight[torch.rand_like(weight) < 0.5] = 0.0
    save_compressed_model(model, model.state_dict(), tmp_path, [site], remaining=0.5)

    loaded = load_compressed_model(tmp_path)
    assert loaded.cls.predictions.decoder.weight is loaded.bert.embeddings.word_embeddings.weight
    inputs = torch.randint(0, 64, (2, 7))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=inputs).logits, model(input_ids=inputs).logits)
