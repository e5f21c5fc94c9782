"""Exporting a pruned model: a plain transformers model, or (for SMP) just the mask.

:func:`export_pruned_model` folds every mask into its weight and writes the transformers model with
``save_pretrained`` (no sparse_dist needed to load it), the tokenizer, and ``sparsity.json`` (kept
weights per matrix, type and layer); or, compact, the same weights in compressed-tensors' sparse-bitmask
format (:mod:`sparse_dist.pruning.compressed`). Parameters are gathered one at a time into host memory on rank 0,
so a ZeRO-3 model is exported without any rank holding it whole in accelerator memory. A label-word
model (SMP on an encoder) is written as the masked-LM model it wraps, with ``label_words.json``: the
class logits are that model's logits at the first token for those token ids. A learned label-word
calibration (``model.calibrate_label_words``) is folded into that head's weights, so this holds as it is;
its two values are recorded beside the ids, for information only.

:func:`export_mask_artifact` writes what SMP actually learns: one bit per prunable weight
(``mask.safetensors``, packed per matrix), the base model's name and a SHA-256 of its prunable
weights, and the label-word calibration if the run learned one. :func:`load_mask_artifact` rebuilds the
pruned model from the base model and the mask (folding the calibration into its head), and refuses a base
model whose weights do not match.

:func:`unpack_export` reads any of these back (dense, compressed, or a mask artifact with its base model)
as a plain transformers directory, for ``sparse-dist eval``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from sparse_dist.distributed.bitmask import PackedMask
from sparse_dist.distributed.comm import Communicator
from sparse_dist.distributed.gather import iter_full_parameters
from sparse_dist.distributed.masking import gather_full_mask
from sparse_dist.models.label_words import calibration_values, fold_calibration
from sparse_dist.pruning.compressed import save_compressed_model
from sparse_dist.pruning.sites import Site

log = logging.getLogger(__name__)

MASK_FILE = "mask.safetensors"
MASK_META = "mask.json"
LABEL_WORDS_FILE = "label_words.json"
MODEL_FORMATS = ("dense", "compressed")
"""How :func:`export_pruned_model` stores weights: dense, or compressed-tensors' sparse-bitmask format."""


def full_masks(pruner, comm: Communicator) -> dict[str, torch.Tensor]:
    """Every site's whole mask (flat bool), on every rank. All ranks call."""
    return {site.name: gather_full_mask(fragment, mask, comm).cpu()
            for site, fragment, mask in zip(pruner.sites, pruner.fragments, pruner.masks)}


def sparsity_report(sites: Sequence[Site], masks: dict[str, torch.Tensor]) -> dict:
    """Kept weights per matrix, per type, per layer and overall (over the prunable matrices)."""
    by_kind, by_layer = defaultdict(lambda: [0, 0]), defaultdict(lambda: [0, 0])
    matrices = {}
    for site in sites:
        kept = int(masks[site.name].sum())
        matrices[site.name] = {"kept": kept, "total": site.numel, "type": site.kind, "layer": site.layer}
        for table, key in ((by_kind, site.kind), (by_layer, site.layer)):
            table[key][0] += kept
            table[key][1] += site.numel
    kept, total = sum(m["kept"] for m in matrices.values()), sum(s.numel for s in sites)
    return {"prunable_weights": total, "kept": kept, "remaining": kept / total, "sparsity": 1 - kept / total,
            "per_type": {k: {"kept": a, "total": b, "remaining": a / b} for k, (a, b) in by_kind.items()},
            "per_layer": {k: {"kept": a, "total": b, "remaining": a / b} for k, (a, b) in by_layer.items()},
            "matrices": matrices}


def export_pruned_model(built, pruner, directory: Path, comm: Communicator, is_main: bool,
                        model_format: str = "dense") -> dict | None:
    """Write the pruned model as a plain transformers model with masks folded in. All ranks call.

    ``model_format`` ``compressed`` stores the prunable matrices in compressed-tensors' sparse-bitmask
    format (:mod:`sparse_dist.pruning.compressed`) instead of dense. Returns the sparsity report on
    rank 0 (None elsewhere).
    """
    if model_format not in MODEL_FORMATS:
        raise ValueError(f"model_format must be one of {', '.join(MODEL_FORMATS)}, got {model_format!r}")
    directory = Path(directory)
    masks = full_masks(pruner, comm) if pruner.sites else {}
    weights = {f"{name}.weight": name for name in masks}
    state = {}
    for name, tensor in iter_full_parameters(built.pretrained, keep=is_main):
        if name.endswith(".scores"):
            continue
        if is_main:
            if name in weights:
                tensor = tensor.reshape(-1).masked_fill(~masks[weights[name]], 0).view_as(tensor)
            state[name] = tensor
    calibration = calibration_values(built.model)
    report = None
    if is_main:
        persistent = set(built.pretrained.state_dict().keys())
        for name, buffer in built.pretrained.named_buffers():
            if name in persistent:
                state[name] = buffer.detach().to("cpu", copy=True)
        if calibration is not None:  # before either format: the head is dense in both
            fold_calibration(built.pretrained, state, built.model.word_ids, **calibration)
        report = sparsity_report(pruner.sites, masks) if pruner.sites else None
        if model_format == "compressed" and report is not None:
            save_compressed_model(built.pretrained, state, directory, [s.name for s in pruner.sites],
                                  report["remaining"])
        else:
            if model_format == "compressed":
                log.warning("nothing is pruned in this run: the model is written dense")
            built.pretrained.save_pretrained(directory, state_dict=state)
        built.tokenizer.save_pretrained(directory)
        if hasattr(built.model, "word_ids"):
            (directory / LABEL_WORDS_FILE).write_text(json.dumps(
                {"label_word_ids": built.model.word_ids, "position": 0, "regression": built.model.regression,
                 "calibration_folded_in": calibration}))
        if report is not None:
            (directory / "sparsity.json").write_text(json.dumps(report, indent=1))
        log.info("pruned model written to %s (%s)", directory, model_format)
    dist.barrier()
    return report


def prunable_weights_digest(model: torch.nn.Module, sites: Sequence[Site], keep: bool = True) -> str | None:
    """SHA-256 of the prunable weights (fp32, in site order). All ranks call under ZeRO-3."""
    wanted = {f"{s.name}.weight" for s in sites}
    digest = hashlib.sha256()
    found = {}
    for name, tensor in iter_full_parameters(model, keep=keep):
        if name in wanted and keep:
            found[name] = tensor
    if not keep:
        return None
    for site in sites:
        tensor = found[f"{site.name}.weight"].contiguous()
        digest.update(site.name.encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def export_mask_artifact(built, pruner, directory: Path, comm: Communicator, is_main: bool, base: str,
                         seed: int) -> None:
    """Write the masks (1 bit per prunable weight) and what identifies the base model. All ranks call."""
    directory = Path(directory)
    masks = full_masks(pruner, comm)
    digest = prunable_weights_digest(built.pretrained, pruner.sites, keep=is_main)
    calibration = calibration_values(built.model)
    if is_main:
        directory.mkdir(parents=True, exist_ok=True)
        save_file({name: PackedMask.pack(mask).bits.cpu() for name, mask in masks.items()},
                  str(directory / MASK_FILE))
        meta = {"base_model": base, "base_class": type(built.pretrained).__name__, "weights_sha256": digest,
                "seed": seed, "sites": {s.name: {"shape": list(s.shape), "type": s.kind} for s in pruner.sites},
                "label_word_ids": getattr(built.model, "word_ids", None), "label_word_calibration": calibration,
                "remaining": sparsity_report(pruner.sites, masks)["remaining"]}
        (directory / MASK_META).write_text(json.dumps(meta, indent=1))
        log.info("mask artifact (%d KiB) written to %s", (directory / MASK_FILE).stat().st_size // 1024, directory)
    dist.barrier()


class BaseModelMismatch(ValueError):
    """The base model given to a mask artifact is not the one it was learned on."""


def load_mask_artifact(directory: str | Path, base: str | None = None) -> torch.nn.Module:
    """The pruned model: the base model (the artifact's own, or ``base``) with the mask applied.

    Raises :class:`BaseModelMismatch` if the base model's prunable weights differ from those the mask
    was learned on. Single process, no DeepSpeed.
    """
    import transformers

    from sparse_dist.models.build import resolve_model_source
    from sparse_dist.pruning.sites import find_sites

    directory = Path(directory)
    meta = json.loads((directory / MASK_META).read_text())
    source = resolve_model_source(base or meta["base_model"])
    model_class = getattr(transformers, meta["base_class"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(meta["seed"])  # heads the checkpoint lacks are initialised as in training
        model = model_class.from_pretrained(source)
    sites = [s for s in find_sites(model) if s.name in meta["sites"]]
    if [s.name for s in sites] != list(meta["sites"]):
        raise BaseModelMismatch(f"{source}: its prunable matrices are not those of the mask in {directory}")
    digest = prunable_weights_digest(model, sites)
    if digest != meta["weights_sha256"]:
        raise BaseModelMismatch(f"{source} is not the base model of the mask in {directory}: its prunable weights "
                                f"hash to {digest[:12]}..., the mask was learned on {meta['weights_sha256'][:12]}...")
    packed = load_file(str(directory / MASK_FILE))
    with torch.no_grad():
        for site in sites:
            weight = model.get_submodule(site.name).weight
            mask = PackedMask(packed[site.name], weight.numel()).unpack().view_as(weight)
            weight.masked_fill_(~mask, 0)
        if meta.get("label_word_calibration"):
            fold_calibration(model, dict(model.named_parameters()), meta["label_word_ids"],
                             **meta["label_word_calibration"])
    return model


class NotAnExport(ValueError):
    """A path that holds neither an exported model nor a mask artifact (the message names it)."""


@dataclass
class UnpackedExport:
    """An export as a directory that transformers' ``from_pretrained`` reads, and what else it needs."""

    directory: Path
    """Dense transformers model and tokenizer: the export itself, or a copy decompressed or rebuilt."""
    form: str
    """``dense``, ``compressed`` (compressed-tensors' sparse-bitmask) or ``mask`` (base model + mask artifact)."""
    label_word_ids: list[int] | None
    """Vocabulary ids the label-word head reads (SMP on an encoder); None for any other head."""


def _compression_format(config_file: Path) -> str | None:
    """The sparsity format compressed-tensors recorded in ``config.json`` (None: a dense model)."""
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as error:
        raise NotAnExport(f"{config_file}: not a readable model config ({error})") from None
    sparsity = (config.get("quantization_config") or {}).get("sparsity_config") or {}
    return sparsity.get("format")


def _write_plain_model(model: torch.nn.Module, directory: Path) -> None:
    """``config.json`` and ``model.safetensors`` that ``from_pretrained`` reads, written on every rank that
    calls this. (transformers' ``save_pretrained`` writes on rank 0 only once a process group exists, and an
    evaluation may unpack its model on every rank of one.) Tied weights are written under each name."""
    model.config.save_pretrained(directory)
    seen, state = set(), {}
    for name, tensor in model.state_dict().items():
        shared = tensor.data_ptr() in seen
        seen.add(tensor.data_ptr())
        state[name] = tensor.detach().clone() if shared else tensor.detach().contiguous()
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})


def unpack_export(path: str | Path, base: str | None, scratch: Path) -> UnpackedExport:
    """Make ``path`` loadable by ``from_pretrained``: what :func:`export_pruned_model` wrote (dense, or
    compressed, then decompressed by compressed-tensors into ``scratch``) or what
    :func:`export_mask_artifact` wrote (rebuilt from ``base``, default the artifact's own base model, by
    :func:`load_mask_artifact` and saved into ``scratch`` with the base model's tokenizer).

    Raises :class:`NotAnExport` naming the path when it is neither, and :class:`BaseModelMismatch` when
    the base model is not the one the mask was learned on. Single process, no DeepSpeed.
    """
    path, scratch = Path(path), Path(scratch)
    if not path.is_dir():
        raise NotAnExport(f"{path}: no such directory")
    if (path / MASK_META).is_file():
        from transformers import AutoTokenizer

        from sparse_dist.models.build import resolve_model_source

        meta = json.loads((path / MASK_META).read_text())
        source = resolve_model_source(base or meta["base_model"])
        try:
            model = load_mask_artifact(path, base)
            tokenizer = AutoTokenizer.from_pretrained(source)
        except OSError as error:
            first = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
            raise NotAnExport(f"{source}: cannot load the base model of the mask in {path}: {first}") from None
        _write_plain_model(model, scratch)
        tokenizer.save_pretrained(scratch)
        return UnpackedExport(scratch, "mask", meta.get("label_word_ids"))
    if not (path / "config.json").is_file():
        raise NotAnExport(f"{path}: not an exported model (no config.json) nor a mask artifact (no {MASK_META})")
    label_words = path / LABEL_WORDS_FILE
    word_ids = json.loads(label_words.read_text())["label_word_ids"] if label_words.is_file() else None
    form = _compression_format(path / "config.json")
    if form is None:
        return UnpackedExport(path, "dense", word_ids)
    from sparse_dist.pruning.compressed import COMPRESSED_FORMAT, load_compressed_model

    if form != COMPRESSED_FORMAT:
        raise NotAnExport(f"{path}: compressed as {form!r}; only {COMPRESSED_FORMAT!r} exports can be read")
    for item in path.iterdir():  # the tokenizer, label_words.json, sparsity.json; not the compressed weights
        if item.is_file() and ".safetensors" not in item.name and item.name != "config.json":
            shutil.copy2(item, scratch / item.name)
    try:
        model = load_compressed_model(path)
    except ImportError:
        raise NotAnExport(f"{path}: a compressed export; reading it needs compressed-tensors >= 0.12, < 0.14 "
                          "(pip install 'sparse-dist[compressed]')") from None
    _write_plain_model(model, scratch)
    return UnpackedExport(scratch, "compressed", word_ids)
