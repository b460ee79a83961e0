"""TrainingLoop's cadence: when evaluations and saves are due, and what a resumed run skips."""

from __future__ import annotations

import argparse

from nanochat.resume import ResumeState
from nanochat.training import StepLog, TrainingLoop


def loop_from(start_step: int, save_every: int = 4, loop_state: dict | None = None) -> TrainingLoop:
    args = argparse.Namespace(save_every=save_every, keep_last=-1)
    return TrainingLoop("unused", args, {}, StepLog(1), ResumeState(step=start_step, loop_state=loop_state))


def test_evaluations_every_n_steps_and_at_the_end():
    loop = loop_from(0)
    assert [s for s in range(10) if loop.eval_due(s, 3)] == [0, 3, 6, 9]
    assert [s for s in range(10) if loop.eval_due(s, -1)] == []  # -1: only at the end
    assert loop.eval_due(7, -1, last=True) and loop.eval_due(7, 3, last=True)


def test_a_resumed_run_skips_the_evaluation_its_saved_run_made_and_never_resaves_its_start():
    fresh, resumed = loop_from(0), loop_from(6)
    assert fresh.eval_due(0, 3) and fresh.save_due(8, last=False) and not fresh.save_due(0, last=True)
    assert not resumed.eval_due(6, 3) and not resumed.eval_due(6, 3, last=True) and resumed.eval_due(9, 3)
    assert resumed.resumed_at(6) and not fresh.resumed_at(0)
    assert not resumed.save_due(6, last=True) and resumed.save_due(8, last=False) and resumed.save_due(7, last=True)
    assert [s for s in range(6, 14) if resumed.save_due(s, last=False)] == [8, 12]


def test_a_resumed_run_carries_on_the_saved_step_log():
    saved = {"ema": 1.5, "count": 3, "total_time": 60.0, "evals": {"val_bpb": [[0, 2.0]]}}
    loop = loop_from(6, loop_state=saved)
    assert loop.log.state is saved and loop.log.history("val_bpb") == [[0, 2.0]]
