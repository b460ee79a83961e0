"""A tiny GPT, a fixed stream of batches and a bitwise comparison, shared by tests and the torchrun workers they launch;
a tiny chat checkpoint for the chat_cli and chat_web tests."""

from __future__ import annotations

import torch

from nanochat.checkpoint_manager import checkpoint_dir_for, save_checkpoint
from nanochat.gpt import GPT, GPTConfig
from nanochat.tokenizer import SPECIAL_TOKENS, get_tokenizer_dir

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


def write_chat_checkpoint(tokenizer, model_tag: str = "d1", sequence_len: int = 256) -> GPTConfig:
    """A tiny random GPT saved as an sft checkpoint (step 0), and its tokenizer, under $NANOCHAT_BASE_DIR."""
    torch.manual_seed(0)
    config = GPTConfig(sequence_len=sequence_len, vocab_size=tokenizer.get_vocab_size(), n_layer=2, n_head=4,
                       n_kv_head=2, n_embd=64)
    model = GPT(config)
    model.init_weights()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
        # Special tokens get logit 0 while the best ordinary token scores far above it (logits are
        # soft-capped at 15): the replies never end early nor call the tool, so every reply runs to
        # exactly max_tokens tokens and tests can count on that.
        model.lm_head.weight.mul_(4.0)
        model.lm_head.weight[[tokenizer.encode_special(s) for s in SPECIAL_TOKENS]] = 0.0
    save_checkpoint(checkpoint_dir_for("sft", model_tag), 0, model.state_dict(), None,
                    {"model_config": vars(config), "step": 0})
    tokenizer.save(get_tokenizer_dir())
    return config
