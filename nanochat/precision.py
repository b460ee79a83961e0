"""
How the model's math runs on a device: the dtype and autocast, torch.compile, and the device's
peak FLOP/s and memory (for MFU and a stage's closing line). Training and inference both use it.
"""

from __future__ import annotations

import contextlib

import torch


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


def wants_compile(flag: str, device_type: str, fixed_shapes: bool) -> bool:
    """
    --compile: on, off, or auto = on for CUDA where the batch shapes are fixed (compiling for
    ever-changing shapes would spend its time recompiling instead of speeding up).
    """
    return flag == "on" or (flag == "auto" and device_type == "cuda" and fixed_shapes)


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
