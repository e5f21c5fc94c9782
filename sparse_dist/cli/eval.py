"""``sparse-dist eval``: score an exported model on its task's dev set(s), on one rank or several.

    sparse-dist eval --model runs/tiny_bert_sst2/final/model --task sst2 --data-dir ../shared/data
    sparse-dist eval --model runs/tiny_bert_sst2/final/model --config runs/tiny_bert_sst2/config.yaml
    sparse-dist eval --model runs/tiny_smp_sst2/final/mask --base-model tiny-bert --task sst2 --output m.json
    torchrun --nproc_per_node 2 -m sparse_dist.cli eval --model runs/tiny_ner_conll/final/model --task conll2003
    deepspeed --num_gpus 2 launch/eval.py --model runs/tiny_bert_sst2/final/model --task sst2 eval.micro_batch_size=8

``--model`` is what ``sparse-dist export`` writes: a transformers directory (dense, or compressed with
``--format compressed``; a label-word model with its ``label_words.json``), or an SMP mask artifact,
applied to ``--base-model`` (default: the base model the artifact names). The dev set is read and cut as
the run's ``data`` and ``eval`` settings say: ``--config`` takes them from the run's config.yaml, and
``data.key=value`` / ``eval.key=value`` arguments override them; with the run's own settings the metrics
equal the run's final dev metrics. The evaluation is the one training runs (``sparse_dist.evaluation``):
every rank scores its shard, the predictions are gathered and scored once, so 1 and N ranks agree.
A bad argument (a path that is not a model, a mask whose base model differs, an unknown task, a missing
data directory) is one line naming it, exit status 2.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
import tempfile
from pathlib import Path

import yaml

from sparse_dist.config import ConfigError, load_config
from sparse_dist.tasks import TASKS, get_task

MASK_META = "mask.json"  # sparse_dist.pruning.export.MASK_META, without importing torch
EVAL_SECTIONS = ("data", "eval")
"""The config sections that decide what an evaluation reads and how (the rest describe training)."""


class EvalInputError(ValueError):
    """A bad argument, found before the ranks start; the message names the path or flag."""


def build_parser(prog: str) -> argparse.ArgumentParser:
    """The command's arguments; ``--help`` prints this module's docstring, examples first."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="exported model directory, or SMP mask artifact directory")
    parser.add_argument("--base-model", help="base model of a mask artifact, hub name or directory "
                                             "(default: the one recorded in its mask.json)")
    parser.add_argument("--task", help="task name (data.task); default: the --config's")
    parser.add_argument("--data-dir", help="directory of the task's local files (data.local_dir)")
    parser.add_argument("--config", help="a run's config.yaml: its data and eval sections are used")
    parser.add_argument("--micro-batch-size", type=int, help="dev examples per forward pass per rank "
                                                             "(eval.micro_batch_size)")
    parser.add_argument("--output", help="also write the metrics as JSON to this file")
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # set by launchers
    parser.add_argument("overrides", nargs="*", metavar="data.key=value|eval.key=value")
    return parser


def eval_overrides(args: argparse.Namespace) -> list[str]:
    """``section.key=value`` settings of the data and eval sections: the ``--config`` file's, then the
    flags', then the explicit overrides'. Raises :class:`EvalInputError` naming the bad argument."""
    overrides = []
    if args.config is not None:
        path = Path(args.config)
        if not path.is_file():
            raise EvalInputError(f"--config: {path}: file not found")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise EvalInputError(f"--config: {path}: not valid YAML: {' '.join(str(error).split())}") from None
        if not isinstance(raw, dict):
            raise EvalInputError(f"--config: {path}: the top level must be a mapping of sections")
        for section in EVAL_SECTIONS:  # as JSON, which YAML reads back as the same value
            overrides += [f"{section}.{key}={json.dumps(value)}" for key, value in (raw.get(section) or {}).items()]
    if args.task is not None:
        if args.task not in TASKS:
            close = difflib.get_close_matches(args.task, list(TASKS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(TASKS)})"
            raise EvalInputError(f"--task: unknown task {args.task!r}{hint}")
        overrides.append(f"data.task={args.task}")
    elif args.config is None:
        raise EvalInputError("--task: required (or --config of the run, whose data.task is used)")
    if args.data_dir is not None:
        if not Path(args.data_dir).is_dir():
            raise EvalInputError(f"--data-dir: {args.data_dir}: no such directory")
        overrides.append(f"data.local_dir={json.dumps(args.data_dir)}")
    if args.micro_batch_size is not None:
        overrides.append(f"eval.micro_batch_size={args.micro_batch_size}")
    for item in args.overrides:
        if item.split(".")[0] not in EVAL_SECTIONS:
            raise EvalInputError(f"{item}: only data.* and eval.* settings apply to an evaluation")
    return overrides + list(args.overrides)


def check_paths(args: argparse.Namespace) -> None:
    """What can be refused before any rank starts: the model path, and --base-model without a mask."""
    model = Path(args.model)
    if not model.is_dir():
        raise EvalInputError(f"--model: {model}: no such directory")
    is_mask = (model / MASK_META).is_file()
    if not is_mask and not (model / "config.json").is_file():
        raise EvalInputError(f"--model: {model}: not an exported model (no config.json) "
                             f"nor a mask artifact (no {MASK_META})")
    if args.base_model is not None and not is_mask:
        raise EvalInputError(f"--base-model: applies to a mask artifact only, and {model} is a model")


def build_eval_model(args: argparse.Namespace, config, scratch: Path):
    """The exported model with its task head, built as training builds it
    (:func:`~sparse_dist.models.build.build_model`, no ZeRO partitioning), from a directory that lives only
    as long as ``scratch``; returns it with the export's form (``dense``, ``compressed`` or ``mask``).
    Single process. Raises :class:`EvalInputError` naming the path or flag."""
    from sparse_dist.config import ModelConfig
    from sparse_dist.models.build import build_model
    from sparse_dist.pruning.export import BaseModelMismatch, NotAnExport, unpack_export

    task = get_task(config.data.task)
    try:
        unpacked = unpack_export(args.model, args.base_model, scratch)
    except (NotAnExport, BaseModelMismatch) as error:
        raise EvalInputError(str(error)) from None
    label_words = unpacked.label_word_ids is not None
    if label_words and task.label_words is None:
        raise EvalInputError(f"--model: {args.model} reads label words, and task {task.name} has none")
    model_cfg = ModelConfig(name_or_path=str(unpacked.directory), head="label_words" if label_words else "classifier")
    try:
        built = build_model(model_cfg, task, {"zero_optimization": {"stage": 0}}, config.job.seed, key="--model")
    except ConfigError as error:
        raise EvalInputError(str(error).replace(str(unpacked.directory), str(args.model))) from None
    except (OSError, ValueError, RuntimeError) as error:  # RuntimeError: a head of another shape (another task)
        first = ("its weights have other shapes (trained for another task?)" if isinstance(error, RuntimeError)
                 else next((line for line in str(error).splitlines() if line.strip()), type(error).__name__))
        architectures = json.loads((unpacked.directory / "config.json").read_text()).get("architectures") or ["?"]
        raise EvalInputError(f"--model: {args.model}: a {architectures[0]} that cannot be loaded for task "
                             f"{task.name} ({task.type.name}): {first}") from None
    if built.new_weights:  # a head the export lacks would score with random weights
        raise EvalInputError(f"--model: {args.model} has no weights for {', '.join(built.new_weights[:3])}"
                             f"{', ...' if len(built.new_weights) > 3 else ''}: not a model for task {task.name}")
    if label_words and built.model.word_ids != unpacked.label_word_ids:
        raise EvalInputError(f"--model: {args.model} reads label words {unpacked.label_word_ids}, and task "
                             f"{task.name}'s words are {built.model.word_ids} in its vocabulary")
    return built, unpacked.form


def evaluate(built, config, env) -> dict[str, dict]:
    """Build the dev sets and score ``built.model`` with :class:`~sparse_dist.evaluation.Evaluator`, the
    evaluation training runs: ``{"metrics": {name: value}, "examples": {split: count}}`` (``count``: questions
    for extractive QA), the same on every rank. All ranks call."""
    from sparse_dist.data.task_data import build_task_data
    from sparse_dist.distributed.env import main_process_first
    from sparse_dist.evaluation import Evaluator

    with main_process_first(env):  # rank 0 fills the datasets cache first
        task_data = build_task_data(config.data, get_task(config.data.task), built.tokenizer, built.kind,
                                    dev_only=True)
    evaluator = Evaluator(task_data, config.eval, env, built.tokenizer, zero_stage=0)
    metrics = evaluator.evaluate(built.model.to(env.device))
    return {"examples": {dev.split: len(dev.gold) for dev in task_data.dev}, "metrics": metrics}


def main(argv: list[str] | None = None, prog: str = "sparse-dist eval") -> int:
    args = build_parser(prog).parse_args(argv)
    try:  # every bad argument is refused here, before the ranks meet: each rank reads the same files
        overrides = eval_overrides(args)
        check_paths(args)
        config = load_config(None, overrides, world_size=1)  # world_size: the training batch rules do not apply
        from sparse_dist.data.load import check_data_source

        check_data_source(get_task(config.data.task), config.data.local_dir, dev_only=True)
        from transformers.utils.logging import disable_progress_bar

        disable_progress_bar()  # loading bars on stderr would bury a one-line error; the metrics are the output
        with tempfile.TemporaryDirectory(prefix="sparse_dist_eval_") as scratch:
            built, form = build_eval_model(args, config, Path(scratch))
    except (EvalInputError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    from sparse_dist.distributed.env import RendezvousError, init_distributed, init_logging, shutdown_distributed

    try:
        env = init_distributed()
    except RendezvousError as error:
        print(f"rendezvous error: {error}", file=sys.stderr)
        return 2
    init_logging(env.rank)
    status = _evaluate(args, built, form, config, env)
    shutdown_distributed(env)
    return status


def _evaluate(args: argparse.Namespace, built, form: str, config, env) -> int:
    """Score the built model on this rank (rank 0 prints and writes the result); the exit status (0 or 2)."""
    from sparse_dist.data.load import DataError

    try:
        scored = evaluate(built, config, env)
    except DataError as error:  # a bad row: the same on every rank
        if env.is_main:
            print(f"data error: {error}", file=sys.stderr)
        return 2
    if env.is_main:
        result = {"model": str(args.model), "form": form, "base_model": args.base_model, "task": config.data.task,
                  "world_size": env.world_size, **scored}
        sets = ", ".join(f"{split} {n}" for split, n in result["examples"].items())
        print(f"{args.model} on {result['task']} ({sets} examples, {env.world_size} rank(s)):")
        print("\n".join(f"  {name} {value:.4f}" for name, value in result["metrics"].items()), flush=True)
        if args.output:
            Path(args.output).parent.mkdir(parents=True, exist_ok=True)
            Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
    return 0
