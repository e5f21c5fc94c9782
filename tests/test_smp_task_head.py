"""SMP where no label words exist: NER and QA train the new task head and the mask scores, nothing else.

Tiny BERT on slices of the real CoNLL-2003 and SQuAD files, 2 ranks, ZeRO-2 and ZeRO-3, SMP-L to 40%
remaining: every encoder weight (embeddings, norms, prunable and unprunable matrices) is bit for bit what it
was before training, every task-head parameter (``classifier``, ``qa_outputs``) has changed, each matrix
keeps exactly round(0.4 x its size) weights, and both ranks hold the same masks. SMP on GLUE keeps its
frozen label-word head (tests/test_seams.py, tests/test_training_distributed.py).
"""

import hashlib

import pytest
import torch
import torch.distributed as dist

from harness import run_distributed
from runs import tiny_config
from sparse_dist.distributed.env import init_distributed
from sparse_dist.distributed.gather import iter_full_parameters
from sparse_dist.pruning.export import full_masks
from sparse_dist.pruning.schedule import kept_count

pytestmark = [pytest.mark.distributed, pytest.mark.slow]  # about 2 minutes on 2 shared cores: 4 runs

CASES = (("conll2003", 2), ("conll2003", 3), ("squad", 2), ("squad", 3))
DATA = {"conll2003": {"max_train_examples": 32, "max_eval_examples": 4},
        "squad": {"max_seq_length": 128, "doc_stride": 32, "max_train_examples": 12, "max_eval_examples": 2}}
HEADS = {"conll2003": ["classifier.bias", "classifier.weight"], "squad": ["qa_outputs.bias", "qa_outputs.weight"]}
TARGET = 0.4


def smp_runs(root: str) -> dict:
    from sparse_dist.trainer import Trainer

    env = init_distributed()
    out = {}
    for task, stage in CASES:
        config = tiny_config(f"{root}/{task}_z{stage}", world_size=env.world_size, task=task, data=DATA[task],
                             training={"global_batch_size": 8, "micro_batch_size": 2, "max_steps": 4},
                             zero={"stage": stage},
                             pruning={"method": "smp", "scope": "local", "target_remaining": TARGET,
                                      "final_warmup_steps": 1, "score_lr": 1e-2})
        trainer = Trainer(config, env)
        model = trainer.engine.module
        before = dict(iter_full_parameters(model))
        trainer.train()
        after = dict(iter_full_parameters(model))
        head = set(trainer.built.task_head)
        masks = full_masks(trainer.pruner, trainer.comm)
        sites = trainer.pruner.sites
        weights = [n for n in before if not n.endswith(".scores") and n not in head]
        out[f"{task}/z{stage}"] = {
            "head": sorted(head), "head_model": config.model.head,
            "trainable": sorted(n for n, p in model.named_parameters()
                                if p.requires_grad and not n.endswith(".scores")),
            "weights": len(weights), "weights_changed": [n for n in weights if not torch.equal(before[n], after[n])],
            "head_unchanged": [n for n in head if torch.equal(before[n], after[n])],
            "scores_changed": sum(not torch.equal(before[n], after[n]) for n in before if n.endswith(".scores")),
            "kept": [int(masks[s.name].sum()) for s in sites], "sizes": [s.numel for s in sites],
            "digest": hashlib.sha256(b"".join(masks[s.name].numpy().tobytes() for s in sites)).hexdigest()}
        dist.barrier()
    return out


def test_smp_trains_only_scores_and_the_new_task_head_on_two_ranks_zero2_zero3(tmp_path):
    ranks = run_distributed(smp_runs, 2, str(tmp_path))
    for task, stage in CASES:
        key = f"{task}/z{stage}"
        for got in (rank[key] for rank in ranks):
            assert got["head_model"] == "classifier", key
            assert got["head"] == got["trainable"] == HEADS[task], f"{key}: what trains besides the scores"
            # tiny BERT: 5 embedding tensors, 16 per layer (6 matrices, 6 biases, 2 norms) in 2 layers
            assert got["weights"] == 37 and got["weights_changed"] == [], f"{key}: encoder weights moved"
            assert got["head_unchanged"] == [], f"{key}: the task head did not train"
            assert got["scores_changed"] == len(got["sizes"]) == 12, f"{key}: every matrix's scores train"
            assert got["kept"] == [kept_count(TARGET, n) for n in got["sizes"]], f"{key}: kept counts"
        assert ranks[0][key]["digest"] == ranks[1][key]["digest"], f"{key}: masks differ across ranks"
