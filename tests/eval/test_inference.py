"""The shared inference loop (pipeline/runtime/inference.py) in a real 1-rank gloo DMP."""
from __future__ import annotations

import threading

from pipeline.runtime.inference import run_inference
from tests.train.test_optimizer import _batch, _setup, ctx  # noqa: F401  (ctx is a fixture)


def test_inference_forwards_every_batch_and_leaves_no_loading_thread_behind(ctx):  # noqa: F811
    dmp, _ = _setup(ctx, "table_wise")
    before = {t.ident for t in threading.enumerate()}
    outputs: list = []
    steps = run_inference(dmp, iter([_batch(), _batch(), _batch()]), ctx, outputs.append)
    assert steps == 3 and len(outputs) == 3
    # TorchRec's batch-copy thread must be gone (its C thread state deleted) before the loop
    # returns: the next DataLoader forks its workers right after a validation.
    leftover = [t for t in threading.enumerate() if t.ident not in before]
    assert not leftover, leftover
    assert dmp.training  # the mode is restored
