"""The chunked head loss equals the plain head + soft-cap + cross-entropy: loss and every gradient, in fp32."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nanochat.gpt import GPT, LOGIT_SOFTCAP, GPTConfig
from nanochat.head_loss import chunked_head_loss


def _model(vocab: int = 300) -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(sequence_len=32, vocab_size=vocab, n_layer=2, n_head=2, n_kv_head=1, n_embd=64))
    model.init_weights()
    with torch.no_grad():  # zero head and projections would make most gradients trivially equal; a large
        for p in model.parameters():  # head pushes logits into the soft-cap's curved part
            p.add_(0.5 * torch.randn_like(p))
    return model


def _targets(B: int, T: int, vocab: int) -> torch.Tensor:
    targets = torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(1))
    targets[0, :5] = -1  # ignored positions, as SFT's masks and padding give
    targets[1, -3:] = -1
    return targets


def _loss_and_grads(model: GPT, idx, targets, reduction: str, chunked: bool, row_weights=None):
    model.chunked_loss = chunked
    model.zero_grad(set_to_none=True)
    loss = model(idx, targets, loss_reduction=reduction)
    # 'none': weight each token's loss differently (as RL does), so per-row gradients are tested
    (loss * row_weights).sum().backward() if reduction == "none" else loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("chunk", [7, None])  # chunks that do not divide the rows, and the default
def test_chunked_loss_and_grads_equal_plain(reduction, chunk, monkeypatch):
    import nanochat.head_loss as head_loss

    if chunk:
        monkeypatch.setattr(head_loss, "CHUNK_ELEMENTS", chunk * 300)
    model = _model()
    B, T = 3, 16
    idx = torch.randint(0, 300, (B, T), generator=torch.Generator().manual_seed(2))
    targets = _targets(B, T, 300)
    weights = torch.randn(B * T, generator=torch.Generator().manual_seed(3))
    plain_loss, plain_grads = _loss_and_grads(model, idx, targets, reduction, False, weights)
    loss, grads = _loss_and_grads(model, idx, targets, reduction, True, weights)
    assert loss.shape == plain_loss.shape
    torch.testing.assert_close(loss, plain_loss, atol=1e-5, rtol=1e-5)
    if reduction == "none":
        assert (loss.view(B, T)[targets == -1] == 0).all()
    for name, grad in plain_grads.items():
        assert grad.abs().max() > 0, name  # every parameter gets a real gradient to compare
        torch.testing.assert_close(grads[name], grad, atol=1e-5, rtol=1e-5, msg=name)


def test_soft_cap_is_active_and_function_matches_formula():
    """The function alone against the formula it replaces, with logits far into the soft-cap."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(37, 16, generator=g, requires_grad=True)
    w = (3 * torch.randn(50, 16, generator=g)).requires_grad_()
    targets = torch.randint(-1, 50, (37,), generator=g)
    plain_logits = (x @ w.t()).float()
    assert plain_logits.abs().max() > 2 * LOGIT_SOFTCAP  # tanh's slope is far from 1 there
    plain = F.cross_entropy(LOGIT_SOFTCAP * torch.tanh(plain_logits / LOGIT_SOFTCAP), targets, ignore_index=-1)
    gx, gw = torch.autograd.grad(plain, (x, w))
    ours = chunked_head_loss(x, w, targets, LOGIT_SOFTCAP, "mean", chunk_rows=5)
    ox, ow = torch.autograd.grad(ours * 2.5, (x, w))  # an incoming gradient other than 1 is applied
    torch.testing.assert_close(ours, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ox, 2.5 * gx, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ow, 2.5 * gw, atol=1e-5, rtol=1e-5)


def test_no_grad_evaluation_and_bf16_autocast():
    model = _model()
    idx = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(2))
    targets = _targets(2, 16, 300)
    with torch.no_grad():
        model.chunked_loss = False
        plain = model(idx, targets, loss_reduction="none")
        model.chunked_loss = True
        torch.testing.assert_close(model(idx, targets, loss_reduction="none"), plain, atol=1e-5, rtol=1e-5)
    # under bf16 autocast the head's matmul runs in bf16 as lm_head's would: close, not equal
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model.chunked_loss = False
        plain = model(idx, targets)
        model.chunked_loss = True
        ours = model(idx, targets)
    ours.backward()
    assert ours.dtype == torch.float32 and model.lm_head.weight.grad.dtype == torch.float32
    torch.testing.assert_close(ours, plain, atol=2e-2, rtol=2e-2)


def test_bad_reduction_is_refused():
    with pytest.raises(ValueError, match="reduction"):
        chunked_head_loss(torch.zeros(2, 4), torch.zeros(3, 4), torch.zeros(2, dtype=torch.long), 15.0, "max")
