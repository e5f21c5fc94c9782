"""Tasks: one registry of every task, each a :class:`~sparse_dist.tasks.spec.TaskSpec` (data) with a type.

Task types (what kind of problem, and everything that follows from it) are one class each:
:mod:`~sparse_dist.tasks.classification`, :mod:`~sparse_dist.tasks.regression`,
:mod:`~sparse_dist.tasks.generation`, :mod:`~sparse_dist.tasks.token_classification`,
:mod:`~sparse_dist.tasks.extractive_qa`, on the interface of :mod:`~sparse_dist.tasks.base`. Tasks are
declared in their own modules (:mod:`~sparse_dist.tasks.glue`, :mod:`~sparse_dist.tasks.webnlg`,
:mod:`~sparse_dist.tasks.conll2003`, :mod:`~sparse_dist.tasks.squad`): every module of this package with a
module-level ``TASKS`` dict is found here, so a new task is one new file.
Nothing here imports torch, transformers or datasets, so the config can check ``data.task`` cheaply.
"""

from __future__ import annotations

import importlib
import pkgutil

from sparse_dist.tasks.spec import LocalLayout, TaskSpec, split_label


def _discover() -> dict[str, TaskSpec]:
    tasks: dict[str, TaskSpec] = {}
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        for name, spec in getattr(module, "TASKS", {}).items():
            if name in tasks:
                raise ValueError(f"task {name!r} is declared twice (again in {module.__name__})")
            tasks[name] = spec
    return tasks


TASKS: dict[str, TaskSpec] = _discover()
"""Every task by name (``data.task``)."""


def get_task(name: str) -> TaskSpec:
    """The spec of a task by name; a clear error for an unknown one."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None


__all__ = ["TASKS", "LocalLayout", "TaskSpec", "get_task", "split_label"]
