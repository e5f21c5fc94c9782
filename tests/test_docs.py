"""The docs check: every command in the fenced code blocks of README.md and docs/*.md is checked for real,
and every relative link points to an existing file (and heading).

A ``bash`` block's commands are checked by what they run: ``--help`` runs; a training command
(``sparse-dist train``, ``launch/train.py`` under ``python -m``, ``deepspeed`` or ``torchrun``, a SLURM job
script's overrides) is parsed by the launcher's own parser and the trainer's, and its config is built with
its overrides on the launcher's number of ranks; the slow test runs the trainer's ``--check`` on each.
``sparse-dist export``/``report`` are parsed by their parsers, ``python benchmarks/x.py`` by the
benchmark's own argparse, ``tensorboard`` by TensorBoard's; ``make`` targets must exist in the Makefile.
A command no check knows fails, so a new one cannot go unchecked. ``python`` blocks must compile, output
sits in ``text`` blocks, and a block that cannot be checked as written says why in a
``<!-- docs-check: skip (reason) -->`` comment on the line before it.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import re
import runpy
import shlex
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK_LANGUAGES = ("bash", "python", "text", "json")
SKIP_MARK = re.compile(r"<!--\s*docs-check:\s*skip\s*\((.+)\)\s*-->")
PLACEHOLDER = re.compile(r"<[^<>\n]+>")  # <job id>, <run dir>: a value the reader fills in

# SLURM's clients have no parser to borrow: the options the docs may use, as sbatch(1) and scancel(1) spell them.
SBATCH_OPTIONS = {"nodes", "gpus-per-node", "cpus-per-task", "mem", "time", "ntasks-per-node", "job-name",
                  "partition", "account", "signal", "output", "requeue"}
SCANCEL_FLAGS = {"--batch"}


@dataclass
class Block:
    """A fenced code block: its file, the line of its opening fence, language, text and skip reason."""

    path: Path
    line: int
    language: str
    text: str
    skip_reason: str | None = None


@dataclass
class Command:
    """One shell command of a block: ``VAR=value`` assignments before it, then its words."""

    where: str
    env: dict[str, str]
    argv: list[str]


@dataclass
class TrainRun:
    """A documented training command reduced to what ``--check`` needs (the slow test runs it)."""

    where: str
    config: str
    overrides: list[str]
    world_size: int


@dataclass
class Checked:
    """What the checks saw: training runs to ``--check`` later."""

    train_runs: list[TrainRun] = field(default_factory=list)
    commands: int = 0
    problems: list[str] = field(default_factory=list)


class DocsCheckError(AssertionError):
    """A documented command, block or link that does not hold; the message names the file and line."""


def fenced_blocks(path: Path) -> list[Block]:
    """Every fenced block of ``path`` (``` fences; a block needs a language from BLOCK_LANGUAGES)."""
    blocks, lines = [], path.read_text().splitlines()
    i = 0
    while i < len(lines):
        opening = lines[i].strip()
        if opening.startswith("```"):
            language = opening[3:].strip()
            start, body = i + 1, []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            previous = lines[start - 2] if start >= 2 else ""
            skip = SKIP_MARK.search(previous)
            blocks.append(Block(path, start, language, "\n".join(body), skip.group(1) if skip else None))
        i += 1
    return blocks




def shell_commands(block: Block) -> list[Command]:
    """The commands of a bash block: continuation lines joined, comments dropped, ``<placeholders>`` kept
    as one word, leading ``VAR=value`` assignments taken as the command's environment."""
    commands, pending, first = [], "", 0
    for offset, line in enumerate(block.text.splitlines()):
        if not pending:
            first = offset
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text, pending = pending + line, ""
        text = PLACEHOLDER.sub(lambda m: "PLACEHOLDER", text)
        words = shlex.split(text, comments=True)
        if not words:
            continue
        env = {}
        while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
            name, value = words.pop(0).split("=", 1)
            env[name] = value
        where = f"{block.path.relative_to(REPO)}:{block.line + first + 1}"
        commands.append(Command(where, env, words))
    return commands


def fail(command: Command, message: str) -> None:
    raise DocsCheckError(f"{command.where}: {shlex.join(command.argv)}: {message}")


@contextlib.contextmanager
def captured_exit(command: Command, allowed: tuple[int, ...] = (0,)):
    """Run a parser or a main: SystemExit with a code in ``allowed`` passes; another fails with its stderr."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            yield
    except SystemExit as exit_:
        if (exit_.code or 0) not in allowed:
            fail(command, f"exit status {exit_.code}: {err.getvalue().strip().splitlines()[-1:]}")


def existing_file(command: Command, relative: str, kind: str) -> Path:
    path = REPO / relative
    if not path.is_file():
        fail(command, f"{kind} {relative} does not exist")
    return path


# --- training, export, report: sparse_dist's own parsers ---------------------------------------------------

def check_cli(command: Command, name: str, args: list[str], world_size: int, checked: Checked) -> None:
    """``sparse-dist <name> args`` (also launch/<name>.py): parsed by that subcommand's parser; a training
    command's config is then built, with its overrides, for ``world_size`` ranks."""
    import importlib

    from sparse_dist.cli import SUBCOMMANDS

    if name not in SUBCOMMANDS:
        fail(command, f"sparse-dist has no subcommand {name!r} (it has {', '.join(SUBCOMMANDS)})")
    module = importlib.import_module(SUBCOMMANDS[name][0])
    if "-h" in args or "--help" in args:
        with captured_exit(command):
            module.main(["--help"], prog=f"sparse-dist {name}")
        return
    with captured_exit(command, allowed=()):
        parsed = module.build_parser(f"sparse-dist {name}").parse_args(args)
    if name == "train":
        check_train(command, parsed, world_size, checked)
    if getattr(parsed, "run_dir", None) is not None and not parsed.run_dir.startswith(("runs/", "PLACEHOLDER")):
        fail(command, f"run directory {parsed.run_dir} is not under runs/, where the configs put runs")


def check_train(command: Command, args: argparse.Namespace, world_size: int, checked: Checked) -> None:
    from sparse_dist.config import ConfigError, describe_config, load_config

    if args.help_config:
        assert "training.max_steps" in describe_config()
        return
    if args.config is None:
        fail(command, "no --config")
    existing_file(command, args.config, "config")
    try:
        load_config(REPO / args.config, args.overrides, world_size=world_size)
    except ConfigError as error:
        fail(command, f"config error on {world_size} rank(s): {error}")
    checked.train_runs.append(TrainRun(command.where, args.config, list(args.overrides), world_size))


def check_launch_script(command: Command, script: str, args: list[str], world_size: int, checked: Checked) -> None:
    """A script a launcher starts: launch/train.py, launch/export.py or launch/eval.py (sparse-dist train, export,
    eval)."""
    scripts = {"launch/train.py": "train", "launch/export.py": "export", "launch/eval.py": "eval"}
    if script not in scripts:
        fail(command, f"launchers start {', '.join(scripts)}, not {script}")
    existing_file(command, script, "script")
    check_cli(command, scripts[script], args, world_size, checked)


def check_deepspeed(command: Command, checked: Checked) -> None:
    """The deepspeed launcher's own parser, then the script it starts (one rank per --num_gpus)."""
    from deepspeed.launcher.runner import parse_args

    with captured_exit(command, allowed=()):
        args = parse_args(command.argv[1:])
    if args.num_nodes not in (-1, 1):
        fail(command, "the docs' deepspeed commands run on one machine")
    check_launch_script(command, args.user_script, args.user_args, max(args.num_gpus, 1), checked)


def check_torchrun(command: Command, checked: Checked) -> None:
    """torchrun's own parser, then the script it starts (nnodes x nproc_per_node ranks)."""
    from torch.distributed.run import get_args_parser

    with captured_exit(command, allowed=()):
        args = get_args_parser().parse_args(command.argv[1:])
    nodes = int(str(args.nnodes).split(":")[-1])
    world_size = nodes * int(args.nproc_per_node)
    if args.module:
        if args.training_script != "sparse_dist.cli" or not args.training_script_args:
            fail(command, f"torchrun -m starts sparse_dist.cli <command>, not {args.training_script}")
        name, *rest = args.training_script_args
        return check_cli(command, name, rest, world_size, checked)
    check_launch_script(command, args.training_script, args.training_script_args, world_size, checked)


# --- python: modules, scripts, benchmarks, pytest ----------------------------------------------------------

class _Parsed(Exception):
    def __init__(self, namespace: argparse.Namespace):
        self.namespace = namespace


@functools.cache
def benchmark_module(path: Path) -> dict:
    """The benchmark's globals, its module code run once (not as __main__), with benchmarks/ importable."""
    with mock.patch.object(sys, "path", [str(path.parent), *sys.path]):
        return runpy.run_path(str(path), run_name="docs_check")


def check_benchmark(command: Command, script: str, args: list[str]) -> argparse.Namespace:
    """Parse ``args`` with the benchmark's own argparse: its module is loaded (not run as __main__) and its
    ``main()`` called until its parser returns."""
    path = existing_file(command, script, "benchmark")
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, argv=None, namespace=None):
        raise _Parsed(original(self, argv, namespace))

    module = benchmark_module(path)
    with mock.patch.object(sys, "argv", [script, *args]):
        if "main" not in module:
            fail(command, f"{script} has no main() to parse its arguments")
        with mock.patch.object(argparse.ArgumentParser, "parse_args", parse_then_stop):
            try:
                with captured_exit(command, allowed=(0,) if "--help" in args or "-h" in args else ()):
                    module["main"]()
            except _Parsed as parsed:
                return parsed.namespace
    if "--help" not in args:
        fail(command, f"{script}'s main() returned without parsing its arguments")
    return argparse.Namespace()


def pyproject_strings() -> list[str]:
    """Every double-quoted string of pyproject.toml (requirements, markers; tomllib needs Python 3.11)."""
    return re.findall(r'"([^"\n]*)"', (REPO / "pyproject.toml").read_text())


def declared_marks() -> set[str]:
    return {found.group(1) for string in pyproject_strings() if (found := re.fullmatch(r"(\w+): .*", string))}


def check_pytest(command: Command, args: list[str]) -> None:
    """pytest's arguments: test paths exist, ``-m`` uses declared marks only, options from a known few."""
    known = {"-q", "-x", "-ra", "--collect-only", "--no-loadscope-reorder"}
    i = 0
    while i < len(args):
        arg = args[i]
        value = args[i + 1] if i + 1 < len(args) else ""
        if arg == "-n" and not re.fullmatch(r"\d+|auto|logical", value):
            fail(command, f"pytest -n takes a number of workers, got {value!r}")
        if arg == "--dist" and value not in {"load", "loadscope", "loadfile", "loadgroup", "worksteal", "no"}:
            fail(command, f"pytest --dist {value!r} is not one of pytest-xdist's modes")
        if arg in ("-n", "--dist"):
            i += 2
            continue
        if arg in ("-m", "-k"):
            if arg == "-m":
                words = set(re.findall(r"[A-Za-z_]\w*", args[i + 1])) - {"and", "or", "not"}
                if not words <= declared_marks():
                    fail(command, f"marks {sorted(words - declared_marks())} are not declared in pyproject.toml")
            i += 2
            continue
        if arg.startswith("-"):
            if arg not in known and not re.fullmatch(r"--durations=\d+", arg):
                fail(command, f"pytest option {arg} is not one the docs check knows")
        else:
            existing_file(command, arg.split("::")[0], "test file")
        i += 1


def check_python(command: Command, checked: Checked) -> None:
    argv = command.argv
    if argv[1:2] == ["-m"]:
        module, args = argv[2], argv[3:]
        if module == "launch.train":
            return check_cli(command, "train", args, 1, checked)
        if module == "launch.export":
            return check_cli(command, "export", args, 1, checked)
        if module == "pytest":
            return check_pytest(command, args)
        if module == "sparse_dist.cli":
            return check_sparse_dist(Command(command.where, command.env, ["sparse-dist", *args]), checked)
        fail(command, f"the docs check does not know the module {module}")
    script, args = argv[1], argv[2:]
    if script.startswith("benchmarks/") and script.endswith(".py"):
        check_benchmark(command, script, args)
        return
    if script.startswith("launch/"):
        return check_launch_script(command, script, args, 1, checked)
    fail(command, f"the docs check does not know the script {script}")


def check_sparse_dist(command: Command, checked: Checked) -> None:
    """``sparse-dist ...``: the console script pyproject.toml installs, then the subcommand's parser."""
    if "sparse_dist.cli:run" not in pyproject_strings():
        fail(command, "pyproject.toml installs no sparse-dist = sparse_dist.cli:run")
    args = command.argv[1:]
    if not args or args[0] in ("-h", "--help"):
        from sparse_dist.cli import main

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            status = main(["--help"])
        if status != 0 or "commands:" not in out.getvalue():
            fail(command, f"sparse-dist --help exited {status}")
        return
    check_cli(command, args[0], args[1:], 1, checked)


# --- make, SLURM, TensorBoard, pip ---------------------------------------------------------------------------

def make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w.-]*):(?!=)", (REPO / "Makefile").read_text(), re.MULTILINE))


def check_make(command: Command, checked: Checked) -> None:
    targets = [arg for arg in command.argv[1:] if not arg.startswith("-") and "=" not in arg]
    if not targets:
        fail(command, "no target (the default target is not documented)")
    for target in targets:
        if target not in make_targets():
            fail(command, f"the Makefile has no target {target!r}")


def script_default(text: str, name: str) -> str | None:
    found = re.search(rf"^{name}=\$\{{{name}:-([^}}]*)\}}", text, re.MULTILINE)
    return found.group(1) if found else None


def check_sbatch(command: Command, checked: Checked) -> None:
    """``[VAR=value ...] sbatch [--option=value ...] slurm/x.sh [section.key=value ...]``: the options are
    sbatch's, the knobs are the script's, and the config the script would check is built with the overrides
    on the job's number of ranks (nodes x GPUS_PER_NODE)."""
    args = command.argv[1:]
    options = {}
    while args and args[0].startswith("--"):
        name, _, value = args.pop(0)[2:].partition("=")
        if name not in SBATCH_OPTIONS:
            fail(command, f"sbatch option --{name} is not one the docs check knows")
        options[name] = value
    if not args:
        fail(command, "no job script")
    script = existing_file(command, args[0], "job script")
    text = script.read_text() + (REPO / "slurm" / "common.sh").read_text()
    for name in command.env:
        if not re.search(rf"\$\{{{name}[:}}-]", text):
            fail(command, f"{args[0]} has no knob {name}")
    config = command.env.get("CONFIG") or script_default(text, "CONFIG")
    run_dir = command.env.get("RUN_DIR") or script_default(text, "RUN_DIR")
    gpus_per_node = int(command.env.get("GPUS_PER_NODE") or script_default(text, "GPUS_PER_NODE"))
    nodes = int(options.get("nodes") or re.search(r"#SBATCH --nodes=(\d+)", text).group(1))
    train = argparse.Namespace(help_config=False, config=config, overrides=[f"job.run_dir={run_dir}", *args[1:]])
    check_train(command, train, nodes * gpus_per_node, checked)


def check_scancel(command: Command, checked: Checked) -> None:
    args = command.argv[1:]
    job_ids = [arg for arg in args if not arg.startswith("-")]
    if len(job_ids) != 1 or not (job_ids[0].isdigit() or job_ids[0] == "PLACEHOLDER"):
        fail(command, "scancel takes one job id")
    for arg in args:
        if arg.startswith("--signal="):
            if f"SIG{arg.split('=', 1)[1]}" not in signal.Signals.__members__:
                fail(command, f"{arg}: no such signal")
        elif arg.startswith("-") and arg not in SCANCEL_FLAGS:
            fail(command, f"scancel option {arg} is not one the docs check knows")


def check_tensorboard(command: Command, checked: Checked) -> None:
    from tensorboard import program

    with captured_exit(command, allowed=()):
        program.TensorBoard().configure(argv=["tensorboard", *command.argv[1:]])


def check_pip(command: Command, checked: Checked) -> None:
    """``pip install <requirement>``: the requirement is spelled as in pyproject.toml."""
    known = set(pyproject_strings())
    if command.argv[1:2] != ["install"]:
        fail(command, "only pip install is documented")
    for requirement in command.argv[2:]:
        if requirement not in known and requirement not in ("-e", "."):
            fail(command, f"{requirement} is not a requirement of pyproject.toml")


CHECKS = {
    "make": check_make,
    "sparse-dist": check_sparse_dist,
    "python": check_python,
    "deepspeed": check_deepspeed,
    "torchrun": check_torchrun,
    "sbatch": check_sbatch,
    "scancel": check_scancel,
    "tensorboard": check_tensorboard,
    "pip": check_pip,
}
"""Program -> its check. A program not here fails the docs check."""


def check_command(command: Command, checked: Checked) -> None:
    program = command.argv[0]
    if program not in CHECKS:
        fail(command, f"no check knows the program {program!r}: add one to CHECKS in tests/test_docs.py")
    if any(not name.startswith("MALLOC_") for name in command.env) and program != "sbatch":
        # glibc's allocator settings (MALLOC_MMAP_THRESHOLD_, ...) apply to any process
        fail(command, "environment variables are documented for the job scripts (and glibc's MALLOC_*) only")
    CHECKS[program](command, checked)


def check_blocks(paths: list[Path]) -> Checked:
    """Check every fenced block of ``paths``; each problem is one line in ``Checked.problems``."""
    checked = Checked()
    for block in [block for path in paths for block in fenced_blocks(path)]:
        where = f"{block.path.relative_to(REPO)}:{block.line}"
        if block.language not in BLOCK_LANGUAGES:
            checked.problems.append(f"{where}: a fenced block must say its language, one of "
                                    f"{', '.join(BLOCK_LANGUAGES)}; got {block.language!r}")
        elif block.skip_reason is not None:
            continue
        elif block.language == "python":
            try:
                compile(block.text, where, "exec")
            except SyntaxError as error:
                checked.problems.append(f"{where}: python block does not compile: {error}")
        elif block.language == "json":
            try:
                json.loads(block.text)
            except json.JSONDecodeError as error:
                checked.problems.append(f"{where}: json block does not parse: {error}")
        elif block.language == "bash":
            for command in shell_commands(block):
                checked.commands += 1
                try:
                    check_command(command, checked)
                except DocsCheckError as error:
                    checked.problems.append(str(error))
    return checked


# --- links ------------------------------------------------------------------------------------------------

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of ``path``: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
    anchors = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.MULTILINE):
        anchors.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return anchors


def broken_links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
    text = re.sub(r"`[^`\n]*`", "", text)
    problems = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        if not resolved.exists():
            problems.append(f"{path.relative_to(REPO)}: {target}: {file} does not exist")
        elif anchor and resolved.suffix == ".md" and anchor not in heading_anchors(resolved):
            problems.append(f"{path.relative_to(REPO)}: {target}: {resolved.name} has no heading #{anchor}")
        elif REPO not in resolved.parents and resolved != REPO:
            problems.append(f"{path.relative_to(REPO)}: {target}: outside the repository")
    return problems


# --- tests ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checked(request) -> Checked:
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)
        patch.delenv("WORLD_SIZE", raising=False)
        return check_blocks(DOC_FILES)


def test_every_documented_command_passes_its_check(checked):
    assert checked.problems == []
    print(f"{checked.commands} commands checked, {len(checked.train_runs)} of them training commands")


def test_relative_links_point_to_existing_files_and_headings():
    problems = [problem for path in DOC_FILES for problem in broken_links(path)]
    assert problems == []


def test_an_unknown_program_fails_the_check():
    block = Block(REPO / "docs" / "x.md", 3, "bash", "frobnicate --all   # new tool\n")
    with pytest.raises(DocsCheckError, match=r"docs/x.md:4: frobnicate --all: no check knows the program 'frobnicate'"):
        check_command(shell_commands(block)[0], Checked())


def test_a_block_without_language_or_with_a_wrong_command_fails_the_check(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    (tmp_path / "Makefile").write_text("demo: setup\n\techo demo\n")
    doc = tmp_path / "page.md"
    doc.write_text("text\n\n```\nmake demo\n```\n\n```bash\nmake demo   # runs\nmake dmeo\n```\n\n"
                   "<!-- docs-check: skip (needs the task this page adds) -->\n```bash\nmake nothing\n```\n")
    checked = check_blocks([doc])
    assert checked.problems == [
        "page.md:3: a fenced block must say its language, one of bash, python, text, json; got ''",
        "page.md:9: make dmeo: the Makefile has no target 'dmeo'"]
    assert checked.commands == 2


@pytest.mark.parametrize(("line", "message"), [
    ("make demoo", "the Makefile has no target 'demoo'"),
    ("python -m launch.train --config configs/nope.yaml", "config configs/nope.yaml does not exist"),
    ("python -m launch.train --config configs/tiny_bert_sst2.yaml trainig.max_steps=3",
     "config error on 1 rank\\(s\\): trainig: unknown key in the top level; did you mean 'training'\\?"),
    ("deepspeed --num_gpus 2 launch/train.py --config configs/minilm_sst2.yaml training.global_batch_size=30",
     "config error on 2 rank\\(s\\): training.global_batch_size: must be a multiple of micro_batch_size"),
    ("sparse-dist export --run-dir runs/x --format sparse", "exit status 2"),
    ("sparse-dist evaluate --model x", "sparse-dist has no subcommand 'evaluate'"),
    ("python benchmarks/select_benchmark.py --count 1e6", "exit status 2"),
    ("sbatch --nodes=2 slurm/pins_t5_large.sh training.max_step=3", "training.max_step: unknown key"),
    ("tensorboard --logdirr runs/", "exit status 2"),
    ("pip install compressed-tensors", "not a requirement of pyproject.toml"),
    ("FOO=1 sbatch slurm/pins_t5_large.sh", "slurm/pins_t5_large.sh has no knob FOO"),
    ("sbatch --qos=high slurm/smp_bert_base.sh", "sbatch option --qos is not one the docs check knows"),
    ("scancel --signal=USR3 --batch 812", "--signal=USR3: no such signal"),
    ("python -m pytest -q -m 'not fast'", "marks \\['fast'\\] are not declared in pyproject.toml"),
    ("python -m pytest tests/test_nothing.py", "test file tests/test_nothing.py does not exist"),
    ("python -m pytest -n two", "pytest -n takes a number of workers, got 'two'"),
    ("python -m pytest -n 2 --dist bymodule", "pytest --dist 'bymodule' is not one of pytest-xdist's modes"),
    ("python -m pytest -q -n", "pytest -n takes a number of workers, got ''"),
    ("torchrun --nproc_per_node 3 launch/train.py --config configs/minilm_sst2.yaml", "config error on 3 rank"),
    ("deepspeed --num_gpus 2 launch/evaluate.py",
     "launchers start launch/train.py, launch/export.py, launch/eval.py, not launch/evaluate.py"),
    ("python -m launch.train", "no --config"),
    ("CONFIG=configs/minilm_sst2.yaml python -m launch.train --check", "for the job scripts"),
])
def test_a_wrong_command_fails_the_check(line, message, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    command = shell_commands(Block(REPO / "README.md", 1, "bash", line))[0]
    with pytest.raises(DocsCheckError, match=message):
        check_command(command, Checked())


def test_a_broken_link_is_found(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    (tmp_path / "a.md").write_text("# A page\n\n[b](b.md) [here](#a-page) [there](#nowhere) `[x](y.md)`\n")
    assert broken_links(tmp_path / "a.md") == ["a.md: b.md: b.md does not exist",
                                               "a.md: #nowhere: a.md has no heading #nowhere"]


@pytest.mark.slow
def test_every_documented_training_command_passes_check(checked, tmp_path, monkeypatch):
    """The trainer's own ``--check`` (config, machine, model, data, run directory) on every documented
    training command, in a fresh run directory each, with the world size of its launcher. A model that
    only the hub has is the one failure accepted, and only while the hub cannot be reached."""
    from sparse_dist.cli.train import main

    monkeypatch.chdir(REPO)
    failures, offline = [], []
    seen = set()
    for i, run in enumerate(checked.train_runs):
        key = (run.config, tuple(run.overrides), run.world_size)
        if key in seen:
            continue
        seen.add(key)
        monkeypatch.setenv("WORLD_SIZE", str(run.world_size))
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            status = main(["--check", "--config", run.config, *run.overrides, f"job.run_dir={tmp_path / str(i)}"])
        lines = err.getvalue().strip().splitlines()
        if status == 0:
            continue
        if lines and re.match(r"config error: model.name_or_path: cannot load .*couldn't connect to "
                              r"'https://huggingface.co'", lines[-1]):
            offline.append(run.where)
        else:
            failures.append(f"{run.where}: exit {status}: {lines[-1:] if lines else ''}")
    assert failures == []
    if offline:
        print(f"not checked past the model (hub unreachable): {', '.join(offline)}")


def test_readme_results_are_the_result_files_numbers():
    """The README's results table, row by row, rebuilt from benchmarks/results/*.json as the write-ups
    round them: a re-run benchmark cannot leave the headline figures stale."""
    results = REPO / "benchmarks" / "results"
    quality = {(r["method"], r["remaining"]): r["best_at_target"]
               for r in json.loads((results / "quality_benchmark.json").read_text())["results"]
               if r.get("task", "sst2") == "sst2"}
    select = {r["total_scores"]: r for r in json.loads((results / "select_benchmark.json").read_text())["results"]}
    teacher = {r["design"]: r for r in json.loads((results / "teacher_benchmark.json").read_text())["results"]
               if r["world_size"] == 2}
    export = {r["remaining"]: r for r in json.loads((results / "export_size.json").read_text())["rows"]}
    mib = 2 ** 20
    ours, naive = select[10 ** 8]["sparse_dist"], select[10 ** 8]["naive"]
    expected_cells = [
        f"| {quality[('smp_s', 0.5)]:.4f} | dense fine-tuning {quality[('dense', 1.0)]:.4f} |",
        " / ".join(f"{quality[(method, 0.1)]:.4f}" for method in ("pins", "platon", "smp_s", "magnitude"))
        + f" | dense {quality[('dense', 1.0)]:.4f} |",
        f"| {ours['time_s'] * 1000:.1f} ms, {ours['bytes_sent'] / mib:.2f} MiB sent, "
        f"{ours['peak_extra_bytes'] / mib:.1f} MiB extra per rank | all-gather + kthvalue: "
        f"{naive['time_s'] * 1000:.1f} ms, {naive['bytes_sent'] / mib:.2f} MiB, "
        f"{naive['peak_extra_bytes'] / mib:.1f} MiB |",
        f"| {teacher['block']['teacher_device_bytes'] / mib:.0f} (peak "
        f"{teacher['block']['teacher_device_peak_bytes'] / mib:.1f} MiB, one block, during its forward) | "
        f"the paper's design: {teacher['reference']['teacher_device_bytes'] / mib:.1f} MiB |",
        f"| {teacher['block']['teacher_collectives_per_step']} (one per block, prefetched) | "
        f"DeepSpeed's per-module fetching: {teacher['module']['teacher_collectives_per_step']} |",
        f"| {export[0.1]['compressed_bytes'] / mib:.1f} MiB / {export[0.03]['compressed_bytes'] / mib:.1f} MiB | "
        f"dense export: {export[0.1]['dense_bytes'] / mib:.1f} MiB |",
    ]
    table = [line for line in (REPO / "README.md").read_text().splitlines() if line.startswith("| ")]
    missing = [cell for cell in expected_cells if not any(cell in row for row in table)]
    assert missing == []
    assert all(select[n]["exact_count"] for n in select)
    assert all(select[n]["exact_agreement"] for n in select if "naive" in select[n])
    assert all(row["decompresses_bit_for_bit"] for row in export.values())
