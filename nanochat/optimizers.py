"""
Optimizers: Muon for the Transformer's matrices, AdamW for the embedding and the head.

Each comes in a single-process and a distributed form. The distributed forms replace DDP:
they average gradients with a reduce-scatter, so each rank updates only its shard (and
keeps only that shard's optimizer state), then all-gather the updated parameters. They run
on NCCL and on gloo, so a 2-process CPU run tests the same code as an 8-GPU node.
"""

from __future__ import annotations

import functools
from collections import defaultdict

import torch
import torch.distributed as dist
from torch import Tensor

# quintic Newton–Schulz coefficients chosen (by Muon's authors) to push singular values
# into roughly [0.7, 1.2] in 5 steps rather than exactly to 1
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def zeropower_via_newtonschulz5(G: Tensor, steps: int = 5) -> Tensor:
    """
    Approximately orthogonalize G (..., m, n): the same singular vectors, singular values
    pushed near 1. Runs in bf16 on CUDA (fast, and the iteration tolerates it), fp32 elsewhere.
    """
    a, b, c = NS_COEFFICIENTS
    X = G.bfloat16() if G.is_cuda else G.float()
    transposed = G.size(-2) > G.size(-1)
    if transposed:  # iterate on the smaller Gram matrix
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        A = X @ X.mT
        B = b * A + c * A @ A
        X = a * X + B @ X
    if transposed:
        X = X.mT
    return X.to(G.dtype)


@functools.cache
def compiled_newton_schulz():
    """
    zeropower_via_newtonschulz5 through torch.compile, made once: on CUDA its five iterations of
    small matmuls and elementwise updates fuse into a few kernels instead of ~20 launches.
    """
    return torch.compile(zeropower_via_newtonschulz5, fullgraph=True)


def muon_direction(grad: Tensor, momentum_buffer: Tensor, momentum: float, nesterov: bool, ns_steps: int) -> Tensor:
    """Momentum (Nesterov by default), then orthogonalize, then scale by the matrix aspect ratio."""
    momentum_buffer.lerp_(grad, 1 - momentum)
    update = grad.lerp(momentum_buffer, momentum) if nesterov else momentum_buffer
    orthogonalize = compiled_newton_schulz() if grad.is_cuda else zeropower_via_newtonschulz5
    update = orthogonalize(update, ns_steps)
    # a tall matrix's orthogonal update has smaller RMS; scale it back up
    return update * max(1.0, grad.size(-2) / grad.size(-1)) ** 0.5


class Muon(torch.optim.Optimizer):
    """MomentUm Orthogonalized by Newton–Schulz, for 2D weights. Same-shape matrices are orthogonalized as one batch."""

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True, ns_steps: int = 5) -> None:
        params = list(params)
        if any(p.ndim != 2 for p in params):
            raise ValueError("Muon only takes 2D parameters")
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps))

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            by_shape: dict[torch.Size, list[Tensor]] = defaultdict(list)
            for p in group["params"]:
                if p.grad is not None:
                    by_shape[p.shape].append(p)
            for params in by_shape.values():
                grads = torch.stack([p.grad for p in params])
                buffers = torch.stack([self._buffer(p) for p in params])
                updates = muon_direction(grads, buffers, group["momentum"], group["nesterov"], group["ns_steps"])
                for p, buf, update in zip(params, buffers, updates):
                    self.state[p]["momentum_buffer"].copy_(buf)
                    p.add_(update, alpha=-group["lr"])

    def _buffer(self, p: Tensor) -> Tensor:
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p)
        return state["momentum_buffer"]


class DistMuon(torch.optim.Optimizer):
    """
    Muon across ranks. Parameters of one shape are taken world_size at a time; in each such
    chunk, rank r owns the r-th matrix: it receives that matrix's gradient averaged over ranks
    (reduce-scatter), updates it (holding its momentum), and the chunk is all-gathered back.
    """

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True, ns_steps: int = 5) -> None:
        params = list(params)
        if any(p.ndim != 2 for p in params):
            raise ValueError("Muon only takes 2D parameters")
        # one group per shape, in a fixed order, so every rank agrees on the chunks
        by_shape: dict[torch.Size, list[Tensor]] = defaultdict(list)
        for p in params:
            by_shape[p.shape].append(p)
        groups = [{"params": ps} for _, ps in sorted(by_shape.items(), key=lambda kv: tuple(kv[0]))]
        super().__init__(groups, dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps))

    @torch.no_grad()
    def step(self) -> None:
        rank, world = dist.get_rank(), dist.get_world_size()
        chunks = []  # (group, params of the chunk, stacked grads, my averaged grad, reduce handle)
        for group in self.param_groups:
            params = group["params"]
            for base in range(0, len(params), world):
                chunk = params[base : base + world]
                grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in chunk]
                grads += [torch.zeros_like(chunk[0])] * (world - len(chunk))  # pad the last chunk
                stacked = torch.stack(grads)
                mine = torch.empty_like(chunk[0])
                # collectives split along dim 0: (world·m, n) in, rank r's (m, n) block out
                handle = dist.reduce_scatter_single(mine, stacked.flatten(0, 1), op=dist.ReduceOp.AVG, async_op=True)
                chunks.append((group, chunk, mine, handle))
        gathers = []
        for group, chunk, mine, handle in chunks:
            handle.wait()
            m, n = chunk[0].shape
            updated = torch.empty((world * m, n), dtype=chunk[0].dtype, device=chunk[0].device)
            own = chunk[rank] if rank < len(chunk) else None
            if own is not None:
                state = self.state[own]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(own)
                update = muon_direction(mine, state["momentum_buffer"], group["momentum"], group["nesterov"], group["ns_steps"])
                own.add_(update, alpha=-group["lr"])
                contribution = own.detach()
            else:
                contribution = torch.zeros_like(chunk[0])
            gathers.append((chunk, updated, dist.all_gather_single(updated, contribution.contiguous(), async_op=True)))
        for chunk, updated, handle in gathers:
            handle.wait()
            for p, value in zip(chunk, updated.view(world, *chunk[0].shape)):
                p.copy_(value)


def adamw_update_(param: Tensor, grad: Tensor, state: dict, lr: float, betas: tuple[float, float], eps: float,
                  weight_decay: float) -> None:
    """One decoupled-weight-decay Adam step, written out so the distributed form matches torch's AdamW."""
    beta1, beta2 = betas
    if not state:
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(param)
        state["exp_avg_sq"] = torch.zeros_like(param)
    state["step"] += 1
    t = state["step"]
    param.mul_(1 - lr * weight_decay)
    state["exp_avg"].lerp_(grad, 1 - beta1)
    state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = (state["exp_avg_sq"].sqrt() / (1 - beta2**t) ** 0.5).add_(eps)
    param.addcdiv_(state["exp_avg"], denom, value=-lr / (1 - beta1**t))


class DistAdamW(torch.optim.Optimizer):
    """
    AdamW across ranks with the state sharded (ZeRO-2 style): each parameter is flattened,
    padded to a multiple of world_size, and rank r averages, updates and keeps state for
    the r-th slice only.
    """

    def __init__(self, param_groups, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        super().__init__(param_groups, dict(lr=1e-3, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self) -> None:
        rank, world = dist.get_rank(), dist.get_world_size()
        pending = []
        for group in self.param_groups:
            for p in group["params"]:
                grad = p.grad if p.grad is not None else torch.zeros_like(p)
                flat = _padded_flat(grad, world)
                mine = torch.empty(flat.numel() // world, dtype=flat.dtype, device=flat.device)
                pending.append((group, p, mine, dist.reduce_scatter_single(mine, flat, op=dist.ReduceOp.AVG, async_op=True)))
        gathers = []
        for group, p, mine, handle in pending:
            handle.wait()
            shard = mine.numel()
            flat_param = _padded_flat(p.detach(), world)
            own = flat_param[rank * shard : (rank + 1) * shard]
            adamw_update_(own, mine, self.state[p], group["lr"], group["betas"], group["eps"], group["weight_decay"])
            gathered = torch.empty_like(flat_param)
            gathers.append((p, gathered, dist.all_gather_single(gathered, own.contiguous(), async_op=True)))
        for p, gathered, handle in gathers:
            handle.wait()
            p.copy_(gathered[: p.numel()].view_as(p))


def _padded_flat(t: Tensor, world: int) -> Tensor:
    flat = t.reshape(-1)
    pad = (-flat.numel()) % world
    return torch.cat([flat, flat.new_zeros(pad)]) if pad else flat.clone()


def build_adamw(param_groups: list[dict], betas: tuple[float, float], eps: float, weight_decay: float,
                distributed: bool) -> torch.optim.Optimizer:
    if distributed:
        return DistAdamW(param_groups, betas=betas, eps=eps, weight_decay=weight_decay)
    fused = all(p.is_cuda for g in param_groups for p in g["params"])
    return torch.optim.AdamW(param_groups, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused or None)


def build_muon(params: list[Tensor], lr: float, momentum: float, distributed: bool) -> torch.optim.Optimizer:
    return (DistMuon if distributed else Muon)(params, lr=lr, momentum=momentum)
