"""Decoder-only LMs: GPT-2 (``Conv1D``, weights stored ``[in, out]``) and Llama, pruned as causal LMs.

The unit test checks the orientation: a masked ``Conv1D`` computes ``x @ (W * M) + b`` with ``M`` in the
stored shape. The distributed tests prune a tiny GPT-2 (WebNLG, text generation) and a tiny Llama (SST-2
as text) on 2 gloo ranks under ZeRO-2 and ZeRO-3: exact kept counts, the same masks on every rank,
evaluation by generation, and, for GPT-2, an export that loads with ``from_pretrained`` and gives the
pruned model's logits, its weights the dense ones times the mask in the stored orientation.
"""

import copy

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

from harness import run_distributed
from runs import tiny_config
from sparse_dist.distributed.env import init_distributed
from sparse_dist.distributed.gather import iter_full_parameters
from sparse_dist.models.tiny import tiny_checkpoint
from sparse_dist.pruning.export import full_masks
from sparse_dist.pruning.learned import replace_with_masked
from sparse_dist.pruning.schedule import kept_count
from sparse_dist.pruning.sites import find_sites
from sparse_dist.trainer import Trainer

REMAINING = 0.4


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


def test_distillation_of_a_causal_lm_pairs_position_t_with_label_t_plus_1():
    from sparse_dist.distill.build import NextTokenDistillation
    from sparse_dist.tasks import get_task

    model = GPT2LMHeadModel.from_pretrained(tiny_checkpoint("tiny-gpt2")).eval()
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, model.config.vocab_size, (2, 9), generator=generator)
    labels = ids.clone()
    labels[:, :4] = -100  # the prompt
    with torch.no_grad():
        outputs = model(input_ids=ids, labels=labels)
    kd = NextTokenDistillation(get_task("webnlg").type)
    losses = kd.distill_losses(kd.distill_logits(outputs), outputs.logits, labels, False, 1.0, 0.0, 2.0)
    assert torch.allclose(losses["ce"], outputs.loss, atol=1e-6)  # the model's own (shifted) loss
    assert losses["kd"].abs() < 1e-6  # a teacher equal to the student


CASES = {"gpt2-webnlg": ("tiny-gpt2", "webnlg", {"method": "movement", "scope": "per_type"}),
         "llama-sst2": ("tiny-llama", "sst2", {"method": "magnitude", "scope": "global"})}


def prune_under_stages(model: str, task: str, pruning: dict, root: str) -> dict:
    """On every rank, for ZeRO-2 and ZeRO-3: prune to REMAINING, evaluate, export; the masks, the dev
    predictions and the pruned model's logits on one training batch."""
    env = init_distributed()
    out = {}
    for stage in (2, 3):
        config = tiny_config(f"{root}/z{stage}", world_size=env.world_size, model=model, task=task,
                             zero={"stage": stage},
                             training={"max_steps": 4, "global_batch_size": 4, "micro_batch_size": 2},
                             data={"max_eval_examples": 5, "max_target_length": 16},
                             eval={"max_new_tokens": 10},
                             pruning={**pruning, "target_remaining": REMAINING},
                             checkpoint={"save_final_model": True})
        trainer = Trainer(config, env)
        result = trainer.train()
        masks = full_masks(trainer.pruner, trainer.comm)
        batch = trainer.task_data.collator([trainer.task_data.train[i] for i in range(2)])
        module = trainer.engine.module.eval()
        with torch.no_grad():
            logits = module(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
        dense = dict(iter_full_parameters(trainer.built.pretrained, keep=env.is_main))
        out[stage] = {"masks": masks, "sites": [(s.name, s.kind, s.numel) for s in trainer.pruner.sites],
                      "predictions": trainer.evaluator.predict(module, trainer.task_data.dev[0]),
                      "final": result.final_metrics, "batch": batch, "logits": logits,
                      "weights": {f"{s.name}.weight": dense[f"{s.name}.weight"] for s in trainer.pruner.sites}
                      if env.is_main else None}
        dist.barrier()
    return out


@pytest.mark.distributed
@pytest.mark.slow  # 1-2 minutes per model: two ZeRO stages on 2 ranks
@pytest.mark.parametrize("case", CASES)
def test_decoder_prunes_end_to_end_on_two_ranks(case, tmp_path):
    model, task, pruning = CASES[case]
    ranks = run_distributed(prune_under_stages, 2, model, task, pruning, str(tmp_path))
    for stage in (2, 3):
        first, second = ranks[0][stage], ranks[1][stage]
        assert first["masks"].keys() == second["masks"].keys()
        for name in first["masks"]:
            assert torch.equal(first["masks"][name], second["masks"][name]), f"ZeRO-{stage} {name}"
        assert first["predictions"] == second["predictions"]
        assert len(first["predictions"]) == 5 and all(isinstance(p, (str, int)) for p in first["predictions"])
        kept = {name: int(mask.sum()) for name, mask in first["masks"].items()}
        sites = first["sites"]
        if pruning["scope"] == "global":
            total = sum(numel for _, _, numel in sites)
            assert sum(kept.values()) == kept_count(REMAINING, total)
        else:  # per type: each type keeps its own share
            for kind in {k for _, k, _ in sites}:
                same = [(name, numel) for name, k, numel in sites if k == kind]
                assert sum(kept[name] for name, _ in same) == kept_count(REMAINING, sum(n for _, n in same)), kind
        check_export(tmp_path / f"z{stage}" / "final" / "model", first)


def check_export(model_dir, run: dict) -> None:
    """The exported weights are the dense (trained) ones times the mask, in the stored orientation, and the
    exported model, loaded by transformers alone, gives the pruned model's logits."""
    exported = load_file(str(model_dir / "model.safetensors"))
    for name, mask in run["masks"].items():
        weight = exported[f"{name}.weight"]
        dense = run["weights"][f"{name}.weight"]
        assert weight.shape == dense.shape
        assert torch.equal(weight, dense * mask.view(dense.shape)), name
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    batch = {k: v for k, v in run["batch"].items() if k != "labels"}
    with torch.no_grad():
        logits = model(**batch).logits.float()
    assert torch.allclose(logits, run["logits"], atol=1e-5)
