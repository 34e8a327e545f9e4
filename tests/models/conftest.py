"""Small datasets for the model tests: an InputSpec, a matching random batch."""
from __future__ import annotations

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from models.batch import MultiTaskBatch
from models.inputs import InputSpec, SparseFeature, Task


def input_spec(num_tasks: int = 3, *, dense_dim: int = 3, sparse: bool = True, regression: bool = False) -> InputSpec:
    """num_tasks binary tasks t0.. (the last one regression when `regression`), two id features."""
    features = (SparseFeature("a", 20, 4), SparseFeature("b", 11, 4, pooling="mean")) if sparse else ()
    tasks = tuple(Task(f"t{k}", "regression" if regression and k == num_tasks - 1 else "binary")
                  for k in range(num_tasks))
    return InputSpec(dense_dim=dense_dim, sparse_features=features, tasks=tasks)


def random_batch(spec: InputSpec, batch_size: int = 16, seed: int = 0) -> MultiTaskBatch:
    """Ids with 0..2 values per bag (empty bags included); binary labels, regression targets ~ N(0,1)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 3, (len(spec.sparse_features) * batch_size,), generator=g, dtype=torch.int32)
    values = torch.cat([torch.randint(0, f.num_embeddings, (int(n),), generator=g)
                        for f, n in zip(spec.sparse_features, lengths.view(-1, batch_size).sum(1))]) \
        if spec.sparse_features else torch.empty(0, dtype=torch.long)
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=spec.sparse_keys, values=values, lengths=lengths)
    binary = torch.tensor([t.kind == "binary" for t in spec.tasks])
    labels = torch.where(binary, torch.randint(0, 2, (batch_size, len(spec.tasks)), generator=g).float(),
                         torch.randn(batch_size, len(spec.tasks), generator=g))
    return MultiTaskBatch(dense=torch.randn(batch_size, spec.dense_dim, generator=g), sparse_features=kjt,
                          labels=labels, masks=torch.ones(batch_size, len(spec.tasks)),
                          weights=torch.ones(batch_size), keys=torch.arange(batch_size))


@pytest.fixture(autouse=True)
def one_intra_op_thread():
    """Model tests use tiny tensors: one intra-op thread avoids OpenMP stalls on a busy 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
