"""
The GPT model.

A plain decoder-only Transformer with the choices nanochat made (and whose checkpoints load
here unchanged): rotary position embeddings (base 10000), QK norm, parameter-free RMSNorm
(also right after the token embedding and before the head), ReLU² MLP of 4x width, no
biases, an untied head, grouped-query attention, logits soft-capped at 15, and output
projections and head initialized to zero. One option nanochat does not have, off by default:
smear (GPTConfig.smear, base_train --smear), see GPT.smear.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanochat.common import get_dist_info
from nanochat.head_loss import chunked_head_loss

LOGIT_SOFTCAP = 15.0
ROTARY_BASE = 10000


@dataclass
class GPTConfig:
    sequence_len: int = 1024
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 6  # query heads
    n_kv_head: int = 6  # key/value heads (GQA when fewer than n_head)
    n_embd: int = 768
    # each token's embedding plus a learned multiple of the previous token's (not in nanochat, so
    # off by default; see GPT.smear)
    smear: bool = False

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not a multiple of n_head={self.n_head}")
        if self.n_kv_head > self.n_head or self.n_head % self.n_kv_head:
            raise ValueError(f"n_kv_head={self.n_kv_head} must divide n_head={self.n_head}")
        if (self.n_embd // self.n_head) % 2:
            raise ValueError("the head dimension must be even for rotary embeddings")


# fields nanochat's GPTConfig does not have, with the value that leaves the model as nanochat's
EXTENSIONS_OFF = {"smear": False}


def saved_config(model_config: dict[str, Any]) -> dict[str, Any]:
    """
    A checkpoint's model_config as written to its meta: our extensions only when they are on,
    so nanochat's loader (GPTConfig(**model_config)) reads every checkpoint that does not use them.
    """
    return {k: v for k, v in model_config.items() if not (k in EXTENSIONS_OFF and v == EXTENSIONS_OFF[k])}


def config_for_depth(depth: int, vocab_size: int, sequence_len: int = 2048, n_kv_head: int | None = None,
                     smear: bool = False) -> GPTConfig:
    """The one-dial model: width 64·depth, heads of 128 dims (at least one head)."""
    n_embd = 64 * depth
    n_head = max(1, n_embd // 128)
    return GPTConfig(
        sequence_len=sequence_len,
        vocab_size=vocab_size,
        n_layer=depth,
        n_head=n_head,
        n_kv_head=n_kv_head or n_head,
        n_embd=n_embd,
        smear=smear,
    )


def norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


def apply_rotary_emb(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves of each head's channels by position-dependent angles. x: (B, T, H, D)."""
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


def soft_cap(logits: torch.Tensor) -> torch.Tensor:
    """Logits squashed smoothly into (-LOGIT_SOFTCAP, LOGIT_SOFTCAP), as the model was trained (forward and decode_step)."""
    return LOGIT_SOFTCAP * torch.tanh(logits / LOGIT_SOFTCAP)


def decode_linear(x: torch.Tensor, weight: torch.Tensor, matvec: bool) -> torch.Tensor:
    """
    F.linear in the decode step; with matvec (one row) written as a product and a sum, which
    Inductor fuses with what produces x and compiles to one pass over the weights: on CPU twice
    as fast as the library's matrix-vector call at batch 1. Each further row would read the
    weights again, so batches keep F.linear.
    """
    if matvec:
        return (x.unsqueeze(-2) * weight).sum(dim=-1)
    return F.linear(x, weight)


class KVCache:
    """
    Keys and values of every layer for a batch of sequences, all at the same position.
    Grows (doubling) when a sequence outruns it.
    """

    def __init__(self, batch_size: int, num_heads: int, seq_len: int, head_dim: int, num_layers: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        shape = (num_layers, 2, batch_size, num_heads, seq_len, head_dim)
        self.cache = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = 0
        self.num_layers = num_layers
        # (B, 1) the last token fed through the cache: what a smear model mixes into the next one
        self.last_ids: torch.Tensor | None = None

    def reset(self) -> None:
        self.pos = 0
        self.last_ids = None

    def get_pos(self) -> int:
        return self.pos

    def _grow(self, needed: int) -> None:
        capacity = self.cache.size(4)
        if needed <= capacity:
            return
        new_capacity = max(needed, 2 * capacity)
        grown = self.cache.new_zeros(*self.cache.shape[:4], new_capacity, self.cache.size(5))
        grown[:, :, :, :, :capacity] = self.cache
        self.cache = grown

    def insert_kv(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's k, v (B, H, T, D) for one layer; return all keys and values so far."""
        t0, t1 = self.pos, self.pos + k.size(2)
        self._grow(t1)
        self.cache[layer_idx, 0, :, :, t0:t1] = k
        self.cache[layer_idx, 1, :, :, t0:t1] = v
        if layer_idx == self.num_layers - 1:  # the last layer moves everyone forward
            self.pos = t1
        return self.cache[layer_idx, 0, :, :, :t1], self.cache[layer_idx, 1, :, :, :t1]

    def prefill(self, other: "KVCache") -> None:
        """Copy another cache's contents (batch 1, or the same batch) into this one, broadcasting rows."""
        if other.cache.size(2) not in (1, self.cache.size(2)):
            raise ValueError(f"cannot prefill a batch of {self.cache.size(2)} from a batch of {other.cache.size(2)}")
        self.reset()
        self._grow(other.pos)
        self.cache[:, :, :, :, : other.pos] = other.cache[:, :, :, :, : other.pos]
        self.pos = other.pos
        if other.last_ids is not None:
            self.last_ids = other.last_ids.expand(self.cache.size(2), -1).clone()


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head = config.n_head
        self.n_kv_head = config.n_kv_head
        self.head_dim = config.n_embd // config.n_head
        self.c_q = nn.Linear(config.n_embd, self.n_head * self.head_dim, bias=False)
        self.c_k = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_v = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor], kv_cache: KVCache | None) -> torch.Tensor:
        B, T, C = x.size()
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)
        cos, sin = cos_sin
        q, k = norm(apply_rotary_emb(q, cos, sin)), norm(apply_rotary_emb(k, cos, sin))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
        if kv_cache is not None:
            k, v = kv_cache.insert_kv(self.layer_idx, k, v)
        Tq, Tk = q.size(2), k.size(2)
        gqa = self.n_kv_head != self.n_head
        if Tq == Tk:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        elif Tq == 1:  # one new token sees everything before it
            y = F.scaled_dot_product_attention(q, k, v, is_causal=False, enable_gqa=gqa)
        else:  # a chunk after a cached prefix: query i sits at absolute position Tk - Tq + i
            mask = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(diagonal=Tk - Tq)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)

    def decode_step(self, x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor], pos: torch.Tensor,
                    window: torch.Tensor, cache: torch.Tensor, masked: bool, matvec: bool) -> torch.Tensor:
        """
        forward() for one new token per row (x: (B, 1, C)) with the position a tensor, one for
        all rows (1,) or one per row (B,): k, v are written in place at `pos` of the cache (a
        KVCache's (layers, 2, B, H, T, D) tensor), and the query attends to the cache's first
        len(window) positions. Unmasked, the window must end at pos (the CPU path passes positions
        0..pos); masked, each row leaves out the positions after its own pos, so the window can be
        the whole cache and no shape changes between steps (CUDA graphs), or rows can stand at
        different positions (prompts of different lengths decoded together).
        """
        B, _, C = x.size()
        q = decode_linear(x, self.c_q.weight, matvec).view(B, 1, self.n_head, self.head_dim)
        k = decode_linear(x, self.c_k.weight, matvec).view(B, 1, self.n_kv_head, self.head_dim)
        v = decode_linear(x, self.c_v.weight, matvec).view(B, 1, self.n_kv_head, self.head_dim)
        cos, sin = cos_sin
        q, k = norm(apply_rotary_emb(q, cos, sin)), norm(apply_rotary_emb(k, cos, sin))
        # one indexed write into the whole cache (a compiled step does it in place; writing through
        # a view of one layer would make the compiler copy the cache every step)
        if pos.size(0) == 1:
            cache[pos.new_full((1,), self.layer_idx), :, :, :, pos] = torch.stack((k[:, 0], v[:, 0]))[None]
        else:  # each row at its own position: row b's k, v at cache[layer, :, b, :, pos[b]]
            rows = torch.arange(B, device=pos.device)
            cache[self.layer_idx, :, rows, :, pos] = torch.stack((k[:, 0], v[:, 0]), dim=1).to(cache.dtype)
        W = window.size(0)
        k_seen, v_seen = cache[self.layer_idx, 0, :, :, :W], cache[self.layer_idx, 1, :, :, :W]  # (B, H_kv, W, D)
        # One query per row: plain matmuls, the softmax's normalization applied after the second
        # (Inductor turns softmax-then-matmul back into the flash kernel, ~10x slower for one query).
        # Query head h reads key/value head h // group, as scaled_dot_product_attention's enable_gqa.
        q = q.view(B, self.n_kv_head, self.n_head // self.n_kv_head, self.head_dim)
        scores = (q @ k_seen.transpose(-1, -2)).float() * self.head_dim**-0.5  # (B, H_kv, group, W)
        if masked:
            scores = scores.masked_fill((window > pos[:, None])[:, None, None, :], float("-inf"))
        weights = (scores - scores.amax(dim=-1, keepdim=True)).exp()
        y = (weights.to(v_seen.dtype) @ v_seen).float() / weights.sum(dim=-1, keepdim=True)  # (B, H_kv, group, D)
        return decode_linear(y.to(x.dtype).view(B, 1, C), self.c_proj.weight, matvec)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.relu(self.c_fc(x)).square())

    def decode_step(self, x: torch.Tensor, matvec: bool) -> torch.Tensor:
        return decode_linear(F.relu(decode_linear(x, self.c_fc.weight, matvec)).square(), self.c_proj.weight, matvec)


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.attn = CausalSelfAttention(config, layer_idx)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor], kv_cache: KVCache | None) -> torch.Tensor:
        x = x + self.attn(norm(x), cos_sin, kv_cache)
        return x + self.mlp(norm(x))

    def decode_step(self, x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor], pos: torch.Tensor,
                    window: torch.Tensor, cache: torch.Tensor, masked: bool, matvec: bool) -> torch.Tensor:
        x = x + self.attn.decode_step(norm(x), cos_sin, pos, window, cache, masked, matvec)
        return x + self.mlp.decode_step(norm(x), matvec)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(config.vocab_size, config.n_embd),
                "h": nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            }
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.smear_lambda = nn.Parameter(torch.ones(1)) if config.smear else None
        # the loss in chunks of rows, never the full logits (False: the plain expression, for benchmarks)
        self.chunked_loss = True
        # rotary tables cover 10x the training length so generation can run past it
        self.rotary_seq_len = config.sequence_len * 10
        head_dim = config.n_embd // config.n_head
        cos, sin = self._rotary_tables(self.rotary_seq_len, head_dim)
        # not in the state dict: derived from the config
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def _rotary_tables(self, seq_len: int, head_dim: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = 1.0 / (ROTARY_BASE ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
        angles = torch.outer(torch.arange(seq_len, dtype=torch.float32, device=device), inv_freq)
        return angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]  # (1, T, 1, D/2)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Fresh weights: embeddings N(0, 1); linears uniform-variance by fan-in; output projections and head zero."""
        nn.init.normal_(self.transformer.wte.weight, mean=0.0, std=1.0)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                fan_out, fan_in = module.weight.shape
                std = 1.0 / math.sqrt(fan_in) * min(1.0, math.sqrt(fan_out / fan_in))
                nn.init.normal_(module.weight, mean=0.0, std=std)
        nn.init.zeros_(self.lm_head.weight)
        for block in self.transformer.h:
            nn.init.zeros_(block.attn.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)
        if self.smear_lambda is not None:
            nn.init.ones_(self.smear_lambda)
        head_dim = self.config.n_embd // self.config.n_head
        self.cos, self.sin = self._rotary_tables(self.rotary_seq_len, head_dim, device=self.lm_head.weight.device)

    def get_device(self) -> torch.device:
        return self.transformer.wte.weight.device

    @property
    def max_context(self) -> int:
        """The most positions one sequence can reach (prompt and generation): the rotary tables' length."""
        return self.cos.size(1)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def estimate_flops(self) -> float:
        """Training FLOPs per token: 6 per non-embedding parameter, plus attention's 12·L·H·D·T."""
        n_embedding = self.transformer.wte.weight.numel()
        cfg = self.config
        head_dim = cfg.n_embd // cfg.n_head
        return 6 * (self.num_params() - n_embedding) + 12 * cfg.n_layer * cfg.n_head * head_dim * cfg.sequence_len

    def setup_optimizers(self, unembedding_lr: float = 0.004, embedding_lr: float = 0.2, matrix_lr: float = 0.02,
                         weight_decay: float = 0.0) -> list[torch.optim.Optimizer]:
        """AdamW for the embedding and head, Muon for every matrix in the blocks; distributed under torchrun."""
        from nanochat.optimizers import build_adamw, build_muon

        matrix_params = list(self.transformer.h.parameters())
        # AdamW learning rates were tuned at width 768; scale them as 1/sqrt(width)
        scale = (self.config.n_embd / 768) ** -0.5
        adam_groups = [
            {"params": [self.lm_head.weight], "lr": unembedding_lr * scale},
            {"params": [self.transformer.wte.weight], "lr": embedding_lr * scale},
        ]
        if self.smear_lambda is not None:  # one number: the head's small rate moves it slowly (1 -> 0.64 in the CPU run)
            adam_groups.append({"params": [self.smear_lambda], "lr": unembedding_lr * scale})
        ddp = get_dist_info()[0]
        optimizers = [
            build_adamw(adam_groups, betas=(0.8, 0.95), eps=1e-10, weight_decay=weight_decay, distributed=ddp),
            build_muon(matrix_params, lr=matrix_lr, momentum=0.95, distributed=ddp),
        ]
        for opt in optimizers:
            for group in opt.param_groups:
                group["initial_lr"] = group["lr"]
        return optimizers

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, kv_cache: KVCache | None = None,
                loss_reduction: str = "mean") -> torch.Tensor:
        """Logits (B, T, vocab) in fp32, or the cross-entropy loss when targets are given (-1 is ignored)."""
        B, T = idx.size()
        t0 = 0 if kv_cache is None else kv_cache.get_pos()
        if t0 + T > self.max_context:
            raise ValueError(f"sequence of {t0 + T} tokens is longer than the rotary tables ({self.max_context})")
        x = self.transformer.wte(idx)
        if self.smear_lambda is not None:
            before = None if kv_cache is None or kv_cache.last_ids is None else self.transformer.wte(kv_cache.last_ids)
            x = self.smear(x, before)
        if kv_cache is not None:
            kv_cache.last_ids = idx[:, -1:]
        # under autocast the residual stream runs in the autocast dtype: an embedding lookup is not
        # autocast, and an fp32 residual would make every block save fp32 activations for backward
        # (~4·n_embd·n_layer extra bytes a token: 6.6 GB at d20, batch 32×2048). The weights stay fp32.
        if torch.is_autocast_enabled(x.device.type):
            x = x.to(torch.get_autocast_dtype(x.device.type))
        cos_sin = self.cos[:, t0 : t0 + T].to(x.dtype), self.sin[:, t0 : t0 + T].to(x.dtype)
        x = norm(x)
        for block in self.transformer.h:
            x = block(x, cos_sin, kv_cache)
        x = norm(x)
        if targets is not None and self.chunked_loss and not torch.compiler.is_compiling():
            # the loss without the (B·T, vocab) fp32 logits (see nanochat.head_loss); under
            # torch.compile the plain expression below is kept, which Inductor fuses itself
            return chunked_head_loss(x.reshape(B * T, -1), self.lm_head.weight, targets.reshape(-1), LOGIT_SOFTCAP,
                                     loss_reduction)
        logits = self.lm_head(x).float()
        logits = soft_cap(logits)
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1, reduction=loss_reduction)

    def smear(self, x: torch.Tensor, before: torch.Tensor | None) -> torch.Tensor:
        """
        Token embeddings x (B, T, C) plus smear_lambda (one learned number, 1 at init) times the
        previous token's embedding; before (B, 1, C) is the one before x[:, 0] (None at a
        sequence's start). A word then carries the token before it (the letter labelling a
        choice, the previous word) into the first layer's keys and values, which otherwise takes
        an attention head learned for it: the first half of an induction or lookup circuit for
        free. (A gate computed from each token instead of one number learned to close in our
        drills, and the lookup was not learned.)
        """
        start = torch.zeros_like(x[:, :1]) if before is None else before
        previous = torch.cat((start, x[:, :-1]), dim=1)
        return x + self.smear_lambda * previous

    def decode_step(self, idx: torch.Tensor, pos: torch.Tensor, window: torch.Tensor, cache: torch.Tensor,
                    masked: bool = False, matvec: bool = False, last_ids: torch.Tensor | None = None) -> torch.Tensor:
        """
        One decoding step in a form a compiler can capture once and replay: every row's next
        token idx (B, 1) at position pos (a (1,) long tensor, or (B,): a position per row),
        written in place into cache (a KVCache's tensor), attention over its first len(window)
        positions (see CausalSelfAttention.decode_step; matvec: see decode_linear). Returns the
        (B, vocab) fp32 logits, as forward(idx, kv_cache=...)[:, -1] does up to rounding.
        last_ids (B, 1): each row's token before idx, which a smear model needs.
        """
        x = self.transformer.wte(idx)
        if self.smear_lambda is not None:
            if last_ids is None:
                raise ValueError("a smear model's decode step needs last_ids, each row's previous token")
            x = self.smear(x, self.transformer.wte(last_ids))
        x = norm(x)
        # (1 or B, 1, 1, D/2): each row rotated by its own position
        cos_sin = tuple(t.index_select(1, pos).transpose(0, 1).to(x.dtype) for t in (self.cos, self.sin))
        for block in self.transformer.h:
            x = block.decode_step(x, cos_sin, pos, window, cache, masked, matvec)
        logits = decode_linear(norm(x)[:, -1], self.lm_head.weight, matvec).float()
        return soft_cap(logits)

    @torch.inference_mode()
    def generate(self, tokens: list[int], max_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 seed: int = 42) -> Iterator[int]:
        """Sample one sequence token by token with a full forward each step (the reference the Engine is checked against)."""
        device = self.get_device()
        rng = torch.Generator(device=device)
        rng.manual_seed(seed)
        ids = torch.tensor([tokens], dtype=torch.long, device=device)
        for _ in range(max_tokens):
            logits = self.forward(ids)[:, -1, :]
            next_id = sample_next_token(logits, rng, temperature, top_k)
            ids = torch.cat((ids, next_id), dim=1)
            yield next_id.item()


# below this a temperature samples the argmax anyway (for any logit gap over ~1e-4), and much
# below it dividing the logits overflows; so it is greedy
GREEDY_BELOW = 1e-6


def sample_next_token(logits: torch.Tensor, rng: torch.Generator, temperature: float = 1.0,
                      top_k: int | None = None) -> torch.Tensor:
    """(B, vocab) logits → (B, 1) token ids; temperature 0 (or below GREEDY_BELOW) is greedy."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature < GREEDY_BELOW:  # logits / 1e-300 overflow to inf, and softmax then gives NaN
        return logits.argmax(dim=-1, keepdim=True)
    if top_k is not None and top_k > 0:
        k = min(top_k, logits.size(-1))
        values, indices = torch.topk(logits, k, dim=-1)
        return indices.gather(1, _sample_from_probs(F.softmax(values / temperature, dim=-1), rng))
    return _sample_from_probs(F.softmax(logits / temperature, dim=-1), rng)


def _sample_from_probs(probs: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """
    Inverse-CDF sampling: one uniform number per row instead of one per vocabulary entry
    (torch.multinomial's way), which makes sampling several times cheaper at decode time.
    """
    u = torch.rand(probs.size(0), 1, generator=rng, device=probs.device, dtype=probs.dtype)
    # right=True: the first token whose cumulative probability exceeds u, never a zero-probability one
    choice = torch.searchsorted(probs.cumsum(dim=-1), u, right=True)
    return choice.clamp_(max=probs.size(-1) - 1)
