"""End to end through the real launchers: ``deepspeed`` and ``torchrun`` with 2 CPU ranks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sparse_dist.distributed.env import free_port

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.e2e


def deepspeed_launcher() -> list[str]:
    """The deepspeed launcher with 2 ranks on a free port (never a fixed one another job may hold)."""
    return [str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port())]


def launch(command: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=REPO, env=os.environ.copy(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done


def scalar_tags(run_dir: Path) -> dict[str, list[int]]:
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {tag: [e.step for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_torchrun_zero2_tiny_bert(tmp_path, data_dir):
    run_dir = tmp_path / "run"
    done = launch([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()), "launch/train.py",
                   "--config", "configs/tiny_bert_sst2.yaml", f"job.run_dir={run_dir}", f"data.local_dir={data_dir}",
                   "zero.stage=2", "metrics.progress_bar=false"])
    assert "2 rank(s), ZeRO-2" in done.stdout
    assert (run_dir / "config.yaml").is_file() and (run_dir / "final" / "model" / "model.safetensors").is_file()
    assert scalar_tags(run_dir)["eval/accuracy"] == [4, 8]


@pytest.mark.parametrize("config, metric", [("configs/tiny_pins_bert_rte.yaml", "accuracy"),
                                            ("configs/tiny_pins_t5_webnlg.yaml", "bleu")])
def test_deepspeed_launcher_zero3_tiny_pins(config, metric, tmp_path, data_dir):
    """PINS with self-regularization from the offloaded teacher, 12 steps to 30% remaining, ZeRO-3: what each
    rank logs, the resolved config, TensorBoard, the export (T5's generates)."""
    run_dir = tmp_path / "run"
    done = launch([*deepspeed_launcher(), "launch/train.py", "--config", config,
                   f"job.run_dir={run_dir}", f"data.local_dir={data_dir}", "zero.stage=3",
                   "metrics.progress_bar=false"])
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    task, model = resolved["data"]["task"], resolved["model"]["name_or_path"]
    assert f"run {resolved['job']['name']}: {model} on {task}, 12 steps, 2 rank(s), ZeRO-3" in done.stdout
    assert resolved["zero"]["stage"] == 3 and resolved["pruning"]["method"] == "pins"
    # Every line carries its rank; rank 1 logs only warnings, and the one line saying where it runs.
    rank1 = [line for line in done.stderr.splitlines() if "[rank1]" in line]
    assert any("sparse_dist.placement: rank 1 of 2 on host" in line for line in rank1), done.stderr[-2000:]
    assert all(" WARNING " in line or "sparse_dist.placement" in line for line in rank1), rank1
    assert "teacher updated from the student (update 1)" in done.stdout + done.stderr
    tags = scalar_tags(run_dir)
    assert tags["train/loss"] == list(range(2, 13, 2))  # every metrics.log_every_steps (2)
    for tag in ("train/lr", "sys/samples_per_s", "sys/mem_gib", "prune/remaining", "prune/threshold",
                "importance/mean", "teacher/updates", "teacher/alpha_mean", "train/kd_loss", "train/ce_loss",
                f"eval/{metric}"):
        assert tag in tags, f"missing TensorBoard tag {tag}"
    report = json.loads((run_dir / "final" / "model" / "sparsity.json").read_text())
    assert report["remaining"] == pytest.approx(0.3, abs=1e-4)
    assert json.loads((run_dir / "COMPLETED").read_text())["steps"] == 12
    if task == "webnlg":
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        model = AutoModelForSeq2SeqLM.from_pretrained(run_dir / "final" / "model")
        tokenizer = AutoTokenizer.from_pretrained(run_dir / "final" / "model")
        ids = tokenizer("translate triples to text: Aarhus | leaderName | Jacob Bundsgaard", return_tensors="pt")
        assert model.generate(**ids, max_new_tokens=4).shape[0] == 1
