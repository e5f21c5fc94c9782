"""The training loop: one Trainer, built in dependency order, one optimizer step per ``train_step``.

``Trainer(config, env)`` builds, in order: the DeepSpeed config, the model (partitioned under ZeRO-3),
the task's data, the DeepSpeed engine, the evaluator, the metrics logger and the checkpointer.
``train()`` resumes from the run directory's latest checkpoint if there is one, runs to
``training.max_steps`` (evaluating and checkpointing on schedule), then evaluates, checkpoints and
exports the final model, and returns a :class:`TrainResult`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import deepspeed
import torch
import torch.distributed as dist
from torch.optim.lr_scheduler import LambdaLR

from sparse_dist.checkpoint import (
    COMPLETED,
    Checkpointer,
    check_run_dir,
    rng_state,
    run_signature,
    set_rng_state,
)
from sparse_dist.config import OptimizerConfig, RunConfig, dump_config
from sparse_dist.data.sampler import TrainBatchSampler
from sparse_dist.data.task_data import build_task_data, build_train_loader
from sparse_dist.distill.build import build_distiller
from sparse_dist.distill.losses import loss_units
from sparse_dist.distributed.comm import TorchCommunicator
from sparse_dist.distributed.deepspeed_config import build_deepspeed_config, resolve_precision
from sparse_dist.distributed.env import DistEnv, device_capabilities, log_placement, main_process_first
from sparse_dist.distributed.gather import full_shape
from sparse_dist.distributed.grad_norm import GradNormMeter
from sparse_dist.evaluation import Evaluator
from sparse_dist.models.build import build_model, count_parameters, count_scores
from sparse_dist.observe import build_metrics_logger, build_progress_bar, log_remaining_map, memory_gib
from sparse_dist.preemption import StopRequest
from sparse_dist.pruning.build import build_pruner
from sparse_dist.pruning.export import export_mask_artifact, export_pruned_model
from sparse_dist.pruning.masked_linear import trains_with_scores
from sparse_dist.tasks import get_task

log = logging.getLogger(__name__)

PART_TAGS = {"ce": "train/ce_loss", "kd": "train/kd_loss", "alpha": "teacher/alpha_mean"}
"""TensorBoard tag of each part of the loss a distiller returns besides the loss itself."""


@dataclass
class TrainResult:
    """What a run produced, on every rank."""

    steps: int
    losses: list[tuple[int, float]] = field(default_factory=list)
    """(step, training loss of the steps since the previous log line): the mean over every target token
    (text-to-text) or example of their global batches."""
    evals: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    best_metric: float | None = None
    final_metrics: dict[str, float] = field(default_factory=dict)
    sparsity: dict[str, float] = field(default_factory=dict)
    """Achieved remaining fraction and sparsity of the prunable weights (empty for dense runs)."""
    stopped: bool = False
    """True if a signal stopped the run early (after saving a checkpoint)."""
    wall_time_s: float = 0.0


def build_param_groups(model: torch.nn.Module, optimizer: OptimizerConfig, score_lr: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices, none on biases and norms; mask scores (and what trains with them,
    :func:`~sparse_dist.pruning.masked_linear.trains_with_scores`) at their own rate."""
    decay, no_decay, scores = [], [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if trains_with_scores(name, param):
            scores.append(param)
        else:
            (decay if len(full_shape(param)) >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": optimizer.weight_decay},
              {"params": no_decay, "weight_decay": 0.0},
              {"params": scores, "weight_decay": 0.0, "lr": score_lr}]
    return [g for g in groups if g["params"]]


def lr_multiplier(step: int, warmup_steps: int, max_steps: int, schedule: str) -> float:
    """Factor on each group's peak learning rate: linear warm-up, then linear decay to 0 or constant."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if schedule == "constant":
        return 1.0
    return max(0.0, (max_steps - step) / max(1, max_steps - warmup_steps))


class Trainer:
    def __init__(self, config: RunConfig, env: DistEnv):
        self.config = config
        self.env = env
        log_placement(env)
        self.run_dir = Path(config.job.run_dir)
        on_gpu = env.on_gpu
        self.precision = resolve_precision(config.training, on_gpu, device_capabilities()[1])
        self.ds_config = build_deepspeed_config(config.training, config.optimizer, config.zero, env.world_size,
                                                self.precision, on_gpu)
        self.task = get_task(config.data.task)
        self.comm = TorchCommunicator()
        self.built = build_model(config.model, self.task, self.ds_config, config.job.seed)
        self.pruner = build_pruner(config.pruning, self.built.pretrained, config.training.max_steps, self.comm)
        # Nothing is written into the run directory before its checkpoints are known to be this run's.
        signature = run_signature(config, self.precision, [f"{s.name}{list(s.shape)}" for s in self.pruner.sites],
                                  calibrated=getattr(self.built.model, "calibration", None) is not None)
        check_run_dir(self.run_dir / "checkpoints", signature, env.world_size, config.checkpoint.resume,
                      config.training.max_steps)
        if env.is_main:
            dump_config(config, self.run_dir / "config.yaml")
            for warning in self.built.warnings:  # said again in the summary and recorded in COMPLETED
                log.warning(warning)
        self.pruner.prepare(self.built.model, self.built.task_head)
        with main_process_first(env):
            self.task_data = build_task_data(config.data, self.task, self.built.tokenizer, self.built.kind)
        self.engine = self._build_engine()
        self.grad_norm = GradNormMeter(self.engine)
        self.pruner.attach(self.engine)
        self.distiller = build_distiller(config.distill, config.model, self.task, self.built, self.engine,
                                         self.pruner, self.ds_config, self.comm, env, config.job.seed)
        self.evaluator = Evaluator(self.task_data, config.eval, env, self.built.tokenizer, config.zero.stage)
        self.metrics = build_metrics_logger(self.run_dir, config.metrics.tensorboard, env.is_main)
        self.checkpointer = Checkpointer(self.run_dir / "checkpoints", config.checkpoint.keep_last, env, signature)
        self.step = 0
        self.result = TrainResult(steps=0)
        # Since the last log line: this rank's share of the loss and its parts (summed over ranks, the mean
        # over the global batches), and the number of steps each was seen in.
        self._window_sums: dict[str, float] = {}
        self._window_steps: dict[str, int] = {}
        # Dropout differs per rank; everything that must agree across ranks was seeded above.
        torch.manual_seed(config.job.seed + env.rank)
        scores = count_scores(self.built.model)
        log.info("model %s (%s, %.2fM parameters%s), task %s, ZeRO-%d, %s, %d rank(s), global batch %d = %d x %d x %d",
                 config.model.name_or_path, self.built.kind, count_parameters(self.built.model) / 1e6,
                 f", {scores / 1e6:.2f}M mask scores" if scores else "",
                 self.task.name, config.zero.stage, self.precision, env.world_size, config.training.global_batch_size,
                 config.training.micro_batch_size, config.grad_accum_steps, env.world_size)

    def _build_engine(self):
        optimizer = self.config.optimizer
        max_steps = self.config.training.max_steps

        def scheduler(opt):
            return LambdaLR(opt, lambda step: lr_multiplier(step, optimizer.warmup_steps, max_steps,
                                                            optimizer.schedule))

        groups = build_param_groups(self.built.model, optimizer, self.config.pruning.score_lr)
        engine, _, _, _ = deepspeed.initialize(model=self.built.model, model_parameters=groups,
                                               config=self.ds_config, lr_scheduler=scheduler)
        return engine

    # --- the loop ---------------------------------------------------------------------------------

    def train(self) -> TrainResult:
        """Run (or finish) training; returns the same result on every rank. All ranks call.

        From the resume to the exported model, SIGTERM and SIGUSR1 stop the run with a checkpoint of its
        last completed step: at the next step boundary, or once the final evaluation, checkpoint or export
        under way is done. The result then says ``stopped``; restarting the same command resumes.
        """
        start_time = time.perf_counter()
        with StopRequest(self.env.device) as stop:
            if not (self.config.checkpoint.resume and self._resume()):
                self.pruner.start()
            self._withdraw_completion_marker()
            stopped = self._loop(stop) or self._finish(stop)
        self.result.wall_time_s = time.perf_counter() - start_time
        self.metrics.close()
        if stopped:
            self.result.stopped = True
            log.warning("stopped after step %d; restart the same command to resume", self.step)
            return self.result
        self._print_summary()
        return self.result

    def _finish(self, stop: StopRequest) -> bool:
        """Final evaluation, checkpoint, export and completion marker; True if a signal stopped the run on
        the way (after the checkpoint of the last step, which a restart finishes from)."""
        if self.result.evals and self.result.evals[-1][0] == self.step:  # evaluated before its checkpoint was saved
            self.result.final_metrics = self.result.evals[-1][1]
        else:
            self.result.final_metrics = self.evaluate()
        self.save_checkpoint()
        if stop.agreed():
            return True
        if self.config.checkpoint.save_final_model:
            self.export(self.run_dir / "final")
            if stop.agreed():
                return True
        self.result.sparsity = self.pruner.achieved()
        self.result.steps = self.step
        self._write_completion_marker()
        return False

    def _loop(self, stop: StopRequest) -> bool:
        """Train to ``max_steps``; True if stopped early by a signal (after saving a checkpoint)."""
        max_steps = self.config.training.max_steps
        sampler = TrainBatchSampler(len(self.task_data.train), self.config.training.global_batch_size,
                                    self.config.training.micro_batch_size, self.env.rank, self.env.world_size,
                                    self.config.job.seed, start_step=self.step)
        batches = iter(build_train_loader(self.task_data, sampler))
        self.engine.train()  # from_pretrained returns the model in eval mode (dropout off)
        bar = build_progress_bar(max_steps, self.step, self.config.metrics.progress_bar, self.env.is_main)
        window_start, window_steps = time.perf_counter(), 0
        while self.step < max_steps:
            self._accumulate(self.train_step([next(batches) for _ in range(self.config.grad_accum_steps)]))
            self.step += 1
            window_steps += 1
            bar.update(1)
            if self._due(self.config.metrics.log_every_steps) or self.step == max_steps:
                elapsed = time.perf_counter() - window_start
                loss = self._log_training(window_steps * self.config.training.global_batch_size / elapsed)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self.engine.get_lr()[0]:.2e}")
                window_start, window_steps = time.perf_counter(), 0
            pause = time.perf_counter()
            if self._due(self.config.eval.eval_every_steps) and self.step < max_steps:
                self.evaluate()
            if self._due(self.config.checkpoint.save_every_steps) and self.step < max_steps:
                self.save_checkpoint()
            window_start += time.perf_counter() - pause  # samples/s counts training time only
            if stop.agreed():
                self.save_checkpoint()
                bar.close()
                return True
        bar.close()
        return False

    def _write_completion_marker(self) -> None:
        """<run_dir>/COMPLETED: this run (its signature) reached its last step; job scripts requeue until a
        marker matching their config exists (:func:`~sparse_dist.checkpoint.completion_mismatch`)."""
        if self.env.is_main:
            schedule = getattr(self.pruner, "schedule", None)
            evals = [{"step": step, "target_remaining": schedule.remaining(step) if schedule else 1.0, **metrics}
                     for step, metrics in self.result.evals]
            summary = {"steps": self.step, "max_steps": self.config.training.max_steps,
                       "signature": self.checkpointer.signature, "final": self.result.final_metrics,
                       "best": self.result.best_metric, "sparsity": self.result.sparsity, "evals": evals,
                       "model.init": self.config.model.init, "warnings": list(self.built.warnings)}
            (self.run_dir / COMPLETED).write_text(json.dumps(summary, indent=1))

    def _withdraw_completion_marker(self) -> None:
        """A run that trains on (a finished run extended) is not complete until it ends again: a marker
        left by its shorter self must not tell a job script otherwise."""
        if self.env.is_main and self.step < self.config.training.max_steps:
            (self.run_dir / COMPLETED).unlink(missing_ok=True)

    def train_step(self, micro_batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """One optimizer step over this rank's micro-batches, then the pruner's step. All ranks call.

        Returns this rank's share of the step's loss and of its parts (``ce``, ``kd``, ``alpha`` when
        distilling): summed over ranks, each is its mean over the whole global batch, per target token for
        text-to-text models and per example otherwise.
        """
        step = self.step + 1
        units = [loss_units(self.task.type.loss_labels(batch)) for batch in micro_batches]
        total_units = self._sum_over_ranks(sum(units))
        # Every loss is a mean over its micro-batch's units (tokens or examples), and DeepSpeed divides each
        # micro-batch's loss by grad_accum_steps and averages gradients over ranks: a weight of 1/(A W) per
        # micro-batch. Weighting micro-batch i by A W units_i / total_units instead makes the step's gradient
        # that of sum(loss over all units) / total_units: independent of the micro-batch size, of how the
        # tokens fall into micro-batches, and of the world size. The regulariser is per step: weight 1.
        # (Integer product first: micro-batches of equally many examples get a weight of exactly 1.)
        micro_batches_per_step = self.config.grad_accum_steps * self.env.world_size
        shares: dict[str, torch.Tensor] = {}
        for batch, count in zip(micro_batches, units):
            batch = {key: value.to(self.env.device) for key, value in batch.items()}
            parts = self.distiller.loss(self.engine(**batch), batch)
            weight = count * micro_batches_per_step / total_units
            loss = parts["loss"] * weight + sum(self.pruner.loss_terms(step).values())
            self.engine.backward(loss)
            if self.engine.is_gradient_accumulation_boundary():
                self.grad_norm.before_step()
            self.engine.step()  # DeepSpeed steps the optimizer only at the accumulation boundary
            for name, value in parts.items():
                share = value.detach().float() * (count / total_units)
                shares[name] = shares[name] + share if name in shares else share
        self.pruner.step(step)
        return shares

    def _sum_over_ranks(self, value: int) -> int:
        total = torch.tensor([value], dtype=torch.int64, device=self.env.device)
        dist.all_reduce(total)
        return int(total.item())

    def _due(self, every: int) -> bool:
        return every > 0 and self.step % every == 0

    # --- observation ------------------------------------------------------------------------------

    def _accumulate(self, shares: dict[str, torch.Tensor]) -> None:
        for name, value in shares.items():
            self._window_sums[name] = self._window_sums.get(name, 0.0) + float(value)
            self._window_steps[name] = self._window_steps.get(name, 0) + 1

    def _log_training(self, samples_per_s: float) -> float:
        """All-reduce the loss and its parts since the last log line and write the training scalars."""
        names = sorted(self._window_sums)  # the same parts on every rank: the teacher is the same everywhere
        reduced = torch.tensor([self._window_sums[name] for name in names], dtype=torch.float64,
                               device=self.env.device)
        dist.all_reduce(reduced)
        means = {name: reduced[i].item() / self._window_steps[name] for i, name in enumerate(names)}
        self._window_sums.clear()
        self._window_steps.clear()
        loss = means.pop("loss")
        self.result.losses.append((self.step, loss))
        scalars = {"train/loss": loss, "train/lr": self.engine.get_lr()[0], "sys/samples_per_s": samples_per_s,
                   **memory_gib(self.env.device)}
        grad_norm = self.grad_norm.value()  # of the last step, before clipping
        if grad_norm is not None and math.isfinite(grad_norm):
            scalars["train/grad_norm"] = grad_norm
        scalars.update(self.pruner.report())
        scalars.update(self.distiller.report())
        scalars.update({PART_TAGS[name]: value for name, value in means.items()})
        self.metrics.log(scalars, self.step)
        remaining = f" remaining {scalars['prune/remaining']:.3f}" if "prune/remaining" in scalars else ""
        log.info("step %d/%d loss %.4f lr %.3g %.1f samples/s%s", self.step, self.config.training.max_steps, loss,
                 scalars["train/lr"], samples_per_s, remaining)
        return loss

    def evaluate(self) -> dict[str, float]:
        """Score the current model on the dev set(s), log it, and track the best primary metric."""
        metrics = self.evaluator.evaluate(self.engine.module)
        self.result.evals.append((self.step, metrics))
        primary = metrics[self.evaluator.primary_metric]
        improved = self.result.best_metric is None or primary > self.result.best_metric
        if improved:
            self.result.best_metric = primary
        self.distiller.on_evaluation(improved)
        self.metrics.log({f"eval/{name}": value for name, value in metrics.items()}, self.step)
        log_remaining_map(self.metrics, self.pruner, self.step)
        self.metrics.flush()
        log.info("step %d eval: %s", self.step, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        return metrics

    def _print_summary(self) -> None:
        if not self.env.is_main:
            return
        final = ", ".join(f"{k} {v:.4f}" for k, v in self.result.final_metrics.items())
        lines = [f"run {self.config.job.name}: {self.config.model.name_or_path} on {self.task.name}, "
                 f"{self.result.steps} steps, {self.env.world_size} rank(s), ZeRO-{self.config.zero.stage}",
                 f"  dev (final): {final}",
                 f"  dev (best {self.evaluator.primary_metric}): {self.result.best_metric:.4f}",
                 *([f"  sparsity: {self.result.sparsity['sparsity']:.2%} of prunable weights pruned "
                    f"({self.result.sparsity['remaining']:.2%} remaining)"] if self.result.sparsity else []),
                 f"  wall time: {self.result.wall_time_s:.1f} s; outputs in {self.run_dir}",
                 *(f"  warning: {warning}" for warning in self.built.warnings)]
        print("\n".join(lines), flush=True)

    # --- persistence ------------------------------------------------------------------------------

    def _trainer_state(self) -> dict[str, Any]:
        return {"step": self.step, "rng": rng_state(), "result": self.result, "pruner": self.pruner.state_dict(),
                "distiller": self.distiller.state_dict(), "window_sums": dict(self._window_sums),
                "window_steps": dict(self._window_steps)}

    def save_checkpoint(self) -> None:
        self.checkpointer.save(self.engine, self.step, self._trainer_state())

    def _resume(self) -> bool:
        """Restore the latest checkpoint if there is one; True if a run was resumed."""
        restored = self.checkpointer.load_latest(self.engine)
        if restored is None:
            return False
        self.step, states = restored
        own = states[0] if len(states) == 1 else None
        if own is not None:
            set_rng_state(own["rng"])
            # (Checkpoints from before per-token averaging hold no window: it starts afresh.)
            self._window_sums, self._window_steps = own.get("window_sums", {}), own.get("window_steps", {})
        else:  # another world size: dropout streams start afresh, deterministically
            torch.manual_seed(self.config.job.seed + self.env.rank + 1_000_003 * self.step)
        self.result = states[0]["result"]
        self.pruner.load_state_dict([s["pruner"] for s in states])
        self.distiller.load_state_dict([s["distiller"] for s in states])
        return True

    def export_model(self, directory: Path, model_format: str = "dense") -> None:
        """Write a plain transformers model (masks folded in; ``dense`` or ``compressed``), its tokenizer and
        sparsity report. All ranks call."""
        export_pruned_model(self.built, self.pruner, directory, self.comm, self.env.is_main, model_format)

    def export(self, directory: Path, model_format: str = "dense") -> None:
        """Everything worth keeping: the pruned model in ``directory/model`` and, for SMP with a label-word
        head, the mask-only artifact in ``directory/mask`` (with a trained task head, NER or QA, the mask
        alone is not the model). All ranks call."""
        self.export_model(directory / "model", model_format)
        if self.pruner.freezes_weights and not self.built.task_head:  # the mask (with the base model) is the model
            export_mask_artifact(self.built, self.pruner, directory / "mask", self.comm, self.env.is_main,
                                 base=self.config.model.name_or_path, seed=self.config.job.seed)

    def restore(self) -> bool:
        """Load the latest checkpoint of the run directory (for export or evaluation). All ranks call."""
        return self._resume()
