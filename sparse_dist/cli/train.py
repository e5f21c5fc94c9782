"""``sparse-dist train``: train (and prune) a model described by a YAML config; ``section.key=value``
arguments override it.

    sparse-dist train --config configs/tiny_bert_sst2.yaml                           # one process
    sparse-dist train --config configs/minilm_sst2.yaml training.max_steps=100 zero.stage=3
    sparse-dist train --check --config configs/smp_minilm_sst2.yaml                  # validate only
    sparse-dist train --help-config                                                  # every key, documented
    sparse-dist train --completed --config configs/minilm_sst2.yaml                  # 0 if this run is complete
    deepspeed --num_gpus 2 launch/train.py --config configs/minilm_sst2.yaml         # 2 ranks (CPU: gloo)
    torchrun --nproc_per_node 2 launch/train.py --config configs/minilm_sst2.yaml    # 2 ranks

The config, and what it asks of this machine, its files and the run directory, is checked before any
process group starts (``--check`` runs just that): a problem is one line naming the key, exit status 2;
so is a data error found while loading (file and row), and a build lock of a C++ op left by a killed
process (``sparse_dist/distributed/ops.py``). SIGTERM or SIGUSR1 make the run save a checkpoint
of its last completed step and exit with status 75; the same command resumes.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import NoReturn

from sparse_dist.config import ConfigError, describe_config, load_config


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML run config")
    parser.add_argument("--help-config", action="store_true", help="list every config key and exit")
    parser.add_argument("--check", action="store_true", help="validate the config (and overrides) and exit")
    parser.add_argument("--completed", action="store_true",
                        help="exit 0 if <run_dir>/COMPLETED records the run this config asks for, else 1")
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # set by launchers
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    return parser


def _check_run(config) -> None:
    from sparse_dist.preflight import check_run  # heavy imports: only once the config itself is valid

    check_run(config)


def _report_completion(config) -> int:
    from sparse_dist.preflight import incomplete_because

    reason = incomplete_because(config)
    print(f"not complete: {reason}" if reason else f"complete: {config.job.run_dir}")
    return 1 if reason else 0


def main(argv: list[str] | None = None, prog: str = "sparse-dist train") -> int:
    args = build_parser(prog).parse_args(argv)
    if args.help_config:
        print(describe_config())
        return 0
    if args.config is None:
        print("error: --config is required", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config, args.overrides)
        if args.completed:
            return _report_completion(config)
        _check_run(config)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
    from sparse_dist.distributed.ops import stale_build_locks

    stale = stale_build_locks()  # else every rank would wait on it forever, silently
    if stale:
        print(f"build error: {stale[0]}", file=sys.stderr)
        return 2
    if args.check:
        print(f"config ok: {args.config} ({config.world_size} rank(s))")
        return 0

    from sparse_dist.distributed.env import RendezvousError, init_distributed, init_logging, shutdown_distributed

    try:
        env = init_distributed()
    except RendezvousError as error:  # never another job's store: refused with one line
        print(f"rendezvous error: {error}", file=sys.stderr)
        return 2
    init_logging(env.rank)
    status = _train(config, env)
    shutdown_distributed(env)
    return status


def _train(config, env) -> int:
    """Run the training on this rank; the exit status (0, 2 for bad data or config, RESUMABLE_EXIT)."""
    from sparse_dist.data.load import DataError
    from sparse_dist.preemption import RESUMABLE_EXIT
    from sparse_dist.trainer import Trainer

    try:
        result = Trainer(config, env).train()
    except (ConfigError, DataError) as error:  # found after the ranks started (data rows): no traceback
        line = f"{'data' if isinstance(error, DataError) else 'config'} error: {error}"
        if env.is_main:
            print(line, file=sys.stderr)
        else:  # normally the same on every rank; a rank that alone sees it still says so
            logging.getLogger("sparse_dist.cli.train").error(line)
        return 2
    return RESUMABLE_EXIT if result.stopped else 0


def run() -> NoReturn:
    """The ``sparse-dist-train`` console script: :func:`main`, then the process ends with its status
    (:func:`sparse_dist.cli.exit_after`)."""
    from sparse_dist.cli import exit_after

    exit_after(main)
