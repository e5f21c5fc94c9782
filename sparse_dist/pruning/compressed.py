"""The compact export: compressed-tensors' sparse-bitmask format, written and read by that library.

Each prunable matrix is stored as its kept values (in the weight's dtype), a bitmask of their positions
(1 bit per weight) and one offset per row; every other tensor stays dense. compressed-tensors writes the
format description into ``config.json`` (``quantization_config`` with ``sparsity_config.format:
sparse-bitmask``), so its own ``ModelCompressor`` decompresses the directory back to the dense masked
weights. Bitmask compression keeps the non-zero values, so a kept weight that is exactly 0 comes back
as 0 too: the dense weights are the same, bit for bit, unless a kept weight is -0.0 (then +0.0).

compressed-tensors 0.14 requires transformers < 5 and 0.15 on removed the sparse compressors, so this
needs compressed-tensors 0.12 or 0.13 (the ``compressed`` extra).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

COMPRESSED_FORMAT = "sparse-bitmask"


def save_compressed_model(model: torch.nn.Module, state: dict[str, torch.Tensor], directory: Path,
                          site_names: Iterable[str], remaining: float) -> None:
    """Write ``state`` (masks folded in) with the prunable matrices ``site_names`` bitmask-compressed,
    and the compression config into ``config.json``. ``model`` gives the module names and config."""
    from compressed_tensors import BitmaskConfig, ModelCompressor

    config = BitmaskConfig(targets=list(site_names), global_sparsity=1.0 - remaining,
                           sparsity_structure="unstructured")
    compressor = ModelCompressor(sparsity_config=config)
    compressed = compressor.compress(model, state_dict=state)
    model.save_pretrained(directory, state_dict=compressed)
    compressor.update_config(str(directory))


def load_compressed_state_dict(directory: str | Path) -> dict[str, torch.Tensor]:
    """The dense state dict of a compressed export, decompressed by compressed-tensors itself."""
    from compressed_tensors import ModelCompressor

    compressor = ModelCompressor.from_pretrained(str(directory))
    if compressor is None or compressor.sparsity_config.format != COMPRESSED_FORMAT:
        raise ValueError(f"{directory} holds no {COMPRESSED_FORMAT} compressed model")
    return dict(compressor.sparsity_compressor.decompress(str(directory)))


def load_compressed_model(directory: str | Path) -> torch.nn.Module:
    """The model of a compressed export with its dense masked weights (single process, no sparse_dist
    state needed): built from ``config.json`` by transformers, weights filled in by compressed-tensors'
    ``ModelCompressor.decompress``, tied weights tied again. (transformers 5 refuses to load the directory by
    itself: it asks compressed-tensors >= 0.15 for any ``quantization_config``, and those versions dropped the
    format.)"""
    import transformers
    from compressed_tensors import ModelCompressor

    config = transformers.AutoConfig.from_pretrained(str(directory))
    del config.quantization_config  # read by compressed-tensors below, not by transformers
    model_class = getattr(transformers, config.architectures[0])
    model = model_class(config)
    ModelCompressor.from_pretrained(str(directory)).decompress(str(directory), model)
    # The file holds a tied table once (a label-word model's decoder is its word embeddings); decompress fills
    # the embedding only, so tie the head to it again as from_pretrained does.
    model.tie_weights()
    return model.eval()
