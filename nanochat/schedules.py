"""
The learning-rate and momentum schedules of the training stages, and setting them on the
optimizers before each step.
"""

from __future__ import annotations

import torch


def lr_multiplier(step: int, num_iterations: int, warmup_ratio: float = 0.0, warmdown_ratio: float = 0.2,
                  final_lr_frac: float = 0.0) -> float:
    """Linear warmup, constant, then linear warmdown to final_lr_frac at the last step."""
    warmup = round(warmup_ratio * num_iterations)
    warmdown = round(warmdown_ratio * num_iterations)
    if step < warmup:
        return (step + 1) / warmup
    if step <= num_iterations - warmdown:
        return 1.0
    progress = (num_iterations - step) / warmdown
    return progress + (1 - progress) * final_lr_frac


def muon_momentum(step: int, start: float = 0.85, end: float = 0.95, ramp_steps: int = 300) -> float:
    """Muon's momentum warms up from start to end over the first ramp_steps steps."""
    frac = min(step / ramp_steps, 1.0)
    return (1 - frac) * start + frac * end


def apply_schedule(optimizers: list[torch.optim.Optimizer], lr_mult: float, momentum: float | None = None) -> None:
    """Set every group's learning rate to its initial one times lr_mult (and Muon's momentum, when given)."""
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * lr_mult
            if momentum is not None and "momentum" in group:
                group["momentum"] = momentum


def scale_learning_rates(optimizers: list[torch.optim.Optimizer], frac: float) -> None:
    """Start a fine-tuning stage at a fraction of the pretraining learning rates."""
    for opt in optimizers:
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"] = group["lr"] * frac
