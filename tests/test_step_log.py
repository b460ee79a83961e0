"""The step log line: total time counts every step, the ETA comes from the steady steps."""

from __future__ import annotations

from nanochat.training import StepLog


def test_total_time_counts_every_step_and_eta_ignores_warm_up(capsys):
    log = StepLog(tokens_per_step=1000)
    log.step(0, 100, loss=2.0, dt=30.0, lrm=1.0)  # the first step compiles: slow
    line = capsys.readouterr().out
    assert "total time: 0.50m" in line and "eta: 49.5m" in line  # nothing steady yet: this step's time
    for step in range(1, 12):
        log.step(step, 100, loss=2.0, dt=1.0, lrm=1.0)
    line = capsys.readouterr().out.strip().splitlines()[-1]
    # 30 s + 11 × 1 s so far; 88 steps left at the 1 s of the steps after the first 10
    assert "total time: 0.68m" in line and "eta: 1.5m" in line
    log.step(12, None, loss=2.0, dt=1.0, lrm=1.0)
    assert "eta" not in capsys.readouterr().out  # unknown length (mid-training's single pass): no ETA
