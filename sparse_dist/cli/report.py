"""``sparse-dist report``: one PNG of a run, and an HTML page embedding it.

    sparse-dist report runs/tiny_pins_bert_rte                 # writes report.png and report.html there
    sparse-dist report runs/smp_minilm_sst2 --out /tmp/report  # elsewhere

Works on a finished run, on one stopped by a signal (checkpoints, no COMPLETED) and on one still
running (it reads what the event files hold so far). A directory that is not a run is refused with one
line, exit status 2.
"""

from __future__ import annotations

import argparse
import sys


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="run directory (holds config.yaml, tensorboard/, checkpoints/)")
    parser.add_argument("--out", help="where to write report.png and report.html (default: the run directory)")
    return parser


def main(argv: list[str] | None = None, prog: str = "sparse-dist report") -> int:
    args = build_parser(prog).parse_args(argv)
    from sparse_dist.report import NotARunError, write_report

    try:
        png, page = write_report(args.run_dir, args.out)
    except NotARunError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"report written: {png} and {page}")
    return 0
