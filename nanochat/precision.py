"""
How the model's math runs on a device: the dtype and autocast, torch.compile, and the device's
peak FLOP/s and memory (for MFU and a stage's closing line). Training and inference both use it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch

from nanochat.common import print0


def resolve_dtype(device_type: str, dtype: str) -> torch.dtype:
    """'auto' is bf16 on CUDA and fp32 elsewhere (inference, evaluation; training stages use training_precision)."""
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


def wants_compile(flag: str, device_type: str, fixed_shapes: bool) -> bool:
    """
    --compile: on, off, or auto = on for CUDA where the batch shapes are fixed (compiling for
    ever-changing shapes would spend its time recompiling instead of speeding up).
    """
    return flag == "on" or (flag == "auto" and device_type == "cuda" and fixed_shapes)


# CPU features that run bf16 matmuls in hardware, best first (Arm lists "bf16" under "Features");
# without one, oneDNN emulates bf16 by converting to fp32 and back, unmeasured here, so fp32 stays
CPU_BF16_FEATURES = ("amx_bf16", "avx512_bf16", "bf16")

# On 2 CPU cores at the CPU speedrun's d4 shapes (bf16, seq 256, batch 16), compiling the
# training graph took ~23 s more than eager warm-up and saved ~14% of a step: repaid after
# ~440k tokens, and evaluation compiles its own graph on top. So `auto` compiles CPU runs from
# 1M tokens; the speedrun's 120 steps (0.49M) stay eager (README, Benchmarks).
CPU_COMPILE_MIN_TOKENS = 1_000_000


def cpu_bf16_feature(cpuinfo: str | None = None) -> str | None:
    """The feature in /proc/cpuinfo's flags that makes bf16 native on this CPU, or None (none, or not Linux)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    flags = {f for line in cpuinfo.splitlines() if line.startswith(("flags", "Features"))
             for f in line.partition(":")[2].split()}
    return next((f for f in CPU_BF16_FEATURES if f in flags), None)


@dataclass(frozen=True)
class Precision:
    """A training stage's dtype and compile choice, with the reasons printed as the run's first line."""
    dtype: torch.dtype
    compile: bool
    dtype_reason: str
    compile_reason: str

    def describe(self) -> str:
        math = "bf16 autocast" if self.dtype == torch.bfloat16 else "fp32"
        return f"precision: {math} ({self.dtype_reason}), compile {'on' if self.compile else 'off'} ({self.compile_reason})"


def choose_precision(device_type: str, dtype: str, compile: str, fixed_shapes: bool, train_tokens: int | None,
                     cpu_feature: str | None = None) -> Precision:
    """
    What a training stage runs in. --dtype and --compile win when set; 'auto' is bf16 on CUDA
    and on CPUs with native bf16 (cpu_feature; detected when None), fp32 elsewhere; compile is
    on for CUDA with fixed shapes and for CPU runs with fixed shapes long enough to repay it
    (train_tokens; None: a pass over a dataset of unknown size, taken as long).
    """
    if dtype != "auto":
        torch_dtype, dtype_reason = resolve_dtype(device_type, dtype), "--dtype"
    elif device_type == "cpu":
        cpu_feature = cpu_feature if cpu_feature is not None else cpu_bf16_feature()
        torch_dtype = torch.bfloat16 if cpu_feature else torch.float32
        dtype_reason = f"CPU has {cpu_feature}" if cpu_feature else "CPU has no native bf16"
    else:
        torch_dtype = resolve_dtype(device_type, dtype)
        dtype_reason = f"auto on {device_type}"
    if compile != "auto":
        use_compile, compile_reason = compile == "on", "--compile"
    elif not fixed_shapes:
        use_compile, compile_reason = False, "batch shapes vary"
    elif device_type == "cpu" and train_tokens is None:
        use_compile, compile_reason = True, "a pass over the data repays compiling"
    elif device_type == "cpu":
        use_compile = train_tokens >= CPU_COMPILE_MIN_TOKENS
        compile_reason = (f"{train_tokens:,} training tokens {'≥' if use_compile else '<'} "
                          f"{CPU_COMPILE_MIN_TOKENS:,}, the least that repay compiling")
    else:
        use_compile = wants_compile(compile, device_type, fixed_shapes)
        compile_reason = f"auto on {device_type}"
    return Precision(torch_dtype, use_compile, dtype_reason, compile_reason)


def compile_model(model: torch.nn.Module, compile: bool, fixed_shapes: bool) -> torch.nn.Module:
    """The model the training step calls; the uncompiled one shares its parameters, so saving and sampling use it."""
    return torch.compile(model, dynamic=not fixed_shapes) if compile else model


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


def peak_memory_mib(device: torch.device) -> float | None:
    """The most memory the device has held in tensors so far, in MiB (CUDA only: torch keeps no CPU statistics)."""
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def training_precision(device_type: str, dtype: str, compile: str, fixed_shapes: bool,
                       train_tokens: int | None) -> tuple[torch.dtype, bool, contextlib.AbstractContextManager]:
    """
    choose_precision for a training stage, printed (rank 0) as its line on what it computes in
    and why; returns (dtype, whether to compile, the autocast context to run the math in).
    """
    precision = choose_precision(device_type, dtype, compile, fixed_shapes, train_tokens)
    print0(precision.describe())
    return precision.dtype, precision.compile, autocast_context(device_type, precision.dtype)
