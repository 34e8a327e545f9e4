"""Ctrl-C during a checkpoint write takes effect after it (pipeline/runtime/interrupts.py)."""
from __future__ import annotations

import os
import signal

import pytest

from pipeline.runtime.interrupts import interrupts_deferred


def _ctrl_c() -> None:
    os.kill(os.getpid(), signal.SIGINT)


def test_the_first_ctrl_c_waits_for_the_block_and_the_handler_is_restored():
    before = signal.getsignal(signal.SIGINT)
    finished = False
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred("a save"):
            _ctrl_c()
            finished = True  # reached: the interrupt was held back
    assert finished and signal.getsignal(signal.SIGINT) is before


def test_a_second_ctrl_c_stops_at_once():
    reached_end = False
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred("a save"):
            _ctrl_c()
            _ctrl_c()
            reached_end = True
    assert not reached_end


def test_without_ctrl_c_nothing_is_raised_and_errors_pass_through():
    with interrupts_deferred("a save"):
        pass
    with pytest.raises(ValueError):
        with interrupts_deferred("a save"):
            raise ValueError("a failed write")
