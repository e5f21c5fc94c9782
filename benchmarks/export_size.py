"""Size on disk of the compressed export (compressed-tensors' sparse-bitmask) against the dense one.

    python benchmarks/export_size.py                         # all-MiniLM-L6-v2 at 50%, 10% and 3% remaining
    python benchmarks/export_size.py --remaining 0.5 0.2

The masks come from global magnitude selection over the prunable matrices, without training (the size
depends on the kept count, not on which weights are kept). Each model is written the way
``sparse-dist export`` writes it, dense (``save_pretrained``) and ``--format compressed``
(:func:`sparse_dist.pruning.compressed.save_compressed_model`); the compressed one is decompressed again
by compressed-tensors and checked bit for bit against the dense one. Writes
``benchmarks/results/export_size.json``; about a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from provenance import provenance
from sparse_dist.models.build import resolve_model_source
from sparse_dist.pruning.compressed import load_compressed_state_dict, save_compressed_model
from sparse_dist.pruning.sites import find_sites

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def magnitude_masked_state(model: torch.nn.Module, sites, remaining: float) -> dict[str, torch.Tensor]:
    """The state dict with the round(remaining x n) largest |W| over all prunable matrices kept, the rest 0."""
    weights = [model.get_submodule(s.name).weight.detach() for s in sites]
    flat = torch.cat([w.abs().reshape(-1) for w in weights])
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[torch.topk(flat, round(remaining * flat.numel())).indices] = True
    state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    offset = 0
    for site, weight in zip(sites, weights):
        mask = keep[offset:offset + weight.numel()].view_as(weight)
        state[f"{site.name}.weight"] = weight.masked_fill(~mask, 0)
        offset += weight.numel()
    return state


def bits(tensor: torch.Tensor) -> bytes:
    return tensor.contiguous().numpy().tobytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--remaining", type=float, nargs="+", default=[0.5, 0.1, 0.03])
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)  # the classifier head is new: seeded, like a run's
    model = AutoModelForSequenceClassification.from_pretrained(resolve_model_source(MODEL), num_labels=2)
    sites = find_sites(model)
    prunable = sum(s.numel for s in sites)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for remaining in args.remaining:
            state = magnitude_masked_state(model, sites, remaining)
            dense_dir, compressed_dir = Path(scratch, f"dense{remaining}"), Path(scratch, f"compressed{remaining}")
            model.save_pretrained(dense_dir, state_dict=state)
            save_compressed_model(model, state, compressed_dir, [s.name for s in sites], remaining)
            dense, back = load_file(str(dense_dir / "model.safetensors")), load_compressed_state_dict(compressed_dir)
            exact = sorted(back) == sorted(dense) and all(bits(back[k]) == bits(v) for k, v in dense.items())
            dense_bytes = (dense_dir / "model.safetensors").stat().st_size
            compressed_bytes = (compressed_dir / "model.safetensors").stat().st_size
            stored = load_file(str(compressed_dir / "model.safetensors"))
            names = {s.name for s in sites}
            site_bytes = sum(t.numel() * t.element_size() for k, t in stored.items() if k.rsplit(".", 1)[0] in names)
            rows.append({"remaining": remaining, "kept": round(remaining * prunable),
                         "dense_bytes": dense_bytes, "compressed_bytes": compressed_bytes,
                         "prunable_dense_bytes": prunable * model.dtype.itemsize,
                         "prunable_compressed_bytes": site_bytes,
                         "ratio": compressed_bytes / dense_bytes, "decompresses_bit_for_bit": exact})
            print(f"remaining {remaining:.0%}: dense {dense_bytes / 2**20:.1f} MiB, compressed "
                  f"{compressed_bytes / 2**20:.1f} MiB ({compressed_bytes / dense_bytes:.0%}), bit for bit: {exact}")
    report = {**provenance(), "model": MODEL, "dtype": str(model.dtype).removeprefix("torch."),
              "parameters": sum(p.numel() for p in model.parameters()), "prunable_weights": prunable,
              "masks": "global magnitude over the prunable matrices, no training", "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "export_size.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {RESULTS / 'export_size.json'}")


if __name__ == "__main__":
    main()
