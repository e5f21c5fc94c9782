"""``sparse-dist eval``: an exported model scores exactly the run's final dev metrics, on 1 and 2 ranks, in
every form an export takes (dense classifier, compressed, SMP label-word model, SMP mask + base model) and
for sequence and token classification; bad arguments are one line naming the path, exit status 2.

Why exact: the command runs the evaluation training runs (``sparse_dist.evaluation.Evaluator``) on the
same weights (masks folded in are the masked weights; compressed-tensors decompresses them bit for bit),
the same dev examples cut the same way (``--config`` of the run), and the task's metric is computed once,
on the predictions gathered from every rank in dataset order. On 1 rank (as the runs) the batches are the
run's, so the logits are too; on 2 ranks each batch holds other examples, padded to another length, which can move
a logit by float rounding (~1e-7): a prediction, an argmax, changes only if two classes tie that closely,
which these runs do not have, so the metrics are asserted equal, not close.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import run_distributed
from runs import DATA_DIR, tiny_config
from sparse_dist.cli.eval import main as eval_main
from sparse_dist.distributed.env import free_port

REPO = Path(__file__).resolve().parents[1]
PRUNING = {"classifier": {"method": "magnitude", "scope": "global", "target_remaining": 0.4,
                          "prune_every_steps": 1, "final_warmup_steps": 1},
           "smp": {"method": "smp", "scope": "per_type", "target_remaining": 0.5},
           "ner": {"method": "magnitude", "scope": "global", "target_remaining": 0.4,
                   "prune_every_steps": 1, "final_warmup_steps": 1}}
TASKS = {"classifier": "sst2", "smp": "sst2", "ner": "conll2003"}


def one_line_error(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


# --- bad arguments, refused before any rank starts ----------------------------------------------


def test_a_directory_that_is_not_a_model_is_refused(tmp_path, capsys):
    assert eval_main(["--model", str(tmp_path), "--task", "sst2"]) == 2
    assert one_line_error(capsys) == (f"error: --model: {tmp_path}: not an exported model (no config.json) "
                                      "nor a mask artifact (no mask.json)")
    assert eval_main(["--model", str(tmp_path / "absent"), "--task", "sst2"]) == 2
    assert one_line_error(capsys) == f"error: --model: {tmp_path / 'absent'}: no such directory"


def test_an_unknown_task_and_a_missing_data_dir_are_refused(tmp_path, capsys):
    assert eval_main(["--model", str(tmp_path), "--task", "sst3"]) == 2
    assert one_line_error(capsys) == "error: --task: unknown task 'sst3'; did you mean 'sst2'?"
    assert eval_main(["--model", str(tmp_path)]) == 2
    assert one_line_error(capsys) == "error: --task: required (or --config of the run, whose data.task is used)"
    assert eval_main(["--model", str(tmp_path), "--task", "sst2", "--data-dir", str(tmp_path / "data")]) == 2
    assert one_line_error(capsys) == f"error: --data-dir: {tmp_path / 'data'}: no such directory"
    assert eval_main(["--model", str(tmp_path), "--config", str(tmp_path / "config.yaml")]) == 2
    assert one_line_error(capsys) == f"error: --config: {tmp_path / 'config.yaml'}: file not found"


def test_training_settings_and_a_base_model_for_a_model_are_refused(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    assert eval_main(["--model", str(tmp_path), "--task", "sst2", "training.max_steps=3"]) == 2
    assert one_line_error(capsys) == ("error: training.max_steps=3: only data.* and eval.* settings apply to an "
                                      "evaluation")
    assert eval_main(["--model", str(tmp_path), "--task", "sst2", "--base-model", "tiny-bert"]) == 2
    assert one_line_error(capsys) == f"error: --base-model: applies to a mask artifact only, and {tmp_path} is a model"
    assert eval_main(["--model", str(tmp_path), "--task", "sst2", "eval.num_beams=0"]) == 2
    assert one_line_error(capsys) == "error: eval.num_beams: must be >= 1, got 0"


# --- tiny runs, exported, evaluated -------------------------------------------------------------


def train_and_export(root: str) -> dict[str, dict]:
    """Three tiny 4-step runs (one rank): a pruned classifier (also exported compressed), SMP (label-word
    model and mask), a pruned NER tagger. Returns each run's final dev metrics."""
    from sparse_dist.distributed.env import init_distributed
    from sparse_dist.trainer import Trainer

    env = init_distributed()
    finals = {}
    for name, pruning in PRUNING.items():
        config = tiny_config(f"{root}/{name}", task=TASKS[name], training={"max_steps": 4},
                             pruning=pruning, checkpoint={"save_final_model": True},
                             data={"max_eval_examples": 17 if name == "ner" else 21})
        trainer = Trainer(config, env)
        finals[name] = trainer.train().final_metrics
        if name == "classifier":
            trainer.export(Path(root) / name / "compressed", model_format="compressed")
    return finals


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    root = tmp_path_factory.mktemp("eval_runs")
    return root, run_distributed(train_and_export, 1, str(root))[0]


def eval_command(argv: list[str]) -> tuple[int, bool]:
    """``sparse-dist eval`` on this rank (the ranks have met already): its status and whether the process
    group is still up after it (the caller started it, so the command leaves it up)."""
    import torch.distributed as dist

    return eval_main(argv), dist.is_initialized()


EXPORTS = {"classifier dense": ("classifier", "final/model"),
           "classifier compressed": ("classifier", "compressed/model"), "smp label words": ("smp", "final/model"),
           "smp mask": ("smp", "final/mask"), "ner": ("ner", "final/model")}


@pytest.mark.distributed
@pytest.mark.slow  # the module's tiny runs and ten evaluations: about 2 minutes on 2 shared cores
@pytest.mark.parametrize("export", EXPORTS)
def test_one_and_two_ranks_score_exactly_the_runs_final_metrics(export, runs, tmp_path):
    root, finals = runs
    run, model = EXPORTS[export]
    run_dir = root / run
    completed = json.loads((run_dir / "COMPLETED").read_text())
    assert completed["final"] == finals[run] and len(finals[run]) >= 1
    for world_size in (1, 2):
        output = tmp_path / f"metrics_{world_size}.json"
        argv = ["--model", str(run_dir / model), "--config", str(run_dir / "config.yaml"), "--output", str(output)]
        assert run_distributed(eval_command, world_size, argv) == [(0, True)] * world_size
        result = json.loads(output.read_text())
        assert result["metrics"] == finals[run], (world_size, result)
        assert result["world_size"] == world_size and result["task"] == TASKS[run]
        assert result["examples"] == {"validation": 17 if run == "ner" else 21}
        assert result["form"] == {"final/mask": "mask", "compressed/model": "compressed"}.get(model, "dense")


@pytest.mark.distributed
@pytest.mark.slow  # shares the module's runs
def test_the_command_line_prints_the_metrics_and_flags_override_the_config(runs):
    root, finals = runs
    run_dir = root / "classifier"
    done = subprocess.run([sys.executable, "-m", "sparse_dist.cli", "eval", "--model", str(run_dir / "final/model"),
                           "--task", "sst2", "--data-dir", str(DATA_DIR), "--micro-batch-size", "4",
                           "data.max_seq_length=48", "data.max_eval_examples=21"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[-2:] == [f"{run_dir / 'final/model'} on sst2 (validation 21 examples, 1 rank(s)):",
                          f"  accuracy {finals['classifier']['accuracy']:.4f}"]


@pytest.mark.distributed
@pytest.mark.slow  # shares the module's runs
def test_a_mask_whose_base_model_differs_is_refused(runs, capsys):
    root, _ = runs
    mask, other = root / "smp" / "final" / "mask", root / "smp" / "final" / "model"  # the pruned weights differ
    assert eval_main(["--model", str(mask), "--base-model", str(other), "--config", str(root / "smp/config.yaml")]) == 2
    line = one_line_error(capsys)
    assert line.startswith(f"error: {other} is not the base model of the mask in {mask}: its prunable weights hash to ")


@pytest.mark.e2e
def test_torchrun_and_the_deepspeed_launcher_run_it_on_two_ranks(runs, tmp_path):
    root, finals = runs
    bin_dir = Path(sys.executable).parent
    commands = {"ner": [str(bin_dir / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()),
                        "-m", "sparse_dist.cli", "eval"],
                "smp": [str(bin_dir / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()),
                        "launch/eval.py"]}
    for run, launcher in commands.items():
        output = tmp_path / f"{run}.json"
        done = subprocess.run([*launcher, "--model", str(root / run / "final/model"),
                               "--config", str(root / run / "config.yaml"), "--output", str(output)],
                              cwd=REPO, env=os.environ.copy(), capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        result = json.loads(output.read_text())
        assert result["world_size"] == 2 and result["metrics"] == finals[run]
