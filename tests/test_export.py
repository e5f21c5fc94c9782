"""Export round trip: exported models score exactly like the model in training, without sparse_dist."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

from harness import run_distributed
from runs import tiny_config
from sparse_dist.distributed.env import free_port, init_distributed
from sparse_dist.models.tiny import tiny_checkpoint
from sparse_dist.pruning.export import BaseModelMismatch, load_mask_artifact
from sparse_dist.trainer import Trainer

pytestmark = pytest.mark.distributed
REPO = Path(__file__).resolve().parents[1]
METHODS = {"magnitude": {"method": "magnitude", "scope": "global"},
           "movement": {"method": "movement", "scope": "local"},
           "smp": {"method": "smp", "scope": "per_type"}}


def train_and_score(method: str, stage: int, run_dir: str) -> dict:
    """Train a pruned tiny BERT briefly, export it, and return its eval-mode logits on the first dev batch."""
    env = init_distributed()
    config = tiny_config(run_dir, world_size=env.world_size, zero={"stage": stage},
                         training={"max_steps": 4, "global_batch_size": 4, "micro_batch_size": 2},
                         pruning={"target_remaining": 0.4, **METHODS[method]}, checkpoint={"save_final_model": True})
    trainer = Trainer(config, env)
    result = trainer.train()
    batch = trainer.task_data.collator([trainer.task_data.dev[0].inputs[i] for i in range(8)])
    batch.pop("idx")
    module = trainer.engine.module.eval()
    with torch.no_grad():
        logits = module(**batch).logits.float()
    return {"logits": logits, "batch": batch, "sparsity": result.sparsity}


def exported_logits(model_dir: Path, batch: dict, label_words: bool) -> torch.Tensor:
    if label_words:
        model = AutoModelForMaskedLM.from_pretrained(model_dir).eval()
        ids = json.loads((model_dir / "label_words.json").read_text())["label_word_ids"]
        with torch.no_grad():
            return model(**batch).logits[:, 0, ids].float()
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return model(**batch).logits.float()


@pytest.mark.parametrize("stage, world_size", [(0, 1), (3, 2)], ids=["zero0-1rank", "zero3-2ranks"])
@pytest.mark.parametrize("method", METHODS)
def test_exported_model_gives_the_training_logits_and_sparsity(method, stage, world_size, tmp_path):
    run_dir = tmp_path / "run"
    trained = run_distributed(train_and_score, world_size, method, stage, str(run_dir))[0]
    model_dir = run_dir / "final" / "model"
    logits = exported_logits(model_dir, trained["batch"], label_words=method == "smp")
    assert torch.allclose(logits, trained["logits"], atol=1e-5), (logits, trained["logits"])
    report = json.loads((model_dir / "sparsity.json").read_text())
    assert report["remaining"] == pytest.approx(trained["sparsity"]["remaining"], abs=0)
    assert report["remaining"] == pytest.approx(0.4, abs=1e-3)
    weights = load_file(str(model_dir / "model.safetensors"))
    zeros = sum(int((weights[f"{name}.weight"] == 0).sum()) for name in report["matrices"])
    assert zeros == report["prunable_weights"] - report["kept"]  # folded: pruned weights are exactly 0
    assert not any(name.endswith(".scores") for name in weights)
    if method == "smp":
        check_mask_artifact(run_dir / "final" / "mask", trained, tmp_path)


def check_mask_artifact(mask_dir: Path, trained: dict, tmp_path: Path) -> None:
    meta = json.loads((mask_dir / "mask.json").read_text())
    model = load_mask_artifact(mask_dir).eval()  # rebuilt from the base model named in the artifact
    with torch.no_grad():
        logits = model(**trained["batch"]).logits[:, 0, meta["label_word_ids"]].float()
    assert torch.allclose(logits, trained["logits"], atol=1e-5)
    bits = sum(t.numel() for t in load_file(str(mask_dir / "mask.safetensors")).values())
    assert bits == sum((s["shape"][0] * s["shape"][1] + 7) // 8 for s in meta["sites"].values())  # 1 bit/weight
    other = tmp_path / "other-base"
    shutil.copytree(tiny_checkpoint("tiny-bert"), other)
    state = load_file(str(other / "model.safetensors"))
    key = next(k for k in state if k.endswith("attention.self.query.weight"))
    state[key][0, 0] += 1e-3
    save_file(state, str(other / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(BaseModelMismatch, match="is not the base model of the mask"):
        load_mask_artifact(mask_dir, base=str(other))


@pytest.mark.e2e
def test_export_from_a_zero3_checkpoint_through_the_launcher(tmp_path):
    run_dir = tmp_path / "run"
    trained = run_distributed(train_and_score, 2, "smp", 3, str(run_dir))[0]
    done = subprocess.run([str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2",
                           "--master_port", str(free_port()), "launch/export.py",
                           "--run-dir", str(run_dir), "--out", str(tmp_path / "export")], cwd=REPO,
                          env=os.environ.copy(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    logits = exported_logits(tmp_path / "export" / "model", trained["batch"], label_words=True)
    assert torch.allclose(logits, trained["logits"], atol=1e-5)
    assert (tmp_path / "export" / "mask" / "mask.safetensors").is_file()
