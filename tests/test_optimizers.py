from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from nanochat.optimizers import NS_COEFFICIENTS, Muon, adamw_update_, zeropower_via_newtonschulz5
from nanochat.training import StepBatches, train_step
from tiny import GLOBAL_BATCH, STEPS, make_batches, make_tiny_model

NO_AUTOCAST = torch.autocast("cpu", enabled=False)


def _quintic_iterated(x: torch.Tensor, steps: int = 5) -> torch.Tensor:
    a, b, c = NS_COEFFICIENTS
    for _ in range(steps):
        x = a * x + b * x**3 + c * x**5
    return x


@pytest.mark.parametrize("shape", [(32, 96), (96, 32), (48, 48)])
def test_newton_schulz_maps_singular_values_through_the_quintic(shape):
    # build G with known singular vectors and values, then check NS(G) = U p⁵(S/|G|_F) Vᵀ
    g = torch.Generator().manual_seed(0)
    m, n = shape
    k = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
    S = torch.rand(k, generator=g, dtype=torch.float64) * 0.9 + 0.1
    G = (U * S) @ V.T
    expected = (U * _quintic_iterated(S / S.norm())) @ V.T
    torch.testing.assert_close(zeropower_via_newtonschulz5(G.float()).double(), expected, atol=2e-4, rtol=0)


@pytest.mark.parametrize("shape", [(32, 96), (96, 32)])
def test_muon_update_singular_values_lie_in_the_quintic_band(shape):
    G = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    s = torch.linalg.svdvals(zeropower_via_newtonschulz5(G))
    # for normalized singular values >= 0.003, five quintic steps land in [0.68, 1.21]
    assert s.min() > 0.68 and s.max() < 1.21


def test_muon_step_by_hand():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(16, 8))
    p0 = p.detach().clone()
    opt = Muon([p], lr=0.1, momentum=0.9)
    grads = [torch.randn(16, 8) for _ in range(2)]
    buf = torch.zeros(16, 8)
    expected = p0.clone()
    for g in grads:
        p.grad = g.clone()
        opt.step()
        buf = 0.9 * buf + 0.1 * g
        nesterov = 0.1 * g + 0.9 * buf
        expected -= 0.1 * (16 / 8) ** 0.5 * zeropower_via_newtonschulz5(nesterov)
    torch.testing.assert_close(p.detach(), expected, atol=1e-6, rtol=0)


def test_adamw_update_matches_torch_adamw():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(10))
    b = a.detach().clone()
    opt = torch.optim.AdamW([a], lr=0.01, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.1)
    state: dict = {}
    for _ in range(5):
        g = torch.randn(10)
        a.grad = g.clone()
        opt.step()
        adamw_update_(b, g, state, 0.01, (0.8, 0.95), 1e-10, 0.1)
    torch.testing.assert_close(a.detach(), b, atol=1e-7, rtol=0)


def _train(micro_batches: int, smear: bool = False) -> dict[str, torch.Tensor]:
    model = make_tiny_model(smear=smear)
    optimizers = model.setup_optimizers()
    rows = GLOBAL_BATCH // micro_batches
    batches = ((x[i : i + rows], y[i : i + rows]) for x, y in make_batches() for i in range(0, GLOBAL_BATCH, rows))
    steps = StepBatches(batches, micro_batches)
    losses = [train_step(model, optimizers, steps, NO_AUTOCAST)[0].item() for _ in range(STEPS)]
    return {"losses": torch.tensor(losses), **model.state_dict()}


def test_gradient_accumulation_equals_one_big_batch():
    one = _train(micro_batches=1)
    four = _train(micro_batches=4)
    for name in one:
        torch.testing.assert_close(four[name], one[name], atol=2e-6, rtol=1e-5, msg=name)
    assert not torch.equal(one["lm_head.weight"], make_tiny_model().state_dict()["lm_head.weight"])


@pytest.mark.slow
def test_two_process_distributed_optimizers_equal_one_process(tmp_path):
    out = tmp_path / "dist.pt"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "tests/workers/dist_optim_step.py", str(out)]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    dist_result = torch.load(out)
    single = _train(micro_batches=1, smear=True)
    for name, value in dist_result["params"].items():
        torch.testing.assert_close(value, single[name], atol=2e-6, rtol=1e-5, msg=name)
    # rank 0 holds half (rounded up) of the AdamW moments and only its share of Muon's matrices
    assert dist_result["adam_state_numel"] == sum((n + 1) // 2 for n in (301 * 64, 301 * 64, 1))  # head, embedding, smear
    assert dist_result["muon_owned"] == 4  # of 6 matrices: 2 of the pair-shaped c_q/c_proj, c_k/c_v, plus c_fc and mlp.c_proj
