"""Distributed evaluation on disjoint shards of the dev sets, reduced exactly.

Every rank predicts its shard (see :func:`~sparse_dist.data.sampler.eval_shard`); the per-example
predictions (a label id, a score, a generated sentence or a sentence's tags) are gathered on all ranks and
put back in dataset order, and the task's type scores the complete list, so the result is the same number
a single process would get (extractive QA: one prediction per window, reduced to one answer per question
only now, when every window of every question is in). Under ZeRO-3 every forward pass and every generation
step is collective: all ranks run the same number of batches, and generation runs with ``synced_gpus``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.distributed as dist

from sparse_dist.config import EvalConfig
from sparse_dist.data.sampler import eval_batches_real, eval_shard
from sparse_dist.data.task_data import EvalSet, TaskData
from sparse_dist.distributed.env import DistEnv
from sparse_dist.tasks import split_label


class Evaluator:
    """Scores a model on every dev set of the task. All ranks must call :meth:`evaluate` together."""

    def __init__(self, task_data: TaskData, eval_cfg: EvalConfig, env: DistEnv, tokenizer, zero_stage: int):
        self.task_data = task_data
        self.cfg = eval_cfg
        self.env = env
        self.tokenizer = tokenizer
        self.synced_generation = zero_stage == 3 and env.world_size > 1
        task_data.task.type.check_generation(task_data.task, tokenizer, task_data.kind, eval_cfg.max_new_tokens)

    @property
    def primary_metric(self) -> str:
        """Key of the metric that decides "better": the task's primary metric on its first dev set."""
        return self.task_data.task.primary_metric

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Metrics keyed ``<metric>`` for the first dev set and ``<split>/<metric>`` for the others."""
        was_training = model.training
        model.eval()
        results = {}
        try:
            for dev in self.task_data.dev:
                predictions = self.predict(model, dev)
                prefix = split_label(dev.split)
                task = self.task_data.task
                for name, value in task.type.score(task, predictions, dev.gold).items():
                    results[f"{prefix}/{name}" if prefix else name] = value
        finally:
            model.train(was_training)
        return results

    def predict(self, model: torch.nn.Module, dev: EvalSet) -> list:
        """Predictions for every example of ``dev`` in dataset order, identical on all ranks."""
        n, rank, world = len(dev.inputs), self.env.rank, self.env.world_size
        batches = eval_shard(n, rank, world, self.cfg.micro_batch_size)
        real = eval_batches_real(n, rank, world, self.cfg.micro_batch_size)
        mine: list[tuple[int, Any]] = []
        for position, indices in enumerate(batches):
            batch = self.task_data.collator([dev.inputs[i] for i in indices])
            idx = batch.pop("idx").tolist()
            outputs = self._predict_batch(model, {k: v.to(self.env.device) for k, v in batch.items()})
            if position < real:
                mine.extend(zip(idx, outputs))
        gathered: list[list[tuple[int, Any]]] = [None] * world  # type: ignore[list-item]
        dist.all_gather_object(gathered, mine)
        by_index = dict(pair for part in gathered for pair in part)
        if len(by_index) != n:
            raise RuntimeError(f"evaluation of {dev.split} covered {len(by_index)} of {n} examples")
        return [by_index[i] for i in range(n)]

    def _predict_batch(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> list:
        task = self.task_data.task
        return task.type.predict_batch(task, model, batch, self.task_data.kind, partial(self._generate, model))

    def _generate(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> list[str]:
        """Decoded outputs of a text-to-text model (greedy or beam search; collective under ZeRO-3)."""
        generated = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                   max_new_tokens=self.cfg.max_new_tokens, num_beams=self.cfg.num_beams,
                                   do_sample=False, synced_gpus=self.synced_generation)
        if not model.config.is_encoder_decoder:  # a decoder-only model returns its (left-padded) prompt first
            generated = generated[:, batch["input_ids"].shape[1]:]
        return self.tokenizer.batch_decode(generated, skip_special_tokens=True)
