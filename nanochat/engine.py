"""
Fast inference: prefill the prompt once, copy its KV cache to every sample, then decode all
samples together, one token per step. The engine also runs the model's python tool: when
a row writes <|python_start|>expr<|python_end|>, the calculator's result is forced into
that row as <|output_start|>result<|output_end|> (mask 0: the model did not choose them).

generate_many does the same for several prompts at once (RL's problems of a step): each prompt is
prefilled at its own length, and all their samples are decoded as one batch, every row at its
own position (GPT.decode_step with a position per row, eager).

Decoding one prompt runs one of two paths (Engine.decode_path says which, and why):
- eager: model.forward with the KV cache, one op at a time (the reference);
- compiled: GPT.decode_step captured by torch.compile. On CPU the weights are frozen into
  the graph, and there are two graphs, whatever the lengths: one row (each linear layer a
  product-and-sum Inductor streams the weights for) and any larger batch (weights packed for
  oneDNN). On CUDA (compile="on") the cache is a fixed size (the length rounded up to a power
  of two), the step masks what it has not reached, and it replays as a CUDA graph.
Sampling, the tool's bookkeeping and the host sync stay outside the graph and draw from the
same torch.Generator, so a seed gives the same tokens on both paths up to the logits'
rounding (~1e-6): greedy tokens match, and a sampled row can part only where its uniform draw
falls within that rounding of a cumulative probability. compile="auto" (the default) compiles
a CPU graph once the engine has decoded COMPILE_AFTER_S seconds at its batch size with
unchanged weights: an interactive chat or an RL run, whose weights change every step, stays
eager; a long evaluation or a benchmark compiles.
"""

from __future__ import annotations

import threading
import time
import types
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from nanochat.calculator import use_calculator
from nanochat.common import logger
from nanochat.errors import NanochatError
from nanochat.gpt import GPT, KVCache, sample_next_token

# A reply ends at the end of the assistant's turn, at a new document (the tokenizer's BOS), and
# also where the model starts writing another turn (the user's, or a second assistant's): what
# follows is not its reply. RL rollouts, evaluations and the chat UI all stop on this one set.
STOP_TOKENS = ("<|assistant_end|>", "<|user_start|>", "<|user_end|>", "<|assistant_start|>")


COMPILE_MODES = ("auto", "on", "off")
# compile="auto" on CPU: compile a graph once this much eager decoding at its batch size has been
# spent on the same weights. A graph takes 12-15 s to compile on 2 CPU cores and then saves more
# than half of each step's time (README, Benchmarks): it is repaid after a comparable amount of
# decoding, and deciding this way never costs more than about twice the better choice.
COMPILE_AFTER_S = 20.0


class ContextFullError(NanochatError, ValueError):
    """The prompt leaves no room for a reply in the model's context."""


def weights_signature(model: torch.nn.Module) -> tuple:
    """Changes when any weight or buffer is replaced or modified in place (an optimizer step, load_state_dict)."""
    return tuple((t.data_ptr(), t._version) for t in (*model.parameters(), *model.buffers()))


def _decode(model: GPT, idx: torch.Tensor, pos: torch.Tensor, window: torch.Tensor, cache: torch.Tensor,
            masked: bool, matvec: bool, last_ids: torch.Tensor | None) -> torch.Tensor:
    return model.decode_step(idx, pos, window, cache, masked, matvec, last_ids)


def _last_ids(model: GPT, cache: KVCache) -> torch.Tensor | None:
    """What a decode step needs besides the new tokens: each row's previous token, for a smear model only."""
    return cache.last_ids if model.config.smear else None


def _own_forward(model: torch.nn.Module) -> bool:
    """A model that is not a GPT, or overrides its forward or decode step: it has no decode step to batch or compile."""
    return not isinstance(model, GPT) or type(model).forward is not GPT.forward \
        or type(model).decode_step is not GPT.decode_step


def _cpu_graph(rows: int) -> str:
    return "batch 1" if rows == 1 else "batch 2+"


# one compilation at a time: freezing is switched on in Inductor's (process-wide) config while
# dynamo traces and Inductor compiles
_COMPILE_LOCK = threading.Lock()


class CompiledDecoder:
    """
    GPT.decode_step compiled for one model's current weights. On CPU the weights are frozen
    into the graph (weights_signature tells when it is stale) and there are two graphs: one
    row (matrix-vector products Inductor writes itself) and a symbolic batch (weights packed
    for oneDNN), both with symbolic cache and window lengths. With static shapes (CUDA's
    default) the cache has a fixed length per power of two and the step masks what it has not
    reached, so it can replay as a CUDA graph. Each instance compiles its own copy of the step
    function, so its graphs, and dynamo's recompile limit, are its own and are freed with it.
    """

    def __init__(self, model: GPT, static: bool | None = None) -> None:
        self.model = model
        self.device = model.get_device()
        self.cuda = self.device.type == "cuda"
        self.static = self.cuda if static is None else static
        self.freeze = not self.cuda  # CUDA graphs read the live weights; on CPU frozen ones are packed
        self.signature = weights_signature(model)
        fresh = types.FunctionType(_decode.__code__.replace(), _decode.__globals__, _decode.__name__)
        if self.static:
            self.fn = torch.compile(fresh, fullgraph=True, dynamic=False, mode="reduce-overhead" if self.cuda else None)
        else:
            self.fn = torch.compile(fresh, fullgraph=True)
        self.compile_s: dict[str, float] = {}  # per graph, its first call's time, compilation included
        self._static_cache: tuple[tuple, KVCache] | None = None  # kept for the next call (static shapes)
        self._static_busy = False

    def _inductor_config(self) -> dict:
        if self.cuda:
            return {}
        # frozen weights, and the step's kernel calls made from C++ rather than Python (~5% faster a
        # step on 2 CPU cores, ~2 s more to compile)
        return {"freezing": True, "cpp_wrapper": True}

    def describe(self) -> str:
        how = "CUDA graph" if self.cuda and self.static else "inductor"
        return f"compiled ({how}{', frozen weights' if self.freeze else ''}{', static shapes' if self.static else ''})"

    def stale(self, model: GPT) -> bool:
        return model is not self.model or weights_signature(model) != self.signature

    def graph(self, rows: int, capacity: int) -> str:
        """The graph a call runs: CPU has one for a single row and one for any batch; static shapes one per shape."""
        if self.static:
            return f"batch {rows}, cache {capacity}"
        return _cpu_graph(rows)

    def new_cache(self, rows: int, needed: int, dtype: torch.dtype) -> KVCache:
        cfg = self.model.config
        shape = (cfg.n_kv_head, cfg.n_embd // cfg.n_head, cfg.n_layer)
        if not self.static:
            # one spare position: the attended window is then always shorter than the cache, and the
            # graph is not specialized (and recompiled) for the step where it would reach the end
            cache = KVCache(rows, shape[0], needed + 1, *shape[1:], device=self.device, dtype=dtype)
            if rows > 1:
                torch._dynamo.maybe_mark_dynamic(cache.cache, 2)  # one graph for every batch
            torch._dynamo.maybe_mark_dynamic(cache.cache, 4)  # and cache length
            return cache
        # a graph per (rows, length rounded up to a power of two); CUDA graphs replay fixed
        # addresses, so the last cache is kept for the next call of the same shape
        capacity = max(64, 1 << (needed - 1).bit_length())
        key = (rows, capacity, dtype)
        if self._static_cache is not None and self._static_cache[0] == key and not self._static_busy:
            cache = self._static_cache[1]
            cache.reset()
        else:  # a new shape, or the kept cache is in use by a generation still running
            cache = KVCache(rows, shape[0], capacity, *shape[1:], device=self.device, dtype=dtype)
            torch._dynamo.mark_static_address(cache.cache)
            if not self._static_busy:
                self._static_cache = (key, cache)
        self._static_busy = self._static_busy or cache is self._static_cache[1]
        return cache

    def release(self, cache: KVCache) -> None:
        """A generation that used cache is over."""
        if self._static_cache is not None and cache is self._static_cache[1]:
            self._static_busy = False

    def __call__(self, ids: torch.Tensor, pos: torch.Tensor, window: torch.Tensor, cache: KVCache) -> torch.Tensor:
        rows = ids.size(0)
        last_ids = _last_ids(self.model, cache)
        if last_ids is not None and rows > 1 and not self.static:
            torch._dynamo.maybe_mark_dynamic(last_ids, 0)
        args = (self.model, ids, pos, window, cache.cache, self.static, rows == 1 and not self.static, last_ids)
        graph = self.graph(rows, cache.cache.size(4))
        if graph in self.compile_s:
            return self.fn(*args)
        # A graph's first call compiles it. Frozen, dynamo guards on the weights' identity and
        # Inductor folds them in (stale() tells when they change in place). An unforeseen recompile
        # (a guard that fails, e.g. a window past 4,096 positions) is not frozen: slower, and still
        # right, as it reads the weights it is given.
        with _COMPILE_LOCK, torch._inductor.config.patch(self._inductor_config()):
            t0 = time.perf_counter()
            logits = self.fn(*args)
            self.compile_s[graph] = time.perf_counter() - t0
        return logits


@dataclass
class RowState:
    """One sample's tool-use state."""

    forced: deque[int] = field(default_factory=deque)  # tokens to emit next instead of sampling
    python_tokens: list[int] | None = None  # collecting a tool call since <|python_start|>


class Engine:
    def __init__(self, model: GPT, tokenizer, compile: str = "auto") -> None:
        """compile: 'auto', 'on' or 'off', how the decode step runs (see the module's docstring)."""
        if compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {COMPILE_MODES}, not {compile!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.compile = compile
        self.decoder: CompiledDecoder | None = None
        self.decode_path = "eager (nothing decoded yet)"
        self._compile_failed: str | None = None
        self._eager_s: dict[str, float] = {}  # per CPU graph, eager decoding time spent on the weights of _eager_signature
        self._eager_signature: tuple | None = None
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

    def _room(self, prompt_len: int, max_tokens: int | None) -> int:
        """How many tokens can follow a prompt of prompt_len: max_tokens, or fewer where the context ends."""
        limit = self.model.max_context - prompt_len
        if limit <= 0:
            raise ContextFullError(f"prompt of {prompt_len} tokens leaves no room in the model's context")
        return limit if max_tokens is None else min(max_tokens, limit)

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
        max_tokens = self._room(len(tokens), max_tokens)
        prefill_cache = self._new_cache(1, len(tokens))
        ids = torch.tensor([tokens], dtype=torch.long, device=self.model.get_device())
        logits = self.model(ids, kv_cache=prefill_cache)[:, -1, :].expand(num_samples, -1)
        forward, release = self._decode_forward(prefill_cache, num_samples, len(tokens) + max_tokens)
        del prefill_cache
        yield from self._decode_loop(logits, forward, release, max_tokens, temperature, top_k, seed)

    @torch.inference_mode()
    def generate_many(self, prompts: list[list[int]], num_samples: list[int], max_tokens: int | None = None,
                      temperature: float = 1.0, top_k: int | None = None,
                      seed: int = 42) -> Iterator[tuple[list[int], list[int]]]:
        """
        generate() for several prompts at once: num_samples[j] rows answer prompts[j], in order,
        all decoded as one batch (a step costs little more for more rows, so this is faster than
        a batch per prompt). Each prompt is prefilled once at its own length and each row then
        stands at its own position (GPT.decode_step with a position per row, masked past it).
        max_tokens counts for every row. One prompt is generate(prompts[0], num_samples[0]).
        """
        if len(prompts) != len(num_samples) or not prompts or min(num_samples) < 1:
            raise ValueError("generate_many needs one count of at least 1 per prompt")
        if len(prompts) == 1:
            yield from self.generate(prompts[0], num_samples[0], max_tokens, temperature, top_k, seed)
            return
        if not all(prompts):
            raise ValueError("generate_many needs at least one token in every prompt")
        model, device = self.model, self.model.get_device()
        top = max(len(p) for p in prompts) - 1  # the furthest row's position
        max_tokens = self._room(top + 1, max_tokens)
        if _own_forward(model):
            yield from self._one_prompt_at_a_time(prompts, num_samples, max_tokens, temperature, top_k, seed)
            return
        cache = self._new_cache(sum(num_samples), top + 1 + max_tokens)
        first_logits, row = [], 0
        for prompt, n in zip(prompts, num_samples):
            prefill_cache = self._new_cache(1, len(prompt))
            ids = torch.tensor([prompt], dtype=torch.long, device=device)
            first_logits.append(model(ids, kv_cache=prefill_cache)[:, -1, :].expand(n, -1))
            cache.cache[:, :, row : row + n, :, : len(prompt)] = prefill_cache.cache[:, :, :, :, : len(prompt)]
            row += n
        row_prompts = [p for p, n in zip(prompts, num_samples) for _ in range(n)]
        cache.last_ids = torch.tensor([p[-1] for p in row_prompts], device=device)[:, None]
        pos = torch.tensor([len(p) for p in row_prompts], device=device)
        positions = torch.arange(cache.cache.size(4), device=device)
        self.decode_path = "eager (prompts of different lengths: a position per row)"

        def forward(next_ids: torch.Tensor) -> torch.Tensor:
            nonlocal pos, top
            top += 1
            # the window reaches the furthest row; each row is masked past its own position
            logits = model.decode_step(next_ids, pos, positions[: top + 1], cache.cache, masked=True,
                                       last_ids=_last_ids(model, cache))
            pos, cache.last_ids = pos + 1, next_ids
            return logits

        yield from self._decode_loop(torch.cat(first_logits), forward, lambda: None, max_tokens, temperature, top_k, seed)

    def _one_prompt_at_a_time(self, prompts: list[list[int]], num_samples: list[int], max_tokens: int,
                              temperature: float, top_k: int | None, seed: int) -> Iterator[tuple[list[int], list[int]]]:
        """
        generate_many for a model with its own forward (no decode step by row): each prompt's
        generate() in turn, its columns laid side by side. A prompt whose rows all stopped early
        is padded with stop tokens, which its rows, already stopped, ignore.
        """
        streams = [list(self.generate(p, n, max_tokens, temperature, top_k, seed + j))
                   for j, (p, n) in enumerate(zip(prompts, num_samples))]
        stop = self.tokenizer.encode_special("<|assistant_end|>")
        for step in range(max(len(stream) for stream in streams)):
            column, masks = [], []
            for stream, n in zip(streams, num_samples):
                tokens, token_masks = stream[step] if step < len(stream) else ([stop] * n, [1] * n)
                column += tokens
                masks += token_masks
            yield column, masks

    def _decode_loop(self, logits: torch.Tensor, forward: Callable[[torch.Tensor], torch.Tensor],
                     release: Callable[[], None], max_tokens: int, temperature: float, top_k: int | None,
                     seed: int) -> Iterator[tuple[list[int], list[int]]]:
        """Sample from the first logits (B, vocab), then step forward until every row stops or max_tokens; release at the end."""
        device = logits.device
        rng = torch.Generator(device=device)
        rng.manual_seed(seed)
        num_rows = logits.size(0)
        rows = [RowState() for _ in range(num_rows)]
        # the tokens that change a row's state; a step where no row sampled one, and no row is
        # inside a tool call or has output queued, needs no per-row Python at all
        markers = self.stop_tokens | {self.python_start, self.python_end}
        busy: set[int] = set()  # rows inside a tool call or with forced tokens queued
        done: set[int] = set()
        try:
            for step in range(max_tokens):
                next_ids = sample_next_token(logits, rng, temperature, top_k)  # (B, 1), fed back as is when nothing is forced
                column = next_ids[:, 0].tolist()  # the step's one device-to-host sync
                masks = [1] * num_rows
                if busy or not markers.isdisjoint(column):
                    forced_any = self._bookkeep(rows, column, masks, markers, busy, done)
                    if forced_any:
                        next_ids = torch.tensor(column, dtype=torch.long, device=device)[:, None]
                yield column, masks
                if len(done) == num_rows or step == max_tokens - 1:
                    return
                logits = forward(next_ids)
        finally:
            release()

    def _choose_path(self, num_samples: int) -> CompiledDecoder | None:
        """The compiled decoder for this call, or None to decode eagerly; sets decode_path to say why."""
        model = self.model
        if self.decoder is not None and self.decoder.stale(model):
            self.decoder = None  # the weights changed: its graph holds the old ones
        reason = None
        if self.compile == "off":
            reason = "compile='off'"
        elif self._compile_failed:
            reason = f"compiling failed: {self._compile_failed}"
        elif _own_forward(model):
            reason = f"{type(model).__name__} has its own forward"
        elif torch.is_autocast_enabled(model.get_device().type):
            reason = "autocast is on (the step is compiled for the weights' own dtype)"
        elif model.get_device().type not in ("cpu", "cuda"):
            reason = f"no compiled step for {model.get_device().type}"
        elif self.compile == "auto" and model.get_device().type == "cuda":
            reason = "compile='auto' compiles on CPU only (the CUDA graph path is not measured yet: compile='on')"
        elif self.compile == "auto" and _cpu_graph(num_samples) not in (self.decoder.compile_s if self.decoder else {}):
            # each graph (batch 1, larger batches) once its share of eager decoding has paid for it
            signature = weights_signature(model)
            if signature != self._eager_signature:
                self._eager_signature, self._eager_s = signature, {}
            spent = self._eager_s.get(_cpu_graph(num_samples), 0.0)
            if spent < COMPILE_AFTER_S:
                reason = (f"compile='auto': {spent:.1f} s decoded at this batch size with these weights, "
                          f"compiles after {COMPILE_AFTER_S:g} s")
        if reason is not None:
            self.decode_path = f"eager ({reason})"
            return None
        if self.decoder is None:
            self.decoder = CompiledDecoder(model)
            logger.info("engine: compiling the decode step (%s, %s)", self.decoder.device, self._cache_dtype())
        self.decode_path = self.decoder.describe()
        return self.decoder

    def _decode_forward(self, prefill_cache: KVCache, num_samples: int,
                        needed: int) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[], None]]:
        """
        The decode step for one generate call, (B, 1) next tokens -> (B, vocab) logits, its cache
        filled from the prompt's; and what to call when the call is over (it frees a kept cache).
        """
        decoder = self._choose_path(num_samples)
        if decoder is None:
            cache = self._new_cache(num_samples, needed)
            cache.prefill(prefill_cache)
            return self._eager_forward(cache, num_samples), lambda: None
        cache = decoder.new_cache(num_samples, needed, self._cache_dtype())
        cache.prefill(prefill_cache)
        positions = torch.arange(cache.cache.size(4), device=cache.cache.device)
        graph = decoder.graph(num_samples, cache.cache.size(4))
        eager: Callable[[torch.Tensor], torch.Tensor] | None = None  # set if compiling fails

        def forward(ids: torch.Tensor) -> torch.Tensor:
            nonlocal eager
            if eager is not None:
                return eager(ids)
            if not decoder.static and num_samples > 1:
                torch._dynamo.maybe_mark_dynamic(ids, 0)
            pos = cache.pos
            if decoder.static:
                window = positions  # the whole (fixed) cache, masked past pos
            else:
                window = positions[: pos + 1]
                torch._dynamo.maybe_mark_dynamic(window, 0)
            try:
                logits = decoder(ids, positions[pos : pos + 1], window, cache)
            except Exception as e:  # noqa: BLE001  a compiler that cannot run here: decode on eagerly
                if graph in decoder.compile_s:
                    raise
                self._compile_failed = f"{type(e).__name__}: {e}".splitlines()[0][:200]
                self.decoder = None
                self.decode_path = f"eager (compiling failed: {self._compile_failed})"
                logger.warning("engine: compiling the decode step failed, decoding eagerly: %s", self._compile_failed)
                eager = self._eager_forward(cache, num_samples)
                return eager(ids)
            cache.pos, cache.last_ids = pos + 1, ids
            return logits

        return forward, lambda: decoder.release(cache)

    def _eager_forward(self, cache: KVCache, num_samples: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """model.forward with the cache, one token per row; the time it takes counts towards compile='auto'."""
        model, graph = self.model, _cpu_graph(num_samples)

        def forward(next_ids: torch.Tensor) -> torch.Tensor:
            t0 = time.perf_counter()
            logits = model(next_ids, kv_cache=cache)[:, -1, :]
            self._eager_s[graph] = self._eager_s.get(graph, 0.0) + time.perf_counter() - t0
            return logits

        return forward

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
        rows, masks, _ = self.generate_rows([tokens], [num_samples], **kwargs)
        return rows, masks

    def generate_rows(self, prompts: list[list[int]], num_samples: list[int], keep_stop: bool = False,
                      **kwargs) -> tuple[list[list[int]], list[list[int]], list[bool]]:
        """
        generate_batch for several prompts decoded together (generate_many): num_samples[j] rows
        answer prompts[j], in order, as (rows, masks, truncated). A row that stopped ends with its
        stop token only when keep_stop (mask 1: the model sampled it); truncated says which rows
        reached max_tokens without stopping.
        """
        rows = [list(prompt) for prompt, n in zip(prompts, num_samples) for _ in range(n)]
        masks = [[0] * len(row) for row in rows]
        stopped = [False] * len(rows)
        for column, column_masks in self.generate_many(prompts, num_samples, **kwargs):
            for i, (token, mask) in enumerate(zip(column, column_masks)):
                if stopped[i]:
                    continue
                if token in self.stop_tokens:
                    stopped[i] = True
                    if not keep_stop:
                        continue
                rows[i].append(token)
                masks[i].append(mask)
            if all(stopped):
                break
        return rows, masks, [not s for s in stopped]
