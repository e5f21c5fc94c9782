"""An LM head computed vocabulary-parallel from its ZeRO-3 partitions, without gathering the table.

An LM head's weight is the vocabulary table, ``(V, d)``: tied to the word embeddings in T5 and GPT-2
(126 MiB on t5-large), or its own. Gathering it for every forward, as ZeRO-3 does before running the
head, would put more than a transformer block on the device. :func:`apply_vocab_parallel_head` makes the
head compute, on every rank, the logits of the vocabulary rows its own partition holds, for the tokens of
every rank, and send each rank its share (the vocabulary-parallel output layer of Megatron-LM, Shoeybi et
al. 2019, with the partitions ZeRO-3 already has and different tokens on every rank):

1. every rank's hidden states are all-gathered (``tokens x d``, a few MiB), each rank's buffer carrying
   the first elements of its partition, those that finish the previous rank's last row (ZeRO-3 cuts the
   flattened table into equal pieces, not at row boundaries; a row belongs to the rank that holds its
   first element);
2. each rank computes ``hidden_j @ W[rows]^T`` for every rank j's tokens separately, over its rows in
   chunks of at most ``max_chunk_bytes`` of weight (a view of the partition on a CPU host; the bytes
   brought to the accelerator on a GPU machine);
3. one all-to-all delivers each rank the ``(its tokens x rows)`` slices of every rank; concatenated in
   vocabulary order they are its full ``(..., V)`` logits.

The arithmetic of every logit is the gathered head's: the same dot product of the same row with the same
hidden state, by the same matrix product over the same tokens (only the vocabulary columns are split);
the tests check it bit for bit. The one difference that remains possible: a BLAS may pick another kernel
for a narrower product (chunks of a few rows), whose sums round differently, within the fp32 dot-product
bound ``|error| <= d * 2^-24 * sum_k |h_k w_k|`` (Higham, Accuracy and Stability of Numerical Algorithms,
3.1), a relative error of ~1e-5 of the largest terms at d = 1024. Frozen models only (no gradient).
"""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist
import torch.nn.functional as F

from sparse_dist.distributed.block_fetch import remove_deepspeed_forward_hooks
from sparse_dist.distributed.zero_layout import ceil_div


def row_range(rank: int, per_rank: int, rows: int, dim: int) -> tuple[int, int]:
    """Rows ``[first, end)`` of a ``(rows, dim)`` table that ``rank`` computes: those whose first element
    lies in its ZeRO-3 partition, elements ``[rank * per_rank, (rank + 1) * per_rank)`` of the flat table."""
    first = min(rows, ceil_div(rank * per_rank, dim))
    return first, max(first, min(rows, ceil_div((rank + 1) * per_rank, dim)))


def apply_vocab_parallel_head(model: torch.nn.Module, max_chunk_bytes: int) -> torch.nn.Linear | None:
    """Make the model's LM head (``get_output_embeddings()``, a ``Linear`` with a ZeRO-3 partitioned
    weight) compute its logits vocabulary-parallel, reading no more than ``max_chunk_bytes`` of the table
    at a time (at least one row); return it, or None if the model has no such head. Its bias, if any
    (``V`` elements), is gathered for the forward. Call after ``deepspeed.initialize``; all ranks call, and
    then every forward is collective. Frozen models only. Stage 3.

    Raises ValueError if a partition is smaller than a row (a row would span three ranks)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, torch.nn.Linear) or not hasattr(head.weight, "ds_id"):
        return None
    rows, dim = head.weight.ds_shape
    if head.weight.ds_tensor.ds_numel < dim:
        raise ValueError(f"vocabulary-parallel head: a partition of {head.weight.ds_tensor.ds_numel} elements "
                         f"is shorter than a row of {dim}")
    remove_deepspeed_forward_hooks(head)
    chunk_rows = max(1, max_chunk_bytes // (dim * head.weight.element_size()))
    # The parameters are bound here, not read as head.weight in the forward: DeepSpeed intercepts that read
    # of a partitioned parameter and gathers it.
    head.forward = functools.partial(_logits, head.weight, head.bias, chunk_rows)
    return head


@torch.no_grad()
def _logits(weight: torch.nn.Parameter, bias: torch.nn.Parameter | None, chunk_rows: int,
            hidden: torch.Tensor) -> torch.Tensor:
    world, rank = dist.get_world_size(), dist.get_rank()
    rows, dim = weight.ds_shape
    per_rank = weight.ds_tensor.ds_numel
    partition = weight.ds_tensor.view(-1)
    start = rank * per_rank
    length = max(0, min(per_rank, rows * dim - start))
    device, dtype = hidden.device, partition.dtype
    flat = hidden.reshape(-1, dim)
    tokens = flat.shape[0]

    counts = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world)]
    dist.all_gather(counts, torch.tensor([tokens], device=device))
    counts = [int(c.item()) for c in counts]
    longest = max(counts)
    # This rank's hidden states, then the head of its partition that finishes the previous rank's last row.
    lead = min(length, (-start) % dim)
    mine = torch.zeros(longest * dim + dim, dtype=dtype, device=device)
    mine[:tokens * dim] = flat.reshape(-1).to(dtype)
    mine[longest * dim:longest * dim + lead] = partition[:lead].to(device)
    every = torch.empty(world * mine.numel(), dtype=dtype, device=device)
    dist.all_gather_into_tensor(every, mine)
    every = every.view(world, -1)

    first, end = row_range(rank, per_rank, rows, dim)
    owned = end - first
    send = torch.empty(sum(counts) * owned, dtype=dtype, device=device)  # rank j's (tokens_j x owned), in rank order
    sends = list(torch.split(send, [c * owned for c in counts]))
    sends = [s.view(c, owned) for s, c in zip(sends, counts)]
    full_bias = _gathered(bias) if bias is not None else None
    for a in range(first, end, chunk_rows):
        b = min(end, a + chunk_rows)
        lo, hi = a * dim - start, b * dim - start
        if hi <= length:
            w = partition[lo:hi]
        else:  # the last row runs into the next rank's partition
            next_lead = every[rank + 1, longest * dim:longest * dim + hi - length]
            w = torch.cat([partition[lo:length].to(device), next_lead])
        w = w.to(device).view(b - a, dim)
        b_slice = full_bias[a:b] if full_bias is not None else None
        for j in range(world):
            sends[j][:, a - first:b - first] = F.linear(every[j, :counts[j] * dim].view(counts[j], dim), w, b_slice)

    spans = [row_range(k, per_rank, rows, dim) for k in range(world)]
    received = torch.empty(tokens * rows, dtype=dtype, device=device)
    dist.all_to_all_single(received, send,
                           [tokens * (e - f) for f, e in spans], [counts[j] * owned for j in range(world)])
    pieces, offset = [], 0
    for f, e in spans:
        pieces.append(received[offset:offset + tokens * (e - f)].view(tokens, e - f))
        offset += tokens * (e - f)
    return torch.cat(pieces, dim=1).view(*hidden.shape[:-1], rows)


def _gathered(param: torch.nn.Parameter) -> torch.Tensor:
    """A small partitioned parameter (a head's bias), whole, as a tensor of its own."""
    from deepspeed import zero

    with zero.GatheredParameters([param]):
        return param.data.clone()
