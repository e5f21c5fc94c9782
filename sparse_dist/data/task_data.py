"""A task's data ready for training and evaluation: tokenized splits, gold answers, loaders."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import datasets
import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from sparse_dist.config import DataConfig
from sparse_dist.data.encode import Collator, ModelKind
from sparse_dist.data.load import load_split
from sparse_dist.data.sampler import TrainBatchSampler
from sparse_dist.tasks import TaskSpec

log = logging.getLogger(__name__)


@dataclass
class EvalSet:
    """One dev set: tokenized inputs carrying ``idx``, and the gold answer of each ``idx``."""

    split: str
    inputs: datasets.Dataset
    gold: list


@dataclass
class TaskData:
    task: TaskSpec
    kind: ModelKind
    """The model family's interface the data was encoded for."""
    train: datasets.Dataset | None
    """The tokenized training split (None when only the dev sets were built, for evaluation)."""
    dev: list[EvalSet]
    collator: Collator


def build_task_data(data: DataConfig, task: TaskSpec, tokenizer: PreTrainedTokenizerBase,
                    kind: ModelKind, dev_only: bool = False) -> TaskData:
    """Load, subset and tokenize the training split (unless ``dev_only``) and every dev split of the task."""
    train = None
    if not dev_only:
        raw_train = load_split(task, task.train_split, data.local_dir, data.max_train_examples)
        train = task.type.encode_train(task, raw_train, tokenizer, kind, data.max_seq_length,
                                       data.max_target_length, doc_stride=data.doc_stride)
    dev = []
    for split in task.dev_splits:
        raw = load_split(task, split, data.local_dir, data.max_eval_examples)
        inputs, gold = task.type.encode_eval(task, raw, tokenizer, kind, data.max_seq_length,
                                             doc_stride=data.doc_stride, n_best=data.n_best,
                                             max_answer_length=data.max_answer_length)
        dev.append(EvalSet(split=split, inputs=inputs, gold=gold))
    log.info("task %s: %s training examples, dev: %s", task.name, "no" if train is None else len(train),
             ", ".join(f"{d.split} {len(d.inputs)}" for d in dev))
    return TaskData(task=task, kind=kind, train=train, dev=dev, collator=task.type.collator(tokenizer, kind))


def build_train_loader(task_data: TaskData, sampler: TrainBatchSampler, num_workers: int = 0) -> DataLoader:
    """An endless loader of this rank's micro-batches, in the sampler's order.

    The loader gets its own generator: otherwise creating its iterator draws a seed from the global RNG,
    which would shift the dropout stream of a resumed run by one draw.
    """
    return DataLoader(task_data.train, batch_sampler=sampler, collate_fn=task_data.collator,
                      num_workers=num_workers, persistent_workers=num_workers > 0,
                      generator=torch.Generator().manual_seed(sampler.seed))
