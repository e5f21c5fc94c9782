"""The ``sparse-dist`` command: every subcommand's help shows a real example; config errors are one line, exit 2;
the console scripts point into the library (``launch/`` is not installed)."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from sparse_dist.cli import SUBCOMMANDS
from sparse_dist.cli import main as cli

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_each_subcommand_help_shows_a_real_example(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: sparse-dist {command}")
    examples = [line.strip() for line in out.splitlines() if line.strip().startswith(f"sparse-dist {command} ")]
    assert examples, out
    for example in examples:  # the configs and flags an example names exist
        words = example.split("#")[0].split()
        assert all((REPO / word).is_file() for word in words if word.startswith("configs/")), example
        flags = {word for word in words if word.startswith("--")}
        assert flags <= set(out.split("options:")[1].replace(",", " ").split()), (example, flags)


def test_the_command_without_a_subcommand_lists_them(capsys):
    done = subprocess.run([sys.executable, "-m", "sparse_dist.cli", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0
    assert all(f"  {name}  " in done.stdout for name in SUBCOMMANDS) and "sparse-dist report runs/" in done.stdout
    assert cli([]) == 2 and "usage: sparse-dist" in capsys.readouterr().err
    assert cli(["evaluate"]) == 2
    assert capsys.readouterr().err.strip() == ("error: unknown command 'evaluate' "
                                               "(choose from train, export, eval, report, plan)")


def test_train_check_rejects_a_bad_key_with_one_line_and_exit_2(tmp_path):
    done = subprocess.run([sys.executable, "-m", "sparse_dist.cli", "train", "--check", "--config",
                           "configs/tiny_bert_sst2.yaml", f"job.run_dir={tmp_path / 'run'}", "training.max_stepz=3"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == ["config error: training.max_stepz: unknown key in section 'training'; "
                     "did you mean 'training.max_steps'?"]


def test_console_scripts_live_in_the_library_and_launch_is_not_installed():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    scripts = project["project"]["scripts"]
    assert scripts["sparse-dist"] == "sparse_dist.cli:run"
    for target in scripts.values():
        module, function = target.split(":")
        assert not module.startswith("launch") and callable(getattr(importlib.import_module(module), function))
    assert project["tool"]["setuptools"]["packages"]["find"]["include"] == ["sparse_dist*"]
    from launch.export import main as export_main  # the launcher scripts are thin: the library's commands
    from launch.train import main as train_main
    from sparse_dist.cli import export, train

    assert train_main is train.main and export_main is export.main
