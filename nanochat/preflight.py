"""
The plan of a training run, printed before anything big is allocated, and the peak-memory
estimate that decides whether it fits the device.

The estimate is a formula, per device (rank), in bytes:

    params + grads       8·P                              fp32 weights and fp32 gradients (replicated)
    optimizer state      (8·P_adam + 4·P_muon) / world    AdamW's two moments, Muon's momentum (sharded)
    activations          B·T·a·L·C + R·v·V                what forward saves for backward, plus the
                                                          head's transients
    optimizer transients 8·P_adam                         DistAdamW's padded flat copies (embedding, head)

with P parameters (P_adam: embedding and head, P_muon: the blocks' matrices), B the device
batch, T the sequence length, L layers, C = n_embd and V the vocabulary. R is the number of
rows expanded to the vocabulary at once: eager steps compute the loss in chunks of rows
(nanochat.head_loss), so R = min(B·T, the chunk's rows); a compiled step keeps the plain
expression (Inductor fuses it), so R = B·T. The per-token
coefficients a (bytes per layer per channel) and v (bytes per vocabulary entry) depend on how
the step runs:

    eager fp32        a = 92, v = 14   measured on CPU (tests hold the formula to measurements)
    eager bf16        a = 60, v = 15   measured on CPU with bf16 autocast
    compiled bf16     a = 22, v = 8    torch.compile saves ~11 bf16 tensors of width C per layer
                                       and fuses soft-cap + cross-entropy; calibrated to nanochat's
                                       published d20 figure (~75 GB at B=32, T=2048), which this
                                       formula puts at 72 GiB. gpu_check.sh prints it beside the
                                       measured peak so a GPU run can check it.

Eager fp32 saves ~22 fp32 tensors of width C per layer (the residual, both norms, q/k/v before and
after rotary and QK norm, attention output, the MLP's 4C hidden twice). The eager coefficients were
re-fitted (from a = 88/56, v = 16 with the plain loss) when the loss became chunked: the plain loss
kept 8 bytes per vocab entry of every row for the backward (the soft-capped logits and the
log-softmax) and its backward added ~8 more; the chunked loss keeps none, and at most three fp32
(rows, V) tensors of one chunk live while it runs. Fitted to the peaks measured on the shapes of
tests/test_gpu_path.py plus d4 (vocab 8192, batch 8×512, 8 chunks), the estimate is 1.05–1.20× the
measured peak in fp32 and 0.98–1.28× in bf16; at d4 the measured peak fell from 0.95 GB (plain
loss) to 0.49 GB.
"""

from __future__ import annotations

import argparse
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from nanochat.common import print0
from nanochat.errors import PlanOnly, PreflightError
from nanochat.gpt import GPTConfig
from nanochat.head_loss import default_chunk_rows

# (a, v): bytes per token per layer per channel, and per token per vocabulary entry
COEFFICIENTS = {("eager", torch.float32): (92, 14), ("eager", torch.bfloat16): (60, 15),
                ("compiled", torch.bfloat16): (22, 8), ("compiled", torch.float32): (88, 16)}
GIB = 2**30


@dataclass
class MemoryEstimate:
    params_and_grads: int
    optimizer_state: int
    activations: int
    optimizer_transients: int

    @property
    def total(self) -> int:
        return self.params_and_grads + self.optimizer_state + self.activations + self.optimizer_transients


def parameter_counts(config: GPTConfig) -> tuple[int, int]:
    """(AdamW parameters: embedding and head, Muon parameters: the blocks' matrices)."""
    C, V = config.n_embd, config.vocab_size
    kv = config.n_kv_head * (C // config.n_head)
    per_layer = C * C + 2 * C * kv + C * C + 8 * C * C  # q, k, v, proj, mlp fc + proj
    return 2 * V * C + int(config.smear), config.n_layer * per_layer  # smear_lambda: one number, with AdamW


def estimate_peak_memory(config: GPTConfig, device_batch_size: int, seq_len: int, world_size: int = 1,
                         dtype: torch.dtype = torch.bfloat16, compiled: bool = False) -> MemoryEstimate:
    """The peak bytes one rank holds during a training step (see the module docstring for the formula)."""
    p_adam, p_muon = parameter_counts(config)
    a, v = COEFFICIENTS[("compiled" if compiled else "eager", dtype)]
    tokens = device_batch_size * seq_len
    vocab_rows = tokens if compiled else min(tokens, default_chunk_rows(config.vocab_size))
    return MemoryEstimate(
        params_and_grads=8 * (p_adam + p_muon),
        optimizer_state=(8 * p_adam + 4 * p_muon) // world_size,
        activations=tokens * config.n_layer * a * config.n_embd + vocab_rows * v * config.vocab_size,
        optimizer_transients=8 * p_adam,
    )


def device_memory(device: torch.device) -> int | None:
    """The device's total memory in bytes, or None where it is not known (CPU, MPS)."""
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).total_memory


def largest_fitting_batch(config: GPTConfig, seq_len: int, world_size: int, dtype: torch.dtype, compiled: bool,
                          budget: int) -> int:
    """The largest power-of-two device batch whose estimate fits in budget bytes (0 if even 1 does not)."""
    batch = 0
    while batch < 4096 and estimate_peak_memory(config, max(1, 2 * batch), seq_len, world_size, dtype,
                                                compiled).total <= budget:
        batch = max(1, 2 * batch)
    return batch


def preflight(config: GPTConfig, device_batch_size: int, seq_len: int, world_size: int, dtype: torch.dtype,
              compiled: bool, device: torch.device, plan: dict[str, object], enforce: bool = True,
              headroom: float = 0.95) -> MemoryEstimate:
    """
    Print the plan (the given lines plus the memory estimate) and, when enforce, raise
    PreflightError with a --device_batch_size that fits if the estimate exceeds headroom of
    the device's memory. Devices of unknown memory (CPU, MPS) are never refused.
    """
    estimate = estimate_peak_memory(config, device_batch_size, seq_len, world_size, dtype, compiled)
    capacity = device_memory(device)
    print0(format_plan(plan, estimate, capacity))
    if not enforce or capacity is None or estimate.total <= headroom * capacity:
        return estimate
    fits = largest_fitting_batch(config, seq_len, world_size, dtype, compiled, int(headroom * capacity))
    advice = f"try --device_batch_size={fits}" if fits else "use a smaller model or --max_seq_len"
    raise PreflightError(
        f"estimated peak memory {estimate.total / GIB:.1f} GiB per device exceeds {headroom:.0%} of the "
        f"{capacity / GIB:.1f} GiB the device has at --device_batch_size={device_batch_size}; {advice} "
        "(gradient accumulation grows to keep the total batch), or --skip_preflight to try anyway"
    )


def plan_run(config: GPTConfig, device_batch_size: int, seq_len: int, world_size: int, dtype: torch.dtype,
             compiled: bool, device: torch.device, args: argparse.Namespace, plan: dict[str, object]) -> None:
    """
    A training script's preflight: print the plan (its precision line added here); PreflightError when it will not fit the device
    (unless --skip_preflight), and with --dry_run, PlanOnly once the plan is printed.
    """
    plan = {**plan, "precision": f"{dtype}, compile {'on' if compiled else 'off'}, device {device}"}
    preflight(config, device_batch_size, seq_len, world_size, dtype, compiled, device, plan,
              enforce=not args.skip_preflight)
    if args.dry_run:
        raise PlanOnly


def format_plan(lines: dict[str, object], estimate: MemoryEstimate, capacity: int | None) -> str:
    """The plan block every training script prints before it allocates anything big."""
    memory = (f"{estimate.total / GIB:.2f} GiB estimated peak per device (params+grads {estimate.params_and_grads / GIB:.2f}, "
              f"optimizer {estimate.optimizer_state / GIB:.2f}, activations {estimate.activations / GIB:.2f}, "
              f"optimizer transients {estimate.optimizer_transients / GIB:.2f})")
    if capacity is not None:
        memory += f" of {capacity / GIB:.1f} GiB"
    rows = [*(f"  {k}: {v}" for k, v in lines.items()), f"  memory: {memory}"]
    return "plan:\n" + "\n".join(rows)


class _PeakTracker(TorchDispatchMode):
    """Counts the bytes of every tensor storage created under it while it is alive."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                self._track(t.untyped_storage())
        return out

    def _track(self, storage: torch.UntypedStorage) -> None:
        key = id(storage)
        if key in self.live or storage.nbytes() == 0:
            return
        self.live[key] = storage.nbytes()
        self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)


def measure_peak_memory(run: Callable[[], None], preexisting: int = 0) -> int:
    """
    The peak bytes of live tensors while run() executes, plus `preexisting` (tensors made
    before, e.g. the parameters). Works on CPU, where torch keeps no allocator statistics.
    """
    tracker = _PeakTracker()
    with tracker:
        run()
    return preexisting + tracker.peak
