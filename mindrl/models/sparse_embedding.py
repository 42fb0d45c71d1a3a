"""The word embedding with a sparse weight gradient (`use_sparse_embedding_grad`; the backend's choice,
`Backend.sparse_embedding_grad`).

megatron's `VocabParallelEmbedding` looks tokens up with `F.embedding`, whose backward writes a dense
`[vocab/TP, hidden]` gradient: zeros for every row, then the looked-up rows added (155 MB at 151,936 x 256 fp32,
a fresh, page-faulted buffer every micro-batch), which DDP's hook then adds into `main_grad` whole. A micro-batch
touches a few hundred rows. With `sparse=True` the gradient holds those rows only, and the hook's
`main_grad.add_(grad)` adds just them: the same sums (in another order: fp32 rounding), deterministic on the CPU
(docs/benchmarks.md, issue 21: ~0.4 s of the 8 x 8 update).

`SparseGradVocabParallelEmbedding.forward` is megatron-core 0.16.1's `VocabParallelEmbedding.forward` (the pinned
version, setup.py) with `sparse=True` (and without `deterministic_mode`'s indexing, whose backward is dense
too); the class is swapped on the built module, so its parameters, state dict and DDP wiring stay megatron's.

May import: torch, megatron.core.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel.layers import VocabParallelEmbedding
from megatron.core.tensor_parallel.mappings import (reduce_from_tensor_model_parallel_region,
                                                    reduce_scatter_to_sequence_parallel_region)


class SparseGradVocabParallelEmbedding(VocabParallelEmbedding):
    """`VocabParallelEmbedding` whose weight gradient is a sparse tensor of the looked-up rows."""

    def forward(self, input_: torch.Tensor) -> torch.Tensor:
        if self.tp_group.size() > 1:
            input_mask = (input_ < self.vocab_start_index) | (input_ >= self.vocab_end_index)
            masked_input = input_.clone() - self.vocab_start_index
            masked_input[input_mask] = 0
        else:
            masked_input = input_
        output_parallel = F.embedding(masked_input, self.weight, sparse=True)
        if self.tp_group.size() > 1:
            output_parallel[input_mask, :] = 0.0
        if self.reduce_scatter_embeddings:
            output_parallel = output_parallel.transpose(0, 1).contiguous()  # [b s h] -> [s b h]
            return reduce_scatter_to_sequence_parallel_region(output_parallel, group=self.tp_group)
        return reduce_from_tensor_model_parallel_region(output_parallel, group=self.tp_group)


def use_sparse_embedding_grad(chunks: list[torch.nn.Module]) -> int:
    """Switch every megatron `VocabParallelEmbedding` in `chunks` (the word embedding on the first stage; an MTP
    block's on the last) to the sparse-gradient forward; returns how many were switched."""
    switched = 0
    for chunk in chunks:
        for module in chunk.modules():
            if type(module) is VocabParallelEmbedding:
                module.__class__ = SparseGradVocabParallelEmbedding
                switched += 1
    return switched


__all__ = ["SparseGradVocabParallelEmbedding", "use_sparse_embedding_grad"]
