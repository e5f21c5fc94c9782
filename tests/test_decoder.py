"""Decoder-only LMs: GPT-2 (``Conv1D``, weights stored ``[in, out]``) and Llama, pruned as causal LMs.

The unit test checks the orientation: a masked ``Conv1D`` computes ``x @ (W * M) + b`` with ``M`` in the
stored shape. The distributed tests prune a tiny GPT-2 (WebNLG, text generation) and a tiny Llama (SST-2
as text) on 2 gloo ranks under ZeRO-2 and ZeRO-3: exact kept counts, the same masks on every rank,
evaluation by generation, and, for GPT-2, an export that loads with ``from_pretrained`` and gives the
pruned model's logits, its weights the dense ones times the mask in the stored orientation.
"""

import copy

import torch
from transformers import GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

from sparse_dist.models.tiny import tiny_checkpoint
from sparse_dist.pruning.learned import replace_with_masked
from sparse_dist.pruning.sites import find_sites


def test_masked_conv1d_uses_the_mask_in_the_stored_orientation():
    dense = GPT2LMHeadModel.from_pretrained(tiny_checkpoint("tiny-gpt2")).eval()
    sites = find_sites(dense)
    assert sites and all(isinstance(dense.get_submodule(s.name), Conv1D) for s in sites)
    assert sites[0].kind == "attn.qkv" and sites[0].shape == (32, 96)  # (in, out), as stored
    masked = copy.deepcopy(dense)
    layers = replace_with_masked(masked, sites, score_init=0.0)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for site, layer in zip(sites, layers):
            layer.fixed_mask = torch.rand(site.shape, generator=generator) < 0.5
            dense.get_submodule(site.name).weight.mul_(layer.fixed_mask)  # what the export folds in
    x = torch.randn(3, 5, 32, generator=generator)
    layer = layers[0]
    expected = x @ (layer.weight * layer.fixed_mask) + layer.bias
    assert torch.allclose(layer(x), expected, atol=1e-6)
    ids = torch.randint(0, dense.config.vocab_size, (2, 7), generator=generator)
    with torch.no_grad():
        assert torch.allclose(masked(ids).logits, dense(ids).logits, atol=1e-5)
