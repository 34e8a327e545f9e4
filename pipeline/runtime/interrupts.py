"""Ctrl-C that waits for a checkpoint write to finish.

A KeyboardInterrupt raised inside torch.distributed.checkpoint is caught by DCP's own collective
wrapper and re-raised as a CheckpointException (a traceback, exit 1), and one raised inside
torch.save's zip writer can leave it broken ("unexpected pos ..."). Both were seen when Ctrl-C
landed during a save. So a save defers SIGINT: the first Ctrl-C is remembered and raised as
KeyboardInterrupt once the checkpoint is complete (the run then resumes from it); a second Ctrl-C
during the same save interrupts at once, for a user who will not wait.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import Iterator

log = logging.getLogger(__name__)


@contextlib.contextmanager
def interrupts_deferred(what: str) -> Iterator[None]:
    """Within the block, the first SIGINT is held back and raised as KeyboardInterrupt on leaving it.

    Outside the main thread (where Python cannot install signal handlers) the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    pending = False

    def hold(signum, frame) -> None:
        nonlocal pending
        if pending:  # the second Ctrl-C: the user does not want to wait
            raise KeyboardInterrupt
        pending = True
        log.warning("interrupt received: finishing %s first (Ctrl-C again to stop now)", what)

    signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        raise KeyboardInterrupt
