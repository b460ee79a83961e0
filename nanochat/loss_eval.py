"""
How a base model is judged during and after pretraining: bits per byte, and greedy samples.

Bits per byte: a loss that does not depend on the tokenizer, so models with different
vocabularies compare fairly. Summed nats over all target tokens divided by ln 2 times the
UTF-8 bytes those tokens stand for; special tokens (0 bytes) and ignored targets (-1) count
in neither sum.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterator

import torch
import torch.distributed as dist

from nanochat.common import get_dist_info


@torch.no_grad()
def evaluate_bpb(
    model: torch.nn.Module,
    batches: Iterator[tuple],
    steps: int,
    token_bytes: torch.Tensor,
    autocast: contextlib.AbstractContextManager | None = None,
) -> float:
    """Bits per byte over `steps` batches of (inputs, targets, ...), summed across ranks."""
    device = token_bytes.device
    total_nats = torch.zeros((), dtype=torch.float64, device=device)
    total_bytes = torch.zeros((), dtype=torch.int64, device=device)
    autocast = autocast or contextlib.nullcontext()
    # at most `steps` batches: a rank whose data ends sooner contributes less, and every rank still
    # reaches the all_reduce below (a StopIteration on one rank would leave the others waiting there)
    for inputs, targets, *_ in itertools.islice(batches, steps):
        with autocast:
            nats = model(inputs, targets, loss_reduction="none").view(-1)
        targets = targets.reshape(-1)
        valid = targets >= 0
        nbytes = torch.where(valid, token_bytes[targets.clamp(min=0)], 0)
        total_nats += (nats.double() * (nbytes > 0)).sum()
        total_bytes += nbytes.sum()
    if get_dist_info()[0]:
        dist.all_reduce(total_nats, op=dist.ReduceOp.SUM)
        dist.all_reduce(total_bytes, op=dist.ReduceOp.SUM)
    if total_bytes.item() == 0:
        raise ValueError("no target bytes to evaluate on (every target was special or ignored)")
    return total_nats.item() / (math.log(2) * total_bytes.item())



@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, batches: Iterator[tuple], steps: int,
                  autocast: contextlib.AbstractContextManager | None = None) -> float:
    """Mean cross-entropy per target token (targets of -1 ignored) over `steps` batches and all ranks."""
    total = torch.zeros(2, dtype=torch.float64, device=next(model.parameters()).device)
    autocast = autocast or contextlib.nullcontext()
    for inputs, targets, *_ in itertools.islice(batches, steps):  # as in evaluate_bpb: never a one-rank StopIteration
        with autocast:
            total[0] += model(inputs, targets, loss_reduction="sum").double()
        total[1] += (targets >= 0).sum()
    if get_dist_info()[0]:
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return (total[0] / total[1].clamp(min=1)).item()

# prompts a base model should complete sensibly, on real web text and on the synthetic twin
SAMPLE_PROMPTS = [
    "The capital of France is",
    "The opposite of hot is",
    "If yesterday was Friday, then tomorrow will be",
    "Question: Tom has 3 bags with 4 apples each. How many apples does he have?\nAnswer:",
    "How many r are in strawberry?",
]


@torch.no_grad()
def sample_completions(model: torch.nn.Module, tokenizer, prompts: list[str] = SAMPLE_PROMPTS, max_tokens: int = 16) -> list[str]:
    """Each prompt followed by the model's greedy continuation."""
    was_training = model.training
    model.eval()
    out = []
    for prompt in prompts:
        tokens = tokenizer.encode(prompt, prepend=tokenizer.get_bos_token_id())
        out.append(prompt + tokenizer.decode(list(model.generate(tokens, max_tokens=max_tokens, temperature=0.0))))
    model.train(was_training)
    return out
