"""Task metric against remaining weights, every method side by side, from real runs of sparse_dist.

    python benchmarks/quality_benchmark.py                          # SST-2, every method, 50% and 10%
    python benchmarks/quality_benchmark.py --tasks sst2 mrpc rte --remaining 0.5 0.1 0.03
    python benchmarks/quality_benchmark.py --steps 3000 --train-examples 0 --nproc 8   # a GPU machine
    python benchmarks/quality_benchmark.py --tasks conll2003 --methods magnitude movement smp_s platon pins \
        --steps 50 --global-batch 16 --lr 3e-4 --max-seq-length 128 --train-examples 2000 --eval-examples 500 --evals 2
    python benchmarks/quality_benchmark.py --tasks squad --methods magnitude movement smp_s platon pins \
        --steps 40 --global-batch 16 --lr 3e-4 --max-seq-length 192 --doc-stride 64 --eval-examples 100 --evals 1

Each run is the real trainer started by the ``deepspeed`` launcher (2 ranks, ZeRO-2), on the real
all-MiniLM-L6-v2 and the task's data from ``../shared/data``, in ``runs/quality/<task>/<run>``, from the
task's config (``configs/minilm_sst2.yaml``, ``minilm_conll.yaml``, ``minilm_squad.yaml``, with its own
pruning and distillation switched off); the method's hyperparameters are below, scaled to ``--steps``.
The budget flags (``--global-batch``, ``--lr``, ``--max-seq-length``, ``--doc-stride``, ``--eval-examples``,
``--evals``) change the config only when given, and every row records the budget it ran with. CoNLL-2003
reports entity F1 (seqeval), SQuAD F1 and EM (official v1.1); on tasks without label words (NER, QA) SMP
trains its new task layer with the scores on the frozen encoder. A run whose ``COMPLETED`` marker exists is
not run again, and an interrupted run resumes from its checkpoint, so re-running the same command
continues a sweep. Reported per run: the best dev metric among the evaluations at the target sparsity
(the final phase of the schedule; for soft movement, whose kept fraction is not fixed, the final
evaluation), the achieved remaining fraction, and the wall time. Writes
``benchmarks/results/quality_benchmark.{json,md,png}``; rows of an earlier report for runs this sweep
does not plan are kept (marked ``carried_over``), so ``--methods movement`` refreshes only those rows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from provenance import code_version, provenance, trainer_unchanged_since

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
METHODS = ("magnitude", "movement", "soft_movement", "smp_l", "smp_s", "platon", "pins")
METRIC = {"sst2": "accuracy", "mrpc": "f1", "rte": "accuracy", "conll2003": "f1", "squad": "f1"}
CONFIG = {"conll2003": "configs/minilm_conll.yaml", "squad": "configs/minilm_squad.yaml"}
"""The task's config where it is not SST-2's (whose GLUE settings serve MRPC and RTE too)."""
RESET = {"conll2003": ["pruning.method=none", "pruning.scope=auto", "pruning.initial_warmup_steps=0"],
         "squad": ["pruning.method=none", "pruning.scope=auto", "pruning.initial_warmup_steps=0",
                   "distill.self_regularization=false"]}
"""What a task's config turns on that a dense run (and every method's own overrides) starts without."""
LABELS = {"magnitude": "magnitude", "movement": "movement", "soft_movement": "soft movement",
          "smp_l": "SMP-L", "smp_s": "SMP-S", "platon": "PLATON", "pins": "PINS"}


def method_overrides(method: str, remaining: float, steps: int, label_words: bool = True) -> list[str]:
    """The papers' settings for ``method`` (METHODS.md), on a budget of ``steps`` optimizer steps.

    Weight-training methods: AdamW at 1e-4 (the dense run's), cubic schedule with 10% initial and 20%
    final warm-up (Movement Pruning's 1 and 2 epochs of 10). SMP: frozen weights and label-word head,
    scores at 2e-2, a linear ramp with the last quarter at the target (a 6-layer model does not survive a
    cubic ramp at this budget), regulariser 400. PLATON/PINS: window 10, beta 0.85/0.95; PINS adds
    self-regularization with the teacher refreshed at each dev improvement. Without ``label_words`` (NER,
    QA) SMP keeps the task's own head, which trains at ``optimizer.lr`` while the encoder stays frozen.
    Soft movement: scores at 4e-2
    and the threshold of :func:`soft_threshold`, regulariser 400. Movement: scores at 1e-2, global top-k
    (given explicitly: the method's default is per matrix) and no regulariser (it has none).
    """
    initial, final = steps // 10, steps // 5
    common = [f"pruning.target_remaining={remaining}", f"pruning.initial_warmup_steps={initial}",
              f"pruning.final_warmup_steps={final}", "pruning.schedule=cubic"]
    if method == "magnitude":
        return [*common, "pruning.method=magnitude", "pruning.scope=global", "pruning.prune_every_steps=10"]
    if method == "movement":
        return [*common, "pruning.method=movement", "pruning.scope=global", "pruning.score_lr=1e-2"]
    if method == "soft_movement":
        return [*common, "pruning.method=soft_movement", "pruning.score_lr=4e-2", "pruning.regularizer_lambda=400",
                f"pruning.soft_threshold={soft_threshold(remaining):.3g}"]
    if method in ("smp_l", "smp_s"):
        head = ["model.head=label_words"] if label_words else []
        return [f"pruning.target_remaining={remaining}", "pruning.method=smp", *head,
                f"pruning.scope={'local' if method == 'smp_l' else 'per_type'}", "pruning.schedule=linear",
                f"pruning.final_warmup_steps={steps // 4}", "pruning.score_lr=2e-2", "pruning.regularizer_lambda=400",
                "optimizer.warmup_steps=0", "optimizer.schedule=linear"]
    if method in ("platon", "pins"):
        extra = ["distill.self_regularization=true"] if method == "pins" else []
        return [*common, f"pruning.method={method}", "pruning.scope=global", "pruning.window_steps=10",
                "pruning.prune_every_steps=10", *extra]
    raise ValueError(f"unknown method {method!r}; choose from dense, {', '.join(METHODS)}")


# Soft movement has no k: it keeps the weights whose score ends above logit(tau). The paper trains scores
# at 1e-2 for ~10 epochs of MNLI; in 300 steps at 1e-2 they move by 0.7 on average and none crosses
# logit(0.1) = -2.2, so nothing is pruned. At 4e-2 and tau 0.1, 300 steps keep 56.8% (SST-2, seed 1); the
# thresholds below are that run's final score quantiles, logit(tau) = the (1 - r) quantile, and targets
# outside the table take the nearest entry. They are a starting point, not a guarantee: a run with a
# higher threshold prunes earlier and ends elsewhere (tau 0.12 kept 51.5%, tau 0.41 kept 2.5%).
SOFT_THRESHOLDS = {0.5: 0.12, 0.3: 0.23, 0.2: 0.31, 0.1: 0.41, 0.05: 0.49}


def soft_threshold(remaining: float) -> float:
    """Soft movement's final tau for a wanted remaining fraction, interpolated in log(remaining)."""
    fractions = sorted(SOFT_THRESHOLDS)
    return float(np.interp(np.log(remaining), np.log(fractions), [SOFT_THRESHOLDS[f] for f in fractions]))


def plan(args) -> list[dict]:
    from sparse_dist.tasks import get_task

    runs = []
    for task in args.tasks:
        label_words = get_task(task).type.label_word_head
        runs.append({"task": task, "method": "dense", "remaining": 1.0, "name": "dense", "overrides": []})
        for remaining in args.remaining:
            for method in args.methods:
                runs.append({"task": task, "method": method, "remaining": remaining,
                             "name": f"{method}_{remaining:g}",
                             "overrides": method_overrides(method, remaining, args.steps, label_words)})
    return runs


def budget(args) -> dict:
    """What a run of this sweep is given: steps, batch, learning rate, sequence length, data subsets, evals."""
    return {"steps": args.steps, "global_batch": args.global_batch or 32, "lr": args.lr,
            "max_seq_length": args.max_seq_length, "doc_stride": args.doc_stride,
            "train_examples": args.train_examples, "eval_examples": args.eval_examples, "evals": args.evals}


def budget_overrides(args) -> list[str]:
    """Config overrides for the budget flags given (none given: the SST-2 sweep's command as before)."""
    out = []
    if args.global_batch:
        out += [f"training.global_batch_size={args.global_batch}",
                f"training.micro_batch_size={args.global_batch // args.nproc}"]
    for key, value in (("optimizer.lr", args.lr), ("data.max_seq_length", args.max_seq_length),
                       ("data.doc_stride", args.doc_stride), ("data.max_eval_examples", args.eval_examples)):
        if value is not None:
            out.append(f"{key}={value}")
    return out


def training_command(run: dict, args, run_dir: Path) -> list[str]:
    eval_every = max(1, args.steps // args.evals)
    config = CONFIG.get(run["task"], "configs/minilm_sst2.yaml")
    command = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", str(args.nproc),
               "--master_port", str(args.port), "launch/train.py", "--config", config,
               f"job.run_dir={run_dir}", f"job.name=quality-{run['task']}-{run['name']}", f"job.seed={args.seed}",
               f"data.task={run['task']}", f"data.max_train_examples={args.train_examples or 'null'}",
               f"training.max_steps={args.steps}", f"optimizer.warmup_steps={args.steps // 10}",
               f"eval.eval_every_steps={eval_every}", f"checkpoint.save_every_steps={eval_every}",
               "checkpoint.save_final_model=false", "metrics.progress_bar=false", *RESET.get(run["task"], []),
               *budget_overrides(args), *run["overrides"]]
    if args.data_dir:
        command.append(f"data.local_dir={args.data_dir}")
    return command


def launch(command: list[str], log_path: Path) -> int:
    with log_path.open("a") as log:
        log.write(f"\n$ {' '.join(command)}\n")
        log.flush()
        return subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy()).returncode


def same_code(entry: dict, command: list[str], log_path: Path) -> bool:
    """Whether a finished run was made by this checkout's trainer with the command this runner would give.

    True when every commit the run was made at (it may have been resumed) had no uncommitted changes and
    the same trainer code as HEAD, and the last command in the run's log equals ``command`` (apart from
    the launcher's own path). A change to plotting or tables does not make earlier runs foreign.
    """
    if not entry.get("code") or any(v["uncommitted_changes"] for v in entry["code"]):
        return False
    if not all(trainer_unchanged_since(v["commit"]) for v in entry["code"]):
        return False
    launched = [line[2:].split(" ", 1)[1] for line in log_path.read_text().splitlines() if line.startswith("$ ")]
    return bool(launched) and launched[-1] == " ".join(command[1:])


def summarise(run: dict, run_dir: Path, entry: dict) -> dict:
    summary = json.loads((run_dir / "COMPLETED").read_text())
    metric = METRIC[run["task"]]
    evals = summary["evals"]
    at_target = [e for e in evals if abs(e["target_remaining"] - run["remaining"]) < 1e-9]
    if run["method"] == "soft_movement" or not at_target:
        at_target = evals[-1:]
    return {**{k: run[k] for k in ("task", "method", "remaining", "name")}, "metric": metric,
            "best_at_target": max(e[metric] for e in at_target), "final": summary["final"][metric],
            "achieved_remaining": summary["sparsity"]["remaining"] if summary.get("sparsity") else 1.0,
            "best_eval": max(at_target, key=lambda e: e[metric]),
            "evals": evals, "wall_s": entry.get("wall_s"), "code": entry.get("code", []), "run_dir": str(run_dir)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["sst2"], choices=sorted(METRIC))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--remaining", nargs="+", type=float, default=[0.5, 0.1])
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per run")
    parser.add_argument("--global-batch", type=int, default=None, help="training.global_batch_size (config: 32)")
    parser.add_argument("--lr", type=float, default=None, help="optimizer.lr of the weights (config: 1e-4)")
    parser.add_argument("--max-seq-length", type=int, default=None, help="data.max_seq_length (config's)")
    parser.add_argument("--doc-stride", type=int, default=None, help="data.doc_stride, QA windows (config's)")
    parser.add_argument("--eval-examples", type=int, default=None, help="data.max_eval_examples (config's)")
    parser.add_argument("--evals", type=int, default=6, help="evaluations per run, evenly spaced")
    parser.add_argument("--train-examples", type=int, default=8000, help="training subset; 0 for all")
    parser.add_argument("--nproc", type=int, default=2, help="ranks per run (GPUs, or CPU processes)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--port", type=int, default=29613)
    parser.add_argument("--data-dir", default=None, help="data.local_dir (default: the config's ../shared/data)")
    parser.add_argument("--runs-dir", default="runs/quality")
    parser.add_argument("--results-dir", default=str(RESULTS))
    args = parser.parse_args()

    results = Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    runs, rows = plan(args), []
    ledger_path = REPO / args.runs_dir / "ledger.json"
    ledger_path.parent.mkdir(parents=True, exist_ok=True)
    ledger = json.loads(ledger_path.read_text()) if ledger_path.exists() else {}
    version = code_version()
    bar = tqdm(runs, desc="sweep", unit="run")
    for run in bar:
        run_dir = (REPO / args.runs_dir / run["task"] / run["name"]).resolve()
        key = f"{run['task']}/{run['name']}"
        command, log_path = training_command(run, args, run_dir), run_dir.parent / f"{run['name']}.log"
        bar.set_postfix_str(key)
        if not (run_dir / "COMPLETED").exists():
            run_dir.mkdir(parents=True, exist_ok=True)
            entry = ledger.setdefault(key, {"wall_s": 0.0, "code": []})
            if version not in entry["code"]:  # a run resumed by different code says so in the results
                entry["code"].append(version)
            start = time.time()
            status = launch(command, log_path)
            entry["wall_s"] += time.time() - start
            ledger_path.write_text(json.dumps(ledger, indent=1))
            if status != 0 or not (run_dir / "COMPLETED").exists():
                tqdm.write(f"{key}: failed with status {status}; see {log_path}")
                continue
        row = summarise(run, run_dir, ledger.get(key, {}))
        row["made_by_this_code"] = same_code(ledger.get(key, {}), command, log_path)
        row["budget"] = budget(args)
        rows.append(row)
        tqdm.write(f"{key}: {row['metric']} {row['best_at_target']:.4f} at {row['achieved_remaining']:.3f} remaining")
    rows = carry_over(results / "quality_benchmark.json", rows)
    all_same = all(row["made_by_this_code"] for row in rows)
    if not all_same:
        tqdm.write("warning: some runs were made by other trainer code or settings; see 'made_by_this_code'")
    report = {**provenance(), "all_runs_by_this_code": all_same,
              "model": "sentence-transformers/all-MiniLM-L6-v2", "nproc": args.nproc, "zero": 2,
              "steps": args.steps, "global_batch": args.global_batch or 32, "train_examples": args.train_examples,
              "seed": args.seed, "budget": budget(args),
              "sweep_wall_s": sum(r["wall_s"] or 0 for r in rows), "results": rows}
    (results / "quality_benchmark.json").write_text(json.dumps(report, indent=1))
    (results / "quality_benchmark.md").write_text(table(rows, args))
    plot(rows, results / "quality_benchmark.png", args)
    print(table(rows, args))
    print(f"wrote {results}/quality_benchmark.json, .md and .png")


def carry_over(path: Path, rows: list[dict]) -> list[dict]:
    """``rows`` plus the rows of an earlier report at ``path`` for runs this sweep did not plan.

    Re-running a few methods then refreshes their rows and keeps the others, each with the code it was
    made by (``code``, ``made_by_this_code``); a carried row says so in ``carried_over``. Rows come out
    in task, method, remaining order.
    """
    planned = {(r["task"], r["name"]) for r in rows}
    earlier = json.loads(path.read_text())["results"] if path.exists() else []
    kept = [{**r, "carried_over": True, "made_by_this_code": False} for r in earlier
            if (r["task"], r["name"]) not in planned]
    order = {m: i for i, m in enumerate(("dense", *METHODS))}
    return sorted([*rows, *kept], key=lambda r: (r["task"], order[r["method"]], -r["remaining"]))


def table(rows: list[dict], args) -> str:
    lines = []
    for task in dict.fromkeys(r["task"] for r in rows):
        task_rows = [r for r in rows if r["task"] == task]
        if not task_rows:
            continue
        dense = next((r for r in task_rows if r["method"] == "dense"), None)
        fractions = sorted({r["remaining"] for r in task_rows if r["method"] != "dense"}, reverse=True)
        methods = [m for m in METHODS if any(r["method"] == m for r in task_rows)]
        lines += [f"### {task} ({METRIC[task]}, dev; dense fine-tuning "
                  f"{dense['best_at_target']:.4f})" if dense else f"### {task}", "",
                  "| method | " + " | ".join(f"{r:g} remaining" for r in fractions) + " |",
                  "|---|" + "---|" * len(fractions)]
        spent = next((r["budget"] for r in task_rows if r.get("budget")), None)
        if spent:
            lines[-2:-2] = [f"Budget per run: {describe_budget(spent)}.", ""]
        for method in methods:
            cells = []
            for remaining in fractions:
                r = next((x for x in task_rows if x["method"] == method and x["remaining"] == remaining), None)
                em = r and r.get("best_eval", {}).get("exact_match")
                cells.append(f"{r['best_at_target']:.4f}{f' / EM {em:.2f}' if em is not None else ''} "
                             f"({r['achieved_remaining']:.3f})" if r else "not run")
            lines.append(f"| {LABELS[method]} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def describe_budget(spent: dict) -> str:
    """One line of a row's ``budget``: what each run of that task was given."""
    parts = [f"{spent['steps']} steps of batch {spent['global_batch']}", f"lr {spent['lr'] or 1e-4:g}",
             f"train subset {spent['train_examples'] or 'all'}"]
    if spent.get("max_seq_length"):
        parts.append(f"max_seq_length {spent['max_seq_length']}")
    if spent.get("doc_stride") is not None:
        parts.append(f"doc_stride {spent['doc_stride']}")
    if spent.get("eval_examples"):
        parts.append(f"first {spent['eval_examples']} dev examples")
    parts.append(f"{spent['evals']} evaluations")
    return ", ".join(parts)


def plot(rows: list[dict], path: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    from matplotlib.ticker import FixedLocator, NullLocator

    figure, axes = plt.subplots(1, max(1, len(tasks)), figsize=(6.5 * max(1, len(tasks)) + 1.6, 4.6), squeeze=False)
    for axis, task in zip(axes[0], tasks):
        for method in METHODS:
            points = sorted((r["achieved_remaining"], r["best_at_target"]) for r in rows
                            if r["task"] == task and r["method"] == method)
            if points:
                axis.plot(*zip(*points), marker="o", label=LABELS[method], color=f"C{METHODS.index(method)}")
        dense = next((r for r in rows if r["task"] == task and r["method"] == "dense"), None)
        if dense:
            axis.axhline(dense["best_at_target"], color="black", linestyle="--", label="dense fine-tuning")
        axis.set_xscale("log")
        achieved = [r["achieved_remaining"] for r in rows if r["task"] == task and r["method"] != "dense"]
        targets = {r["remaining"] for r in rows if r["task"] == task and r["method"] != "dense"}
        off_target = {x for x in achieved if all(abs(x / t - 1) > 0.15 for t in targets)}
        shown = sorted(targets | off_target)
        axis.xaxis.set_major_locator(FixedLocator(shown))
        axis.xaxis.set_minor_locator(NullLocator())
        axis.set_xticklabels([f"{x:.3g}" for x in shown])
        axis.set_xlabel("remaining fraction of prunable weights (log)")
        axis.set_ylabel(f"dev {METRIC[task]}")
        spent = next((r["budget"] for r in rows if r["task"] == task and r.get("budget")), None)
        axis.set_title(task.upper() + (f" ({spent['steps']} steps of {spent['global_batch']})" if spent else ""))
        axis.grid(alpha=0.3)
    legend = {}  # every method of every panel, once (a task's panel may lack some)
    for axis in axes[0]:
        for handle, label in zip(*axis.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    figure.legend(list(legend.values()), list(legend), loc="center right", frameon=False)
    figure.suptitle(f"all-MiniLM-L6-v2, {args.nproc} ranks, ZeRO-2, seed {args.seed}")
    figure.tight_layout(rect=(0, 0, 1 - 1.6 / figure.get_figwidth(), 1))
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
