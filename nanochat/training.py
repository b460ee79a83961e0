"""
Pieces every training script shares: precision, batch arithmetic, schedules, the training
step, throughput accounting, and the RNG state that exact resume restores.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

from nanochat.common import get_dist_info


class NonFiniteLossError(RuntimeError):
    pass


def resolve_dtype(device_type: str, dtype: str) -> torch.dtype:
    """'auto' is bf16 on CUDA and fp32 elsewhere; bf16 on CPU only when asked for."""
    if dtype == "auto":
        return torch.bfloat16 if device_type == "cuda" else torch.float32
    if dtype not in ("bfloat16", "float32"):
        raise ValueError(f"--dtype must be auto, bfloat16 or float32, not {dtype!r}")
    return getattr(torch, dtype)


def autocast_context(device_type: str, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision where it is asked for; fp32 means no autocast at all (bitwise-reproducible on CPU)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.amp.autocast(device_type=device_type, dtype=dtype)


def grad_accum_steps_for(total_batch_size: int, device_batch_size: int, seq_len: int, world_size: int) -> int:
    """How many micro-batches each rank runs per step so the global batch is total_batch_size tokens."""
    tokens_per_micro_step = device_batch_size * seq_len * world_size
    if total_batch_size % tokens_per_micro_step:
        raise ValueError(
            f"--total_batch_size={total_batch_size} is not a multiple of device_batch_size × seq_len × world_size "
            f"= {device_batch_size} × {seq_len} × {world_size} = {tokens_per_micro_step}"
        )
    return total_batch_size // tokens_per_micro_step


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
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * lr_mult
            if momentum is not None and "momentum" in group:
                group["momentum"] = momentum


def train_step(
    model: torch.nn.Module,
    optimizers: list[torch.optim.Optimizer],
    batches: Iterator[tuple],
    grad_accum_steps: int,
    autocast: contextlib.AbstractContextManager,
) -> tuple[torch.Tensor, tuple]:
    """
    One optimizer step over grad_accum_steps micro-batches. Each batch is (inputs, targets, *extra);
    returns the mean loss (a detached tensor) and the last batch's extras (e.g. the loader state).
    Gradients are averaged across ranks inside the distributed optimizers' step.
    """
    total = torch.zeros((), device=next(model.parameters()).device)
    extra: tuple = ()
    for _ in range(grad_accum_steps):
        inputs, targets, *extra = next(batches)
        with autocast:
            loss = model(inputs, targets)
        total += loss.detach()
        (loss / grad_accum_steps).backward()
    for opt in optimizers:
        opt.step()
    model.zero_grad(set_to_none=True)
    return total / grad_accum_steps, tuple(extra)


def check_finite(loss: float, step: int) -> None:
    if not math.isfinite(loss):
        raise NonFiniteLossError(
            f"loss is {loss} at step {step}: training stopped and nothing was saved at this step; "
            "the last good checkpoint is intact (resume with --resume and, say, a lower learning rate)"
        )


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean over ranks (for logging a loss every rank agrees on)."""
    if get_dist_info()[0]:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.AVG)
    return value


# Peak dense bf16 tensor FLOP/s, from the vendors' data sheets (without sparsity).
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "H800": 989e12,
    "GH200": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "A800": 312e12,
    "A10G": 70e12,
    "A10": 125e12,
    "A6000": 155e12,
    "L40S": 362e12,
    "L40": 181e12,
    "L4": 121e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
}


def peak_flops(device: torch.device, override: float = 0.0) -> float | None:
    """The device's peak bf16 FLOP/s for MFU, or None when unknown (CPU, unlisted GPU) and not given."""
    if override > 0:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_BF16_FLOPS.items():  # longest, most specific names are listed first
        if key in name:
            return flops
    return None


def get_rng_state() -> dict[str, Any]:
    """Every RNG a training process draws from, as JSON-friendly data."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def gather_to_all(obj: Any) -> list[Any]:
    """Every rank's obj, in rank order (a one-element list without torchrun)."""
    ddp, _, _, world_size = get_dist_info()
    if not ddp:
        return [obj]
    out: list[Any] = [None] * world_size
    dist.all_gather_object(out, obj)
    return out
