"""Model families: one registry, keyed by the transformers ``model_type`` of a checkpoint.

Each module of this package with a module-level ``FAMILY`` (a :class:`~.base.ModelFamily`) is one family:
:mod:`~.bert` (BERT, RoBERTa), :mod:`~.t5` (T5, mT5, UmT5). A new family is one new module. A model type
no family claims is read as a BERT-like encoder (:data:`DEFAULT_FAMILY`), as sparse_dist always has.
"""

from __future__ import annotations

import importlib
import pkgutil

import torch

from sparse_dist.models.families.base import ModelFamily


def _discover() -> dict[str, ModelFamily]:
    families: dict[str, ModelFamily] = {}
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        family = getattr(importlib.import_module(f"{__name__}.{module_info.name}"), "FAMILY", None)
        for model_type in getattr(family, "model_types", ()):
            if model_type in families:
                raise ValueError(f"model type {model_type!r} is claimed by two families: "
                                 f"{families[model_type].name} and {family.name}")
            families[model_type] = family
    return families


FAMILIES: dict[str, ModelFamily] = _discover()
"""Every family by the ``model_type`` values it claims."""
DEFAULT_FAMILY: ModelFamily = FAMILIES["bert"]
"""The family of a model type no family claims."""


def get_family(model_type: str) -> ModelFamily:
    """The family of a transformers ``model_type``."""
    return FAMILIES.get(model_type, DEFAULT_FAMILY)


def families() -> list[ModelFamily]:
    """Every family once, in registry order."""
    return list({id(f): f for f in FAMILIES.values()}.values())


def family_of(model: torch.nn.Module) -> ModelFamily | None:
    """The family of a transformers model (or of a module around one with its ``config``); None for a module
    without a transformers config."""
    config = getattr(model, "config", None)
    return get_family(config.model_type) if config is not None and hasattr(config, "model_type") else None


__all__ = ["DEFAULT_FAMILY", "FAMILIES", "ModelFamily", "families", "family_of", "get_family"]
