"""
The language-model head's loss without its logits: head matmul, logit soft-cap and
cross-entropy, computed a chunk of rows at a time, forward and backward.

The plain way, `cross_entropy(softcap(x @ W.T))`, keeps several fp32 tensors of shape
(rows, vocab) alive from the forward to the backward (the logits, their tanh, the capped
logits, the log-softmax): 16 bytes per token per vocabulary entry, more than the whole
model's activations at small depth. Here only one chunk of rows is ever expanded to the
vocabulary, and it is dropped before the next one:

- with a scalar loss ('mean' or 'sum') and gradients wanted, the forward also computes the
  gradients of x and W chunk by chunk (the cross-entropy's gradient is known once its
  softmax is), keeps only those (rows·C and V·C), and the backward scales them by the
  incoming gradient; nothing is recomputed;
- with per-token losses ('none', RL's weighted log-probabilities) the incoming gradient
  differs per row, so the backward recomputes each chunk's logits and uses it.

The arithmetic is the same as the plain expression's (fp32 results agree to rounding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# logits expanded at once: 4M entries (16 MiB in fp32; a few such tensors live per chunk), so
# 512 rows at vocab 8192 and 64 at 65536: small next to what the full logits take, and still
# matrices large enough that the head's matmuls run at full speed
CHUNK_ELEMENTS = 2**22


def default_chunk_rows(vocab_size: int) -> int:
    """Rows per chunk: CHUNK_ELEMENTS logits at once."""
    return max(1, CHUNK_ELEMENTS // vocab_size)


def _chunk(x: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, softcap: float,
           row_grad: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """
    One chunk: per-row negative log-likelihoods (0 where the target is -1) and, when row_grad
    (the gradient of each row's loss) is given, the gradients of x's rows and of w.
    """
    # in-place where the plain expression would allocate: at most three (rows, vocab) fp32 tensors live
    tanh = (x @ w.t()).float().div_(softcap).tanh_()  # as lm_head(x).float(): the matmul in x's dtype, the rest fp32
    capped = softcap * tanh
    nll = F.cross_entropy(capped, targets, ignore_index=-1, reduction="none")
    if row_grad is None:
        return nll, None, None
    valid = targets >= 0
    # d nll / d capped = softmax - onehot(target); ignored rows get no gradient at all
    d_logits = torch.softmax(capped, dim=-1)
    del capped
    d_logits[valid, targets[valid]] -= 1
    d_logits *= (row_grad * valid)[:, None]
    d_logits *= tanh.square_().neg_().add_(1)  # d softcap·tanh(z/softcap) / dz = 1 - tanh²
    d_logits = d_logits.to(x.dtype)
    return nll, d_logits @ w, (d_logits.t() @ x).float()


def _row_grads(targets: torch.Tensor, reduction: str, grad_output: torch.Tensor) -> torch.Tensor:
    """The gradient of the reduced loss with respect to each row's nll."""
    if reduction == "none":
        return grad_output.float()
    if reduction == "mean":  # as cross_entropy: divided by the number of non-ignored targets
        grad_output = grad_output / (targets >= 0).sum()
    return grad_output.float().expand(targets.size(0))


def _loop(x: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, softcap: float, chunk_rows: int,
          row_grads: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Every chunk in turn: all rows' nll, and the gradients of x and w when row_grads is given."""
    nll = torch.empty(x.size(0), dtype=torch.float32, device=x.device)
    grad_x = torch.empty_like(x) if row_grads is not None else None
    grad_w = torch.zeros(w.shape, dtype=torch.float32, device=w.device) if row_grads is not None else None
    # under autocast the matmuls would run in its dtype anyway: x already is, w is cast once below;
    # turned off here so the backward (which runs outside autocast) computes exactly the same
    with torch.autocast(x.device.type, enabled=False):
        w = w.to(x.dtype)
        for start in range(0, x.size(0), chunk_rows):
            rows = slice(start, start + chunk_rows)
            row_grad = row_grads[rows] if row_grads is not None else None
            nll[rows], gx, gw = _chunk(x[rows], w, targets[rows], softcap, row_grad)
            if row_grad is not None:
                grad_x[rows] = gx
                grad_w += gw
    return nll, grad_x, grad_w


def _reduce(nll: torch.Tensor, targets: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return nll
    if reduction == "sum":
        return nll.sum()
    return nll.sum() / (targets >= 0).sum()  # NaN when every target is ignored, as cross_entropy


class _ChunkedHeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, softcap: float, reduction: str,
                chunk_rows: int, grads_now: bool) -> torch.Tensor:
        ctx.reduction, ctx.softcap, ctx.chunk_rows, ctx.grads_now = reduction, softcap, chunk_rows, grads_now
        ctx.w_dtype = w.dtype
        # the gradient for an incoming gradient of 1; the backward scales it by the real one
        row_grads = _row_grads(targets, reduction, torch.ones((), device=x.device)) if grads_now else None
        nll, grad_x, grad_w = _loop(x, w, targets, softcap, chunk_rows, row_grads)
        if grads_now:
            ctx.save_for_backward(grad_x, grad_w)
        else:
            ctx.save_for_backward(x, w, targets)
        return _reduce(nll, targets, reduction)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        if ctx.grads_now:
            grad_x, grad_w = ctx.saved_tensors
            grad_x, grad_w = grad_x * grad_output.to(grad_x.dtype), grad_w * grad_output
        else:
            x, w, targets = ctx.saved_tensors
            row_grads = _row_grads(targets, ctx.reduction, grad_output)
            _, grad_x, grad_w = _loop(x, w, targets, ctx.softcap, ctx.chunk_rows, row_grads)
        return grad_x, grad_w.to(ctx.w_dtype), None, None, None, None, None


def chunked_head_loss(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, softcap: float,
                      reduction: str = "mean", chunk_rows: int | None = None) -> torch.Tensor:
    """
    cross_entropy(softcap·tanh((x @ weight.T).float() / softcap), targets, ignore_index=-1,
    reduction) without the (rows, vocab) logits: x is (rows, C), weight (V, C), targets (rows,).
    chunk_rows defaults to default_chunk_rows(V).
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    chunk_rows = chunk_rows or default_chunk_rows(weight.size(0))
    # a scalar loss whose gradient will be taken: compute the gradient during the forward
    grads_now = reduction != "none" and torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    return _ChunkedHeadLoss.apply(x, weight, targets, softcap, reduction, chunk_rows, grads_now)
