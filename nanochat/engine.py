"""
Fast inference: prefill the prompt once, copy its KV cache to every sample, then decode all
samples together, one token per step. The engine also runs the model's python tool: when
a row writes <|python_start|>expr<|python_end|>, the calculator's result is forced into
that row as <|output_start|>result<|output_end|> (mask 0: the model did not choose them).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from nanochat.calculator import use_calculator
from nanochat.errors import NanochatError
from nanochat.gpt import GPT, KVCache, sample_next_token

# A reply ends at the end of the assistant's turn, at a new document (the tokenizer's BOS), and
# also where the model starts writing another turn (the user's, or a second assistant's): what
# follows is not its reply. RL rollouts, evaluations and the chat UI all stop on this one set.
STOP_TOKENS = ("<|assistant_end|>", "<|user_start|>", "<|user_end|>", "<|assistant_start|>")


class ContextFullError(NanochatError, ValueError):
    """The prompt leaves no room for a reply in the model's context."""


@dataclass
class RowState:
    """One sample's tool-use state."""

    forced: deque[int] = field(default_factory=deque)  # tokens to emit next instead of sampling
    python_tokens: list[int] | None = None  # collecting a tool call since <|python_start|>


class Engine:
    def __init__(self, model: GPT, tokenizer) -> None:
        self.model = model
        self.tokenizer = tokenizer
        special = tokenizer.encode_special
        self.python_start, self.python_end = special("<|python_start|>"), special("<|python_end|>")
        self.output_start, self.output_end = special("<|output_start|>"), special("<|output_end|>")
        self.stop_tokens = {tokenizer.get_bos_token_id(), *(special(name) for name in STOP_TOKENS)}

    def _new_cache(self, batch_size: int, seq_len: int) -> KVCache:
        cfg = self.model.config
        return KVCache(batch_size, cfg.n_kv_head, seq_len, cfg.n_embd // cfg.n_head, cfg.n_layer,
                       device=self.model.get_device(), dtype=self._cache_dtype())

    def _cache_dtype(self) -> torch.dtype:
        device_type = self.model.get_device().type
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
        return self.model.lm_head.weight.dtype

    def _tool_step(self, row: RowState, token: int) -> None:
        """Follow a row's tool calls: collect the expression, then queue the calculator's answer."""
        if token == self.python_start:
            row.python_tokens = []
        elif token == self.python_end and row.python_tokens is not None:
            result = use_calculator(self.tokenizer.decode(row.python_tokens))
            row.python_tokens = None
            if result is not None:
                row.forced.extend([self.output_start, *self.tokenizer.encode(result), self.output_end])
        elif row.python_tokens is not None:
            row.python_tokens.append(token)

    @torch.inference_mode()
    def generate(self, tokens: list[int], num_samples: int = 1, max_tokens: int | None = None,
                 temperature: float = 1.0, top_k: int | None = None, seed: int = 42) -> Iterator[tuple[list[int], list[int]]]:
        """
        Yield, per decoding step, (token_column, token_masks): one token per sample, and 1 where
        it was sampled or 0 where it was forced. Finished rows keep yielding (ignore them); the
        stream ends when every row has stopped or after max_tokens steps.
        """
        if not tokens:
            raise ValueError("generate needs at least one prompt token")
        device = self.model.get_device()
        rng = torch.Generator(device=device)
        rng.manual_seed(seed)
        limit = self.model.max_context - len(tokens)
        if limit <= 0:
            raise ContextFullError(f"prompt of {len(tokens)} tokens leaves no room in the model's context")
        max_tokens = limit if max_tokens is None else min(max_tokens, limit)

        prefill_cache = self._new_cache(1, len(tokens))
        ids = torch.tensor([tokens], dtype=torch.long, device=device)
        logits = self.model(ids, kv_cache=prefill_cache)[:, -1, :].expand(num_samples, -1)
        cache = self._new_cache(num_samples, len(tokens) + max_tokens)
        cache.prefill(prefill_cache)
        del prefill_cache

        rows = [RowState() for _ in range(num_samples)]
        # the tokens that change a row's state; a step where no row sampled one, and no row is
        # inside a tool call or has output queued, needs no per-row Python at all
        markers = self.stop_tokens | {self.python_start, self.python_end}
        busy: set[int] = set()  # rows inside a tool call or with forced tokens queued
        done: set[int] = set()
        for _ in range(max_tokens):
            next_ids = sample_next_token(logits, rng, temperature, top_k)  # (B, 1), fed back as is when nothing is forced
            column = next_ids[:, 0].tolist()  # the step's one device-to-host sync
            masks = [1] * num_samples
            if busy or not markers.isdisjoint(column):
                forced_any = self._bookkeep(rows, column, masks, markers, busy, done)
                if forced_any:
                    next_ids = torch.tensor(column, dtype=torch.long, device=device)[:, None]
            yield column, masks
            if len(done) == num_samples:
                return
            logits = self.model(next_ids, kv_cache=cache)[:, -1, :]

    def _bookkeep(self, rows: list[RowState], column: list[int], masks: list[int], markers: set[int],
                  busy: set[int], done: set[int]) -> bool:
        """
        Only the rows that need it: put queued tool output in place of sampled tokens (mask 0),
        mark rows that stopped, follow tool calls. Edits column and masks in place; True when
        a token was forced.
        """
        forced_any = False
        for i in sorted(busy.union(i for i, token in enumerate(column) if token in markers)):
            row = rows[i]
            if i in done:  # finished rows keep yielding samples; nothing follows from them
                continue
            if row.forced:
                column[i], masks[i] = row.forced.popleft(), 0
                forced_any = True
            token = column[i]
            if token in self.stop_tokens:
                done.add(i)
                busy.discard(i)
                continue
            self._tool_step(row, token)
            if row.forced or row.python_tokens is not None:
                busy.add(i)
            else:
                busy.discard(i)
        return forced_any

    def generate_batch(self, tokens: list[int], num_samples: int = 1, **kwargs) -> tuple[list[list[int]], list[list[int]]]:
        """
        Whole sequences (prompt + generated, stop token excluded) and their masks (0 on the
        prompt and on forced tool output, 1 on sampled tokens).
        """
        results = [list(tokens) for _ in range(num_samples)]
        masks = [[0] * len(tokens) for _ in range(num_samples)]
        done = [False] * num_samples
        for column, column_masks in self.generate(tokens, num_samples, **kwargs):
            for i, (token, mask) in enumerate(zip(column, column_masks)):
                if done[i]:
                    continue
                if token in self.stop_tokens:
                    done[i] = True
                    continue
                results[i].append(token)
                masks[i].append(mask)
            if all(done):
                break
        return results, masks
