"""Problems that can be known before any rank starts are found by ``--check`` (and by every start): one line
naming the key, exit status 2. Data errors found while loading name the file and row, without a traceback."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer, BertForSequenceClassification

from launch.train import main
from sparse_dist.models.tiny import tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "tiny_bert_sst2.yaml")


def check(capsys, tmp_path, data_dir, *overrides: str) -> tuple[int, str]:
    """``launch.train --check`` in this process (no process group): exit status and stderr."""
    capsys.readouterr()  # what came before (building a test checkpoint) is not the command's
    status = main(["--check", "--config", CONFIG, f"job.run_dir={tmp_path / 'run'}", f"data.local_dir={data_dir}",
                   *overrides])
    return status, capsys.readouterr().err.strip()


def classifier(directory: Path, labels: list[str]) -> Path:
    model = BertForSequenceClassification.from_pretrained(tiny_checkpoint("tiny-bert"), num_labels=len(labels),
                                                          id2label=dict(enumerate(labels)))
    model.save_pretrained(directory)
    return directory


def test_a_valid_config_passes(capsys, tmp_path, data_dir):
    assert check(capsys, tmp_path, data_dir) == (0, "")


def test_bf16_on_a_machine_without_it(capsys, tmp_path, data_dir):
    status, err = check(capsys, tmp_path, data_dir, "training.precision=bf16")
    assert (status, err) == (2, "config error: training.precision: bf16 needs a GPU with bf16 support, got 'bf16' "
                                "on this machine")


def test_a_teacher_with_another_label_count(capsys, tmp_path, data_dir):
    teacher = classifier(tmp_path / "mnli_teacher", ["entailment", "neutral", "contradiction"])
    status, err = check(capsys, tmp_path, data_dir, f"distill.teacher={teacher}")
    assert status == 2
    assert err == (f"config error: distill.teacher: {teacher} is a classifier of 3 label(s) (entailment, neutral, "
                   "contradiction); task sst2 needs 2: negative, positive")


def test_a_teacher_of_another_kind(capsys, tmp_path, data_dir):
    status, err = check(capsys, tmp_path, data_dir, "distill.teacher=tiny-t5")
    assert status == 2 and err.startswith("config error: distill.teacher: tiny-t5 is a t5 model and the student")


def test_a_missing_local_data_dir_while_offline(capsys, tmp_path):
    assert os.environ.get("HF_DATASETS_OFFLINE") == "1"  # set for every test (conftest)
    status, err = check(capsys, tmp_path, tmp_path / "nowhere")
    assert status == 2
    assert err == (f"config error: data.local_dir: {tmp_path / 'nowhere' / 'glue' / 'SST-2'} does not exist, and the "
                   "hub is offline (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE), so sst2 cannot be loaded")


def test_a_missing_file_or_column_in_the_local_data(capsys, tmp_path):
    sst2 = tmp_path / "data" / "glue" / "SST-2"
    sst2.mkdir(parents=True)
    (sst2 / "train.tsv").write_text("sentence\tlabel\na fine film\t1\n")
    status, err = check(capsys, tmp_path, tmp_path / "data")
    assert (status, err) == (2, f"config error: data.local_dir: {sst2 / 'dev.tsv'}: file not found (task sst2, "
                                "split validation)")
    (sst2 / "dev.tsv").write_text("sentence\tscore\na fine film\t1\n")
    status, err = check(capsys, tmp_path, tmp_path / "data")
    assert (status, err) == (2, f"config error: data.local_dir: {sst2 / 'dev.tsv'}: missing column 'label' "
                                "(columns: sentence, score)")


@pytest.mark.parametrize("overrides, message", [
    (["data.task=webnlg"], "config error: model.name_or_path: tiny-bert is an encoder (bert); task webnlg needs a "
                           "text-to-text model such as T5"),
    (["model.name_or_path=/nonexistent/model"], "config error: model.name_or_path: cannot load '/nonexistent/model'"),
])
def test_a_model_that_cannot_serve_the_task(capsys, tmp_path, data_dir, overrides, message):
    status, err = check(capsys, tmp_path, data_dir, *overrides)
    assert status == 2 and err.startswith(message) and "\n" not in err


def test_inputs_longer_than_the_encoder_reads(capsys, tmp_path, data_dir):
    encoder = tmp_path / "short_encoder"
    shutil.copytree(tiny_checkpoint("tiny-bert"), encoder)
    AutoTokenizer.from_pretrained(encoder, model_max_length=32).save_pretrained(encoder)
    status, err = check(capsys, tmp_path, data_dir, f"model.name_or_path={encoder}")  # max_seq_length 64
    assert (status, err) == (2, f"config error: data.max_seq_length: {encoder} reads at most 32 tokens, got 64")


def test_a_run_dir_holding_another_runs_checkpoint(capsys, tmp_path, data_dir):
    checkpoints = tmp_path / "run" / "checkpoints"
    (checkpoints / "step00000008").mkdir(parents=True)
    signature = {"model.name_or_path": "tiny-bert", "data.task": "sst2", "zero.stage": 0, "pruning.method": "magnitude"}
    (checkpoints / "step00000008" / "manifest.json").write_text(json.dumps(
        {"step": 8, "world_size": 1, "signature": signature, "files": {}}))
    (checkpoints / "latest").write_text("step00000008")
    status, err = check(capsys, tmp_path, data_dir, "pruning.method=movement")
    assert status == 2
    assert err == (f"config error: job.run_dir: {checkpoints / 'step00000008'} is a checkpoint of another run: "
                   f"pruning.method is 'magnitude' there, 'movement' here. Use a new job.run_dir, or delete "
                   f"{checkpoints} to start over in this one")
    status, err = check(capsys, tmp_path, data_dir, "pruning.method=magnitude", "training.max_steps=4")
    assert status == 2 and err.startswith(f"config error: training.max_steps: {checkpoints / 'step00000008'} is at "
                                          "step 8, past training.max_steps=4")
    status, err = check(capsys, tmp_path, data_dir, "pruning.method=magnitude", "checkpoint.resume=false")
    assert status == 2 and err.startswith(f"config error: checkpoint.resume: false, but {checkpoints} holds "
                                          "checkpoints up to step 8")
    assert check(capsys, tmp_path, data_dir, "pruning.method=magnitude", "training.max_steps=12") == (0, "")


def test_a_bad_row_found_while_loading_is_one_line_naming_file_and_row(tmp_path):
    sst2 = tmp_path / "data" / "glue" / "SST-2"
    sst2.mkdir(parents=True)
    rows = "".join(f"sentence {i}\t{i % 2}\n" for i in range(6))
    (sst2 / "train.tsv").write_text("sentence\tlabel\n" + rows + "a bad row\tpositive-ish\n")
    (sst2 / "dev.tsv").write_text("sentence\tlabel\n" + rows)
    done = subprocess.run([sys.executable, "-m", "launch.train", "--config", CONFIG, f"job.run_dir={tmp_path / 'run'}",
                           f"data.local_dir={tmp_path / 'data'}", "metrics.progress_bar=false"],
                          cwd=REPO, env=os.environ.copy(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert (f"data error: {sst2 / 'train.tsv'}: row 7: unknown label 'positive-ish' for task sst2 (expected one of "
            "negative, positive or 0..1)") in done.stderr.splitlines()
