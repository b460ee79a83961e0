"""A tiny GPT, a fixed stream of batches and a bitwise comparison, shared by tests and the torchrun workers they launch;
small seeded GPTs saved as a stage's checkpoint, the tiny chat checkpoint of the chat_cli and chat_web tests, and the
bitwise-resume check of the training scripts."""

from __future__ import annotations

import json
import os

import torch

from nanochat.checkpoint_manager import checkpoint_dir_for, save_checkpoint
from nanochat.gpt import GPT, GPTConfig
from nanochat.tokenizer import SPECIAL_TOKENS, get_tokenizer_dir

GLOBAL_BATCH = 4
SEQ_LEN = 16
VOCAB = 301  # odd on purpose: the sharded AdamW must pad
STEPS = 3


def tiny_gpt(vocab_size: int, sequence_len: int = 64, n_layer: int = 1, n_head: int = 1, n_kv_head: int = 1,
             n_embd: int = 64, jitter: float = 0.0, seed: int = 0, smear: bool = False) -> GPT:
    """A small GPT initialized from `seed`, then every parameter moved by Gaussian noise of scale `jitter`."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(sequence_len=sequence_len, vocab_size=vocab_size, n_layer=n_layer, n_head=n_head,
                          n_kv_head=n_kv_head, n_embd=n_embd, smear=smear))
    model.init_weights()
    if jitter:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(jitter * torch.randn_like(p))
    return model


def save_stage_checkpoint(model: GPT, source: str, step: int, model_tag: str = "d1", tokenizer=None) -> None:
    """model as `source`'s checkpoint at `step` under $NANOCHAT_BASE_DIR, as its training script saves it, and the tokenizer when given."""
    if tokenizer is not None:
        tokenizer.save(get_tokenizer_dir())
    save_checkpoint(checkpoint_dir_for(source, model_tag), step, model.state_dict(), None,
                    {"model_config": vars(model.config), "step": step})


def make_tiny_model(seed: int = 0, smear: bool = False) -> GPT:
    # jitter leaves no zero-initialized matrix, so every parameter gets a real gradient
    return tiny_gpt(VOCAB, SEQ_LEN, n_head=4, n_kv_head=2, jitter=0.02, seed=seed, smear=smear)


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
    model = tiny_gpt(tokenizer.get_vocab_size(), sequence_len, n_layer=2, n_head=4, n_kv_head=2, jitter=0.3)
    with torch.no_grad():
        # Special tokens get logit 0 while the best ordinary token scores far above it (logits are
        # soft-capped at 15): the replies never end early nor call the tool, so every reply runs to
        # exactly max_tokens tokens and tests can count on that.
        model.lm_head.weight.mul_(4.0)
        model.lm_head.weight[[tokenizer.encode_special(s) for s in SPECIAL_TOKENS]] = 0.0
    save_stage_checkpoint(model, "sft", 0, model_tag, tokenizer)
    return model.config


def resume_matches(run, args: list[str], stage_dir, final_step: int, half_step: int) -> None:
    """
    A training script's run to final_step, then the same run resumed from its half_step checkpoint
    (the final files deleted): the model and optimizer files must come out bit for bit the same.
    """
    run(args)
    files = [f"model_{final_step:06d}.pt", f"optim_{final_step:06d}_rank0.pt"]
    uninterrupted = {f: torch.load(stage_dir / f) for f in files}
    meta = json.loads((stage_dir / f"meta_{final_step:06d}.json").read_text())
    for f in files + [f"meta_{final_step:06d}.json"]:
        os.remove(stage_dir / f)
    assert (stage_dir / f"model_{half_step:06d}.pt").exists()
    run(args + ["--resume"])
    for f in files:
        assert_bitwise_equal(torch.load(stage_dir / f), uninterrupted[f], f)
    resumed = json.loads((stage_dir / f"meta_{final_step:06d}.json").read_text())
    assert resumed["data_states"] == meta["data_states"]
