"""The offloaded teacher's forward: a block per all-gather, the next one prefetched, and an LM head computed
vocabulary-parallel from its partitions, with the logits (and so the KD loss) of the gathered head."""

import copy

import deepspeed
import pytest
import torch
import torch.nn.functional as F

from harness import run_distributed
from runs import tiny_config
from sparse_dist.distill.losses import adaptive_kd
from sparse_dist.distill.teacher import teacher_deepspeed_config
from sparse_dist.distributed.block_fetch import block_bytes, find_blocks
from sparse_dist.distributed.comm_count import CollectiveCounter
from sparse_dist.distributed.env import init_distributed
from sparse_dist.distributed.gather import track_gathered_peak
from sparse_dist.distributed.vocab_parallel import apply_vocab_parallel_head, row_range
from sparse_dist.trainer import Trainer

pytestmark = pytest.mark.distributed


def test_rows_are_split_where_their_first_element_lies():
    # A 7 x 5 table over 2 ranks: 18 elements each; row 3 (elements 15-19) starts in rank 0's partition.
    assert [row_range(r, 18, 7, 5) for r in range(2)] == [(0, 4), (4, 7)]
    # Over 3 ranks, 12 elements each: rows 0-2 start in rank 0 (row 2 runs into rank 1), row 3 at 15 and
    # row 4 at 20 in rank 1, rows 5 and 6 in rank 2.
    assert [row_range(r, 12, 7, 5) for r in range(3)] == [(0, 3), (3, 5), (5, 7)]


class ToyLM(torch.nn.Module):
    """Just an LM head with a bias, ``(V=7, d=5)``: rows cross partition boundaries at 2 and 3 ranks."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(5, 7, bias=True)

    def get_output_embeddings(self):
        return self.head


def toy_head() -> dict:
    env = init_distributed()
    torch.manual_seed(0)
    model = ToyLM()
    reference = copy.deepcopy(model).eval()
    config = teacher_deepspeed_config({"train_micro_batch_size_per_gpu": 1}, on_gpu=False)
    engine, *_ = deepspeed.initialize(model=model, config=config)
    head = apply_vocab_parallel_head(engine.module, max_chunk_bytes=2 * 5 * 4)  # two rows at a time
    torch.manual_seed(10 + env.rank)
    hidden = torch.randn(env.rank + 1, 3, 5)  # every rank has a different number of tokens
    with CollectiveCounter() as counted:
        logits = head(hidden)
    return {"shape": tuple(logits.shape), "logits": logits, "want": reference.head(hidden).detach(),
            "calls": counted.calls, "partitioned": head.weight.ds_tensor.numel()}


@pytest.mark.parametrize("world_size", [2, 3])
def test_vocab_parallel_head_with_a_bias_gives_the_whole_heads_logits(world_size):
    for rank, result in enumerate(run_distributed(toy_head, world_size)):
        assert result["shape"] == (rank + 1, 3, 7)
        assert result["partitioned"] == -(-35 // world_size)  # the table stayed in its partitions
        # Two-row chunks are narrower products than the whole head's: equal to the rounding of a 5-term sum.
        torch.testing.assert_close(result["logits"], result["want"], rtol=1e-6, atol=1e-6)
        # counts, hidden states (with the partitions' leading elements), the bias, the all-to-all
        assert result["calls"] == 4


def t5_teacher(root: str) -> dict:
    """A tiny T5 teacher (ZeRO-3 partitions over the ranks): its logits against the gathered head's, what
    one forward gathers and how many collectives it runs."""
    env = init_distributed()
    config = tiny_config(root, world_size=env.world_size, model="tiny-t5", task="rte", zero={"stage": 2},
                         training={"global_batch_size": 4, "micro_batch_size": 2, "max_steps": 3},
                         pruning={"method": "pins", "scope": "global", "target_remaining": 0.5, "window_steps": 2,
                                  "prune_every_steps": 2, "final_warmup_steps": 1},
                         distill={"self_regularization": True})
    trainer = Trainer(config, env)
    trainer.distiller.on_evaluation(True)  # builds the teacher and copies the student into it
    teacher = trainer.distiller.self_teacher
    model, fetcher = teacher.model, teacher.fetcher
    head = model.get_output_embeddings()
    seen = {}
    head.register_forward_pre_hook(lambda module, args: seen.update(hidden=args[0].clone()))
    peak = track_gathered_peak(model)
    batch = trainer.task_data.collator([trainer.task_data.train[i] for i in range(2 * env.rank, 2 * env.rank + 2)])
    with CollectiveCounter() as counted:
        logits = teacher.outputs(batch).logits
    with deepspeed.zero.GatheredParameters([head.weight]):  # the gathered head, as DeepSpeed would run it
        gathered = F.linear(seen["hidden"], head.weight.data)
    student = trainer.engine.module.eval()
    with torch.no_grad():
        student_logits = student(**batch).logits
    loss = {key: adaptive_kd(student_logits, teacher_logits, batch["labels"], False, 2.0)
            for key, teacher_logits in (("vocab_parallel", logits), ("gathered", gathered))}
    blocks = find_blocks(model)
    return {"equal": bool(torch.equal(logits, gathered)), "student_equal": bool(torch.equal(logits, student_logits)),
            "loss_equal": all(torch.equal(loss["vocab_parallel"][k], loss["gathered"][k]) for k in loss["gathered"]),
            "blocks": len(blocks), "largest_block": max(map(block_bytes, blocks)),
            "params": {name: p.ds_numel * 4 for name, p in model.named_parameters()},
            "padding_bytes": sum(env.world_size * p.ds_tensor.ds_numel * 4 - p.ds_numel * 4
                                 for b in blocks for p in b.parameters()),
            "stats": vars(fetcher.stats).copy(), "loose": fetcher.loose, "peak": peak["bytes"],
            "peak_names": peak["names"], "calls": counted.calls, "by_op": dict(counted.by_op),
            "head_tied": head.weight is model.get_input_embeddings().weight}


def test_t5_teacher_gathers_a_block_at_a_time_and_never_its_vocabulary_table(tmp_path):
    for result in run_distributed(t5_teacher, 2, str(tmp_path)):
        assert result["head_tied"]
        # The vocabulary-parallel logits are the gathered head's, bit for bit, and so is the KD loss; the
        # teacher was just copied from the student, so they are the student's too.
        assert result["equal"] and result["loss_equal"] and result["student_equal"]
        stats, largest = result["stats"], result["largest_block"]
        table = result["params"]["shared.weight"]  # tied: the embeddings and the LM head
        # One all-gather per block (2 encoder + 2 decoder) and per module with parameters outside them (the
        # two final LayerNorms); nothing else is gathered.
        assert result["blocks"] == 4 and result["loose"] == 2
        assert stats["collectives"] == 4 + 2
        assert stats["gathered_bytes"] == sum(result["params"].values()) - table - sum(
            v for k, v in result["params"].items() if "relative_attention_bias" in k)
        # No gathered buffer larger than a block (with its partition padding), no more than two at once.
        assert stats["largest_buffer_bytes"] <= largest + result["padding_bytes"]
        assert stats["peak_live_bytes"] <= 2 * stats["largest_buffer_bytes"]
        assert stats["live_bytes"] == 0  # everything released when the forward returned
        assert 0 < result["peak"] <= largest and "shared.weight" not in result["peak_names"]
        # All collectives of the forward: the 6 all-gathers above; 3 per embedding lookup (token ids of the
        # encoder and the decoder, relative-position buckets of both stacks); 3 for the head (token counts,
        # hidden states, the all-to-all of the logits slices).
        assert result["calls"] == 6 + 3 * 4 + 3, result["by_op"]
