"""A tiny GPT, a fixed stream of batches and a bitwise comparison, shared by tests and the torchrun workers they launch."""

from __future__ import annotations

import torch

from nanochat.gpt import GPT, GPTConfig

GLOBAL_BATCH = 4
SEQ_LEN = 16
VOCAB = 301  # odd on purpose: the sharded AdamW must pad
STEPS = 3


def make_tiny_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(sequence_len=SEQ_LEN, vocab_size=VOCAB, n_layer=1, n_head=4, n_kv_head=2, n_embd=64))
    model.init_weights()
    with torch.no_grad():  # leave no zero-initialized matrix, so every parameter gets a real gradient
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def make_batches(seed: int = 1, steps: int = STEPS, rows: int = GLOBAL_BATCH):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        seq = torch.randint(0, VOCAB, (rows, SEQ_LEN + 1), generator=g)
        yield seq[:, :-1], seq[:, 1:]


def assert_bitwise_equal(a, b, path: str = "") -> None:
    """Tensors equal bit for bit, recursively through dicts and lists (optimizer and model state)."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{path} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_bitwise_equal(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_bitwise_equal(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a} != {b}"
