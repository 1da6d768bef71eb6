"""The serve command's opt-in interpreter tuning: off by default, restored on exit."""

from __future__ import annotations

import gc
import sys

from ctxpipe.app.interpreter import tuned_interpreter
from ctxpipe.core.settings import InterpreterSettings, Settings


def _state() -> tuple[tuple[int, int, int], float, int]:
    return gc.get_threshold(), sys.getswitchinterval(), gc.get_freeze_count()


def test_the_default_changes_nothing() -> None:
    assert Settings().interpreter.tune is False
    before = _state()
    with tuned_interpreter(InterpreterSettings()):
        assert _state() == before
    assert _state() == before


def test_tuning_applies_while_inside_and_restores_after() -> None:
    before = _state()
    settings = InterpreterSettings(tune=True, switch_interval_ms=2.0, gc_freeze=True, gc_threshold=12_345)
    with tuned_interpreter(settings):
        threshold, switch, _ = _state()
        assert threshold == (12_345, *before[0][1:])
        assert switch == 0.002
        assert gc.get_freeze_count() > 0
    assert _state() == before


def test_a_threshold_of_zero_keeps_pythons() -> None:
    before = gc.get_threshold()
    with tuned_interpreter(InterpreterSettings(tune=True, gc_freeze=False, gc_threshold=0)):
        assert gc.get_threshold() == before
