"""SMP-S on a regression task with an untrained label-word head: dev Pearson without and with the label-word
calibration (``model.calibrate_label_words``).

    python benchmarks/smp_regression.py                        # MRPC as 0/5 scores, 10% remaining, off and on
    python benchmarks/smp_regression.py --calibrate on --steps 600

There is no STS-B here, so the regression target is built from MRPC (``../shared/data/glue/MRPC``): every
sentence pair scored 5 x its paraphrase label (0 or 5), written in the GLUE STS-B layout into
``<runs-dir>/data/glue/STS-B`` and read as ``data.task=stsb`` (the label word is "Yes", the loss MSE, the
metric Pearson). all-MiniLM-L6-v2 ships no masked-LM head, so the frozen head's transform is the one
transformers initialises: the case the calibration is for. Each run is the real trainer started by the
``deepspeed`` launcher (2 ranks, ZeRO-2) from ``configs/smp_minilm_sst2.yaml`` with the overrides below,
SMP-S to 10% remaining in 300 steps of batch 32 (the settings of ``benchmarks/quality_benchmark.py``), in
``<runs-dir>/<calibrate>``; a run whose ``COMPLETED`` marker exists is not run again. Writes
``benchmarks/results/smp_regression.json`` with the exact command of every run.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from provenance import provenance

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def write_mrpc_as_stsb(mrpc_dir: Path, out_dir: Path) -> dict[str, int]:
    """MRPC's train and dev pairs as STS-B files (columns of the GLUE STS-B TSVs), score = 5 x label."""
    out_dir.mkdir(parents=True, exist_ok=True)
    header = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2",
              "score"]
    counts = {}
    for split in ("train", "dev"):
        with (mrpc_dir / f"{split}.tsv").open(encoding="utf-8-sig", newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
        lines = ["\t".join(header)]
        for i, row in enumerate(rows):
            lines.append("\t".join([str(i), "mrpc", split, "2005", str(i), row["#1 ID"], row["#2 ID"],
                                    row["#1 String"], row["#2 String"], f"{5.0 * int(row['Quality']):.3f}"]))
        (out_dir / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        counts[split] = len(rows)
    return counts


def training_command(calibrate: str, args, data_dir: Path, run_dir: Path) -> list[str]:
    eval_every = max(1, args.steps // 6)
    return [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", str(args.nproc),
            "--master_port", str(args.port), "launch/train.py", "--config", "configs/smp_minilm_sst2.yaml",
            f"job.run_dir={run_dir}", f"job.name=smp-s-regression-calibrate-{calibrate}", f"job.seed={args.seed}",
            "data.task=stsb", f"data.local_dir={data_dir}", f"data.max_seq_length={args.max_seq_length}",
            "data.max_train_examples=null", f"training.max_steps={args.steps}",
            f"pruning.target_remaining={args.remaining}", f"pruning.final_warmup_steps={args.steps // 4}",
            f"model.calibrate_label_words={'true' if calibrate == 'on' else 'false'}",
            f"eval.eval_every_steps={eval_every}", f"checkpoint.save_every_steps={eval_every}",
            "checkpoint.save_final_model=true", "metrics.progress_bar=false"]


def summarise(calibrate: str, run_dir: Path, remaining: float, command: list[str], wall_s: float | None) -> dict:
    summary = json.loads((run_dir / "COMPLETED").read_text())
    at_target = [e for e in summary["evals"] if abs(e["target_remaining"] - remaining) < 1e-9] or summary["evals"][-1:]
    label_words = run_dir / "final" / "model" / "label_words.json"
    calibration = json.loads(label_words.read_text()).get("calibration_folded_in") if label_words.is_file() else None
    return {"calibrate": calibrate, "command": " ".join(command), "run_dir": str(run_dir),
            "best_pearson_at_target": max(e["pearson"] for e in at_target),
            "final_pearson": summary["final"]["pearson"], "final_spearman": summary["final"]["spearman"],
            "achieved_remaining": summary["sparsity"]["remaining"], "learned_calibration": calibration,
            "warnings": summary.get("warnings", []), "evals": summary["evals"], "wall_s": wall_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibrate", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--remaining", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per run (global batch 32)")
    parser.add_argument("--max-seq-length", type=int, default=128, help="sentence pairs need more than SST-2's 64")
    parser.add_argument("--nproc", type=int, default=2, help="ranks per run (GPUs, or CPU processes)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--port", type=int, default=29617)
    parser.add_argument("--mrpc-dir", default=str(REPO.parent / "shared" / "data" / "glue" / "MRPC"))
    parser.add_argument("--runs-dir", default="runs/smp_regression")
    parser.add_argument("--results-dir", default=str(RESULTS))
    args = parser.parse_args()

    runs_dir = (REPO / args.runs_dir).resolve()
    data_dir = runs_dir / "data"
    counts = write_mrpc_as_stsb(Path(args.mrpc_dir), data_dir / "glue" / "STS-B")
    rows = []
    for calibrate in args.calibrate:
        run_dir = runs_dir / f"calibrate_{calibrate}"
        command = training_command(calibrate, args, data_dir, run_dir)
        wall_s = None
        if not (run_dir / "COMPLETED").exists():
            run_dir.mkdir(parents=True, exist_ok=True)
            log_path = run_dir.parent / f"calibrate_{calibrate}.log"
            start = time.time()
            with log_path.open("a") as log:
                log.write(f"\n$ {' '.join(command)}\n")
                log.flush()
                status = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                        env=os.environ.copy()).returncode
            wall_s = time.time() - start
            if status != 0 or not (run_dir / "COMPLETED").exists():
                print(f"calibrate {calibrate}: failed with status {status}; see {log_path}", flush=True)
                continue
        row = summarise(calibrate, run_dir, args.remaining, command, wall_s)
        rows.append(row)
        print(f"calibrate {calibrate}: dev pearson {row['best_pearson_at_target']:.4f} (best at target), "
              f"{row['final_pearson']:.4f} (final), {row['achieved_remaining']:.3f} remaining", flush=True)
    report = {**provenance(), "model": "sentence-transformers/all-MiniLM-L6-v2",
              "task": "MRPC pairs as STS-B regression, score = 5 x paraphrase label", "examples": counts,
              "method": "smp, per_type (SMP-S)", "remaining": args.remaining, "steps": args.steps, "global_batch": 32,
              "nproc": args.nproc, "zero": 2, "seed": args.seed, "results": rows}
    Path(args.results_dir).mkdir(parents=True, exist_ok=True)
    out = Path(args.results_dir) / "smp_regression.json"
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
