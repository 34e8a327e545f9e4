"""The one inference loop, shared by validation during training and by `mtrec evaluate`.

TorchRec's EvalPipelineSparseDist overlaps the batch copy (background thread) and the embedding
input all-to-all with the forward. Every rank must run the same number of steps (the sharded
EBC's collectives would otherwise hang), so ranks with fewer local batches pad with batches whose
rows have weight 0 and mask 0: they change no metric.
"""
from __future__ import annotations

import itertools
import logging
import threading
from typing import Callable, Iterable, Iterator, Optional

import torch
import torch.distributed as dist
from torchrec.distributed.train_pipeline import EvalPipelineSparseDist

from models.batch import MultiTaskBatch
from pipeline.data.reader import ParquetBatchStream, make_loader, padding_batch
from pipeline.data.schema import DatasetSchema
from pipeline.runtime.distributed import DistContext, all_reduce_int

log = logging.getLogger(__name__)

OutputsFn = Callable[[dict], None]


def equal_steps(batches: Iterable[MultiTaskBatch], local_steps: int, padding: MultiTaskBatch,
                ctx: DistContext, max_steps: Optional[int] = None) -> tuple[Iterator[MultiTaskBatch], int]:
    """Pad this rank's batches to the global maximum step count (optionally capped)."""
    steps = all_reduce_int(local_steps, dist.ReduceOp.MAX, ctx.device)
    if max_steps is not None:
        steps = min(steps, max_steps)
    padded = itertools.chain(batches, itertools.repeat(padding))
    return itertools.islice(padded, steps), steps


def eval_batches(schema: DatasetSchema, paths: list[str], ctx: DistContext, *, batch_size: int, num_workers: int,
                 with_keys: bool, max_steps: Optional[int] = None) -> tuple[Iterator[MultiTaskBatch], int]:
    """This rank's batches of `paths` (every row exactly once across ranks, no shuffle), padded to
    the step count every rank runs."""
    stream = ParquetBatchStream(schema, paths, batch_size, rank=ctx.rank, world_size=ctx.world_size,
                                num_workers=num_workers, shuffle=False, with_keys=with_keys)
    return equal_steps(iter(make_loader(stream, num_workers)), stream.num_batches(), padding_batch(schema), ctx,
                       max_steps=max_steps)


def _wait_until_gone(thread: threading.Thread) -> None:
    """Block until `thread` has exited and CPython has deleted its thread state.

    A thread still exiting when the next epoch's DataLoader forks its workers can leave the child
    hung inside os.fork() (seen: a 2-rank census run stalled for good after a validation). Thread.join()
    cannot be used: TorchRec's DataLoadingThread shadows Thread._stop() with a bool flag, which
    join() calls. CPython releases `_tstate_lock` once the thread's state is deleted, which is what
    join() itself waits on.
    """
    lock = getattr(thread, "_tstate_lock", None)
    if lock is not None:
        lock.acquire()
        lock.release()


def run_inference(model: torch.nn.Module, batches: Iterator[MultiTaskBatch], ctx: DistContext,
                  on_outputs: OutputsFn) -> int:
    """Forward every batch without gradients, calling `on_outputs(outputs)` for each; returns steps.

    `model` is the DMP-wrapped MultiTaskModel; its training mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    # The pipeline needs an optimizer argument but never steps it in eval mode.
    pipeline = EvalPipelineSparseDist(model, torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0), ctx.device)
    steps = 0
    # no_grad, not inference_mode: gloo collectives fail inside inference_mode (pytorch#86830).
    with torch.no_grad():
        while True:
            try:
                outputs = pipeline.progress(batches)
            except StopIteration:
                break
            on_outputs(outputs)
            steps += 1
    pipeline.detach()  # restore the EBC's own forward for whoever uses the model next
    loading_thread = pipeline._batch_loader  # TorchRec keeps its batch-copy thread private
    pipeline.reset()  # asks that thread to stop, but does not wait for it
    if loading_thread is not None:
        _wait_until_gone(loading_thread)
    model.train(was_training)
    return steps
