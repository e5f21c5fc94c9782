"""A fine-tuned classifier's outputs put in the task's class order, matched by label name.

A sequence-classification checkpoint names its outputs in ``id2label``; the task numbers its classes
its own way (:attr:`TaskSpec.label_names`, the hub's ids). Reading output i of the checkpoint as class i
of the task is right only when the two orders agree: SST-2 is {0: negative, 1: positive}, and a
checkpoint fine-tuned with {0: positive, 1: negative} would have every prediction inverted. So the
classes are matched by name (case, spaces and dashes aside) and the classifier's output rows permuted
into the task's order. Names that do not match the task's, or a different number of classes, are refused:
nobody can tell which output is which class. Generic names (``LABEL_0``, ``LABEL_1``, what transformers
writes when none were given) carry no order to match; they are taken in the task's order.
"""

from __future__ import annotations

import logging
import re

import torch
from transformers import PretrainedConfig

from sparse_dist.config import ConfigError
from sparse_dist.distributed.gather import full_shape, gathered_for_update
from sparse_dist.tasks import TaskSpec

log = logging.getLogger(__name__)

_GENERIC = re.compile(r"label_\d+")


def checkpoint_labels(config: PretrainedConfig) -> tuple[str, ...] | None:
    """A sequence classifier's class names in its output order; None for any other checkpoint (a
    pretrained encoder, a masked-LM, T5), whose head is not a trained classifier."""
    if not any(name.endswith("ForSequenceClassification") for name in config.architectures or ()):
        return None
    return tuple(str(config.id2label.get(i, f"LABEL_{i}")) for i in range(config.num_labels))


def _normal(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


def compute_label_order(labels: tuple[str, ...] | None, task: TaskSpec, key: str, name: str) -> list[int] | None:
    """For each class of ``task``, the checkpoint output that holds it; None when no reordering is needed.

    ``labels`` is :func:`checkpoint_labels` of the checkpoint ``name`` given as config key ``key``.
    Raises :class:`ConfigError` when the checkpoint's classes cannot be matched to the task's.
    """
    if labels is None:
        return None  # no trained classifier: the head is new and already in the task's order
    if len(labels) != task.num_labels:
        wanted = ", ".join(task.label_names) if task.label_names else "one score (regression)"
        raise ConfigError(f"{key}: {name} is a classifier of {len(labels)} label(s) ({', '.join(labels)}); "
                          f"task {task.name} needs {task.num_labels}: {wanted}")
    if not task.label_names:  # one score: nothing to order
        return None
    if all(_GENERIC.fullmatch(_normal(label)) for label in labels):
        log.warning("%s: %s names its classes %s, which says nothing of their order; they are taken as the task's "
                    "(%s)", key, name, ", ".join(labels), ", ".join(task.label_names))
        return None
    position = {_normal(label): i for i, label in enumerate(labels)}
    if set(position) != {_normal(label) for label in task.label_names}:
        raise ConfigError(f"{key}: {name} was fine-tuned with labels ({', '.join(labels)}), which are not the "
                          f"labels of task {task.name} ({', '.join(task.label_names)}); cannot tell which output "
                          "is which class")
    order = [position[_normal(label)] for label in task.label_names]
    if order == list(range(len(order))):
        return None
    log.info("%s: %s lists its labels as (%s); its classifier rows are reordered to the task's (%s)", key, name,
             ", ".join(labels), ", ".join(task.label_names))
    return order


def classifier_output_layer(model: torch.nn.Module, num_labels: int) -> torch.nn.Linear:
    """The last linear layer of a sequence classifier's head: the one outside the base model whose
    outputs are the classes (BERT: ``classifier``, RoBERTa: ``classifier.out_proj``)."""
    base = getattr(model, model.base_model_prefix, None)
    inside = {id(module) for module in base.modules()} if base is not None else set()
    found = [module for module in model.modules() if isinstance(module, torch.nn.Linear)
             and id(module) not in inside and full_shape(module.weight)[0] == num_labels]
    if len(found) != 1:
        raise ValueError(f"{type(model).__name__}: expected one classifier output layer of {num_labels} outputs, "
                         f"found {len(found)}")
    return found[0]


def apply_label_order(model: torch.nn.Module, order: list[int]) -> None:
    """Permute the classifier's output rows in place: row j becomes the checkpoint's row ``order[j]``.
    All ranks call (under ZeRO-3 the rows are gathered and re-partitioned)."""
    layer = classifier_output_layer(model, len(order))
    params = [p for p in (layer.weight, layer.bias) if p is not None]
    index = torch.tensor(order)
    with gathered_for_update(params), torch.no_grad():
        for param in params:
            param.copy_(param[index.to(param.device)].clone())
