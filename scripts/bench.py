"""
Benchmarks, printed as JSON. Speeds are reported with a baseline measured in the same run,
so ratios stay meaningful on a loaded or different machine.

    python -m scripts.bench tokenizer --vocab_size=65536 --text=synthetic
    python -m scripts.bench tokenizer --text=../shared/data/tinyshakespeare/input.txt
    python -m scripts.bench train --depth=4 --vocab_size=8192 --seq_len=512 --batch=8
    python -m scripts.bench decode --depth=4 --vocab_size=8192 --prompt_len=32 --new_tokens=128
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Iterator

import torch

from nanochat.common import run_main
from nanochat.engine import Engine, RowState
from nanochat.gpt import sample_next_token
from scripts.flags import ArgumentParser, positive_int


def load_documents(text: str, num_chars: int) -> list[str]:
    """'synthetic' draws documents from the offline twin; anything else is a text file split on blank lines."""
    if text == "synthetic":
        from nanochat.synthetic import make_document

        rng, docs, total = random.Random(0), [], 0
        while total < num_chars:
            docs.append(make_document(rng))
            total += len(docs[-1])
        return docs
    if not os.path.exists(text):
        raise SystemExit(f"error: no text file at {text}")
    with open(text, encoding="utf-8") as f:
        content = f.read()[:num_chars]
    return [doc for doc in content.split("\n\n") if doc]


def progress(message: str) -> None:
    """What the benchmark is doing now, on stderr: stdout stays one JSON document."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


def bench_tokenizer(args: argparse.Namespace) -> dict:
    from nanochat.tokenizer import train_tokenizer

    progress(f"reading {args.chars:,} characters of {args.text}")
    docs = load_documents(args.text, args.chars)
    chars = sum(len(d) for d in docs)
    progress(f"training a BPE tokenizer with vocab {args.vocab_size:,} on {chars:,} characters")
    tokenizer, train_s = train_tokenizer(docs, args.vocab_size)

    progress(f"encoding {len(docs):,} documents one by one")
    t0 = time.perf_counter()
    single = [tokenizer.encode(d) for d in docs]
    single_s = time.perf_counter() - t0
    threads = args.threads or os.cpu_count() or 1
    progress(f"encoding them as one batch on {threads} threads")
    t0 = time.perf_counter()
    batched = tokenizer.encode(docs, num_threads=threads)
    batch_s = time.perf_counter() - t0
    assert batched == single, "batch encoding differs from one-by-one encoding"
    num_tokens = sum(len(ids) for ids in single)
    num_bytes = sum(len(d.encode("utf-8")) for d in docs)
    return {
        "benchmark": "tokenizer",
        "text": args.text,
        "chars": chars,
        "vocab_size_asked": args.vocab_size,
        "vocab_size": tokenizer.get_vocab_size(),
        "train_s": train_s,
        "train_chars_per_s": chars / train_s,
        "encode_tokens": num_tokens,
        "bytes_per_token": num_bytes / num_tokens,
        "encode_single_thread_tokens_per_s": num_tokens / single_s,
        "encode_batch_threads": threads,
        "encode_batch_tokens_per_s": num_tokens / batch_s,
        "encode_batch_speedup_vs_single": single_s / batch_s,
    }


def _train_path(name: str) -> tuple[torch.dtype, bool, bool]:
    """A training path's name, '<dtype>[_compile][_plain_loss]', as (dtype, compiled, chunked loss)."""
    compiled, plain = "_compile" in name, name.endswith("_plain_loss")
    dtype_name = name.removesuffix("_plain_loss").removesuffix("_compile")
    if dtype_name not in ("float32", "bfloat16") or name != dtype_name + "_compile" * compiled + "_plain_loss" * plain:
        raise SystemExit(f"error: unknown training path {name!r} (want <float32|bfloat16>[_compile][_plain_loss])")
    if compiled and plain:  # head_loss is not traced: a compiled model always takes the plain loss
        raise SystemExit(f"error: {name!r}: a compiled step always uses the plain loss, name it {dtype_name}_compile")
    return getattr(torch, dtype_name), compiled, not plain and not compiled


def _learnable_batches(vocab_size: int, batch: int, seq_len: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """
    Rows of a random walk in which each token has 4 possible successors: a language a model learns
    within a hundred steps (its loss falls from ln V towards ln 4), unlike uniform random tokens.
    """
    g = torch.Generator().manual_seed(seed)
    successors = torch.randint(0, vocab_size, (vocab_size, 4), generator=torch.Generator().manual_seed(0))
    while True:
        rows = [torch.randint(0, vocab_size, (batch,), generator=g)]
        for _ in range(seq_len):
            rows.append(successors[rows[-1], torch.randint(0, 4, (batch,), generator=g)])
        data = torch.stack(rows, dim=1)
        yield data[:, :-1], data[:, 1:]


def bench_train(args: argparse.Namespace) -> dict:
    """
    Optimizer steps per second and peak memory of a fresh model on random tokens, per training
    path (dtype, compiled or eager, chunked or plain loss); same model and data; the first path
    is the baseline of every ratio. The paths' timed steps are interleaved, a few steps of each
    in turn and the median kept, so load from other processes hits them all alike. Then the
    default path and fp32 eager train for --loss_steps steps on learnable data from the same
    initialization, and their held-out losses are compared.
    """
    from nanochat.common import autodetect_device_type
    from nanochat.gpt import GPT, config_for_depth
    from nanochat.precision import autocast_context, choose_precision, peak_flops
    from nanochat.preflight import estimate_peak_memory
    from nanochat.training import StepBatches, train_step

    device_type = args.device_type or autodetect_device_type()
    device = torch.device(device_type)
    config = config_for_depth(args.depth, args.vocab_size, args.seq_len)
    default = choose_precision(device_type, "auto", "auto", fixed_shapes=True, train_tokens=args.run_tokens)
    default_name = {torch.float32: "float32", torch.bfloat16: "bfloat16"}[default.dtype] + "_compile" * default.compile
    names = list(dict.fromkeys(args.paths.split(",") + [default_name]))
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, args.vocab_size, (args.batch, args.seq_len + 1), generator=g).to(device)

    def new_run(dtype: torch.dtype, compiled: bool, chunked: bool, batches: Iterator[tuple]) -> dict:
        torch.manual_seed(0)
        model = GPT(config).to(device)
        model.init_weights()
        model.chunked_loss = chunked
        return {"model": model, "optimizers": model.setup_optimizers(), "autocast": autocast_context(device_type, dtype),
                "train_model": torch.compile(model) if compiled else model, "batches": StepBatches(batches, 1)}

    def step(run: dict) -> torch.Tensor:
        return train_step(run["train_model"], run["optimizers"], run["batches"], run["autocast"])[0]

    runs, results = {}, {}
    for name in names:
        dtype, compiled, chunked = _train_path(name)
        runs[name] = new_run(dtype, compiled, chunked, iter(lambda: (data[:, :-1], data[:, 1:]), None))
        progress(f"train {name}: {args.warmup} warm-up steps{' (compiling)' if compiled else ''}")
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            step(runs[name]).item()
        _sync(device)
        results[name] = {"compiled": compiled, "chunked_loss": chunked, "warmup_s": time.perf_counter() - t0}
    progress(f"timing: {args.rounds} rounds of {args.steps} steps of {args.batch}×{args.seq_len} tokens per path, in turn")
    step_times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.rounds):
        for name in names:
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                loss = step(runs[name])
            loss.item()
            _sync(device)
            step_times[name].append((time.perf_counter() - t0) / args.steps)
    peak = peak_flops(device)
    for name in names:
        dtype, compiled, _ = _train_path(name)
        run = runs[name]
        dt = sorted(step_times[name])[len(step_times[name]) // 2]
        tok_per_s = args.batch * args.seq_len / dt
        results[name] |= {
            "step_ms": 1000 * dt,
            "tok_per_s": tok_per_s,
            "mfu_percent": 100 * run["model"].estimate_flops() * tok_per_s / peak if peak else None,
            "peak_memory_gib": _step_peak_memory(run["train_model"], run["model"], run["optimizers"], run["batches"],
                                                 run["autocast"], device) / 2**30,
            # the preflight's formula for the same step, to hold it against the measured peak
            "estimated_peak_gib": estimate_peak_memory(config, args.batch, args.seq_len, 1, dtype, compiled).total / 2**30,
        }
    baseline = names[0]
    for name, r in results.items():
        r[f"speedup_vs_{baseline}"] = r["tok_per_s"] / results[baseline]["tok_per_s"]
        r[f"peak_memory_vs_{baseline}"] = r["peak_memory_gib"] / results[baseline]["peak_memory_gib"]
        eager = results.get(name.removesuffix("_compile"))
        if r["compiled"] and eager and r["tok_per_s"] > eager["tok_per_s"]:
            # the training tokens after which compiling has paid for itself against the same dtype eager
            # (the training graph only: a run's evaluation compiles once more)
            saved_per_token = 1 / eager["tok_per_s"] - 1 / r["tok_per_s"]
            r["compile_repaid_after_tokens"] = round((r["warmup_s"] - eager["warmup_s"]) / saved_per_token)
    out = {
        "benchmark": "train",
        "device": str(device) if device_type != "cuda" else torch.cuda.get_device_name(device),
        "depth": args.depth, "vocab_size": args.vocab_size, "seq_len": args.seq_len, "batch": args.batch,
        "num_params": sum(p.numel() for p in runs[baseline]["model"].parameters()),
        "threads": torch.get_num_threads(), "baseline": baseline,
        # what base_train and mid_train pick here for a run of --run_tokens tokens, and why
        "default": {"path": default_name, "run_tokens": args.run_tokens, "choice": default.describe()},
        "results": results,
    }
    del runs
    if args.loss_steps > 0:
        out["loss_check"] = _loss_check(args, default_name, new_run, step, device)
    return out


def _loss_check(args: argparse.Namespace, default_name: str, new_run: Callable[..., dict],
                step: Callable[[dict], torch.Tensor], device: torch.device) -> dict:
    """fp32 eager and the default path, trained alike for loss_steps steps: held-out loss of each, in fp32."""
    losses = {}
    for name in dict.fromkeys(("float32", default_name)):
        progress(f"loss check, {name}: {args.loss_steps} steps on learnable data")
        batches = ((x.to(device), y.to(device)) for x, y in _learnable_batches(args.vocab_size, args.batch, args.seq_len, 1))
        run = new_run(*_train_path(name), batches)
        for _ in range(args.loss_steps):
            train_loss = step(run)
        heldout = _learnable_batches(args.vocab_size, args.batch, args.seq_len, seed=2)
        with torch.no_grad():
            val = [run["model"](x.to(device), y.to(device)).item() for x, y in (next(heldout) for _ in range(4))]
        losses[name] = {"train_loss": train_loss.item(), "heldout_loss": sum(val) / len(val)}
    relative = losses[default_name]["heldout_loss"] / losses["float32"]["heldout_loss"] - 1
    return {"steps": args.loss_steps, "data": "random walk, 4 successors per token", "losses": losses,
            "default_vs_float32_relative": relative, "within_2_percent": abs(relative) <= 0.02}


def _step_peak_memory(train_model, model, optimizers, batches, autocast, device: torch.device) -> int:
    """Peak bytes of one more training step: the allocator's count on CUDA, live tensors counted elsewhere."""
    from nanochat.preflight import measure_peak_memory
    from nanochat.training import train_step

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        train_step(train_model, optimizers, batches, autocast)
        return torch.cuda.max_memory_allocated(device)
    # what exists before the step: the weights and the optimizer state (gradients are freed after each step)
    state = [*model.parameters(), *(t for o in optimizers for st in o.state.values() for t in st.values()
                                    if isinstance(t, torch.Tensor))]
    return measure_peak_memory(lambda: train_step(train_model, optimizers, batches, autocast),
                               sum(t.numel() * t.element_size() for t in state))


class _NoSpecialsTokenizer:
    """Special tokens outside the vocabulary, so a random model never stops or calls tools early."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def encode_special(self, name: str) -> int:
        return self.vocab_size + hash(name) % 1000

    def get_bos_token_id(self) -> int:
        return self.vocab_size + 1000


class ReferenceEngine(Engine):
    """
    The Engine's decoding loop as it was before its per-token overhead was cut (every row
    inspected in Python every step, the next input rebuilt from a list), kept to measure the
    Engine against in the same run and to check that both give the same tokens.
    """

    @torch.inference_mode()
    def generate(self, tokens: list[int], num_samples: int = 1, max_tokens: int | None = None,
                 temperature: float = 1.0, top_k: int | None = None, seed: int = 42) -> Iterator[tuple[list[int], list[int]]]:
        device = self.model.get_device()
        rng = torch.Generator(device=device)
        rng.manual_seed(seed)
        limit = self.model.max_context - len(tokens)
        max_tokens = limit if max_tokens is None else min(max_tokens, limit)
        prefill_cache = self._new_cache(1, len(tokens))
        ids = torch.tensor([tokens], dtype=torch.long, device=device)
        logits = self.model(ids, kv_cache=prefill_cache)[:, -1, :].expand(num_samples, -1)
        cache = self._new_cache(num_samples, len(tokens) + max_tokens)
        cache.prefill(prefill_cache)
        rows = [RowState() for _ in range(num_samples)]
        completed = [False] * num_samples
        for _ in range(max_tokens):
            sampled = sample_next_token(logits, rng, temperature, top_k)[:, 0].tolist()
            column, masks = [], []
            for i, (row, token) in enumerate(zip(rows, sampled)):
                is_forced = bool(row.forced)
                if is_forced:
                    token = row.forced.popleft()
                column.append(token)
                masks.append(0 if is_forced else 1)
                if completed[i]:
                    continue
                if token in self.stop_tokens:
                    completed[i] = True
                else:
                    self._tool_step(row, token)
            yield column, masks
            if all(completed):
                return
            ids = torch.tensor(column, dtype=torch.long, device=device)[:, None]
            logits = self.model(ids, kv_cache=cache)[:, -1, :]


@torch.inference_mode()
def _naive_decode(model, prompt: list[int], batch: int, new_tokens: int, rng: torch.Generator) -> None:
    """A full forward over the whole sequence for every new token (no KV cache)."""
    ids = torch.tensor([prompt] * batch, device=model.get_device())
    for _ in range(new_tokens):
        logits = model(ids)[:, -1, :]
        ids = torch.cat([ids, sample_next_token(logits, rng, 1.0)], dim=1)


def _random_model(depth: int, vocab_size: int, sequence_len: int, device: torch.device):
    """The decode benchmarks' model: random weights (seed 0), nowhere zero, in eval mode."""
    from nanochat.gpt import GPT, config_for_depth

    torch.manual_seed(0)
    model = GPT(config_for_depth(depth, vocab_size, sequence_len=sequence_len)).to(device)
    model.init_weights()
    with torch.no_grad():  # a trained model is not zero in its head and projections
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.eval()


def bench_decode(args: argparse.Namespace) -> dict:
    """
    Tokens generated per second per batch size, for each decoding path on the same model and
    prompt: today's Engine decoding eagerly (`engine_eager`, the baseline of every ratio), the
    Engine with its compiled decode step (`engine_compiled`), the reference loop from before the
    Engine's per-token overhead was cut, the Engine with bf16 weights (eager and compiled: other
    tokens, from other logits), and naive recompute. Each
    path is warmed up once (the compiled one compiles then: `compile_s`), then the paths' timed
    runs are interleaved, one run of each in turn for --rounds rounds, and the median kept, so
    load from other processes slows them alike. Then RL rollouts (groups sampled in device
    batches with top-k 50, as chat_rl did before its default became no top-k), eager against
    compiled, interleaved likewise.
    """
    from nanochat.common import autodetect_device_type

    device = torch.device(args.device_type or autodetect_device_type())
    model = _random_model(args.depth, args.vocab_size, args.prompt_len + args.new_tokens, device)
    tokenizer = _NoSpecialsTokenizer(args.vocab_size)
    # the same weights in bf16: decoding reads every weight once per step, so halving them matters
    bf16_model = copy.deepcopy(model).bfloat16()
    engines = {"engine_eager": Engine(model, tokenizer, compile="off"),
               "engine_compiled": Engine(model, tokenizer, compile="on"),
               "reference": ReferenceEngine(model, tokenizer, compile="off"),
               "engine_bf16": Engine(bf16_model, tokenizer, compile="off"),
               "engine_bf16_compiled": Engine(bf16_model, tokenizer, compile="on")}
    baseline = "engine_eager"
    prompt = torch.randint(0, args.vocab_size, (args.prompt_len,), generator=torch.Generator().manual_seed(1)).tolist()
    results: dict = {}
    for batch in [int(b) for b in args.batches.split(",")]:
        # naive recompute costs batch × length² per token: timed only where it does not dominate the run
        names = (*engines, "naive") if batch <= args.naive_max_batch else tuple(engines)
        rows, warmup_s = {}, {}

        def run(name: str) -> None:
            if name == "naive":
                _naive_decode(model, prompt, batch, args.new_tokens, torch.Generator(device=device).manual_seed(0))
            else:
                rows[name], _ = engines[name].generate_batch(prompt, num_samples=batch, max_tokens=args.new_tokens)
                assert all(len(r) == args.prompt_len + args.new_tokens for r in rows[name])

        for name in names:
            compiling = name in engines and engines[name].compile == "on" and engines[name].decoder is None
            progress(f"decode batch {batch}, {name}: a warm-up run of {args.new_tokens} new tokens"
                     + (" (compiling)" if compiling else ""))
            warmup_s[name] = _timed(run, name, device)
        progress(f"decode batch {batch}: {args.rounds} rounds of one run per path, in turn")
        times = _interleaved(run, names, args.rounds, device)
        tokens = batch * args.new_tokens
        r = results[f"batch_{batch}"] = {f"{name}_tok_per_s": tokens / t for name, t in times.items()}
        for name in names:
            if name != baseline:
                r[f"{name}_speedup_vs_{baseline}"] = times[baseline] / times[name]
        r["engine_compiled_same_tokens_as_engine_eager"] = rows["engine_compiled"] == rows[baseline]
        # where a row's sampled u falls within the float32 rounding of the cumulative probabilities
        # (the compiled logits differ from eager's by ~1e-6), that row follows another token from there
        r["engine_compiled_rows_same_as_engine_eager"] = _same_rows(rows["engine_compiled"], rows[baseline])
        r["reference_same_tokens_as_engine_eager"] = rows["reference"] == rows[baseline]
        saved_per_token = 1 / r[f"{baseline}_tok_per_s"] - 1 / r["engine_compiled_tok_per_s"]
        if saved_per_token > 0:  # the tokens at this batch size after which compiling has paid for itself
            decoder = engines["engine_compiled"].decoder
            r["engine_compiled_repaid_after_tokens"] = round(decoder.compile_s[decoder.graph(batch, 0)] / saved_per_token)
    compiled = engines["engine_compiled"]
    results["rl_rollout"] = _bench_rollouts(engines, prompt, args, device)
    return {"benchmark": "decode", "device": str(device), "depth": args.depth, "vocab_size": args.vocab_size,
            "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "threads": torch.get_num_threads(),
            "rounds": args.rounds, "baseline": baseline,
            "paths": {name: engine.decode_path for name, engine in engines.items()},
            # each compiled graph's first call, tracing and compiling: on CPU one graph serves batch 1,
            # another every larger batch, whatever the lengths
            "compile_s": compiled.decoder.compile_s if compiled.decoder else None,
            "bf16_compile_s": engines["engine_bf16_compiled"].decoder.compile_s,
            "results": results}


def bench_rollouts(args: argparse.Namespace) -> dict:
    """
    RL rollout tokens/s: chat_rl's sampling of a step (--problems prompts of different lengths,
    --samples answers each, at most --rows rows per decode batch) batched across problems
    (`batched`: rl.sample_rows, each prompt prefilled once, one decode batch of rows at their
    own positions) against one batch per problem (`per_problem`, the baseline: rl.sample_rows
    of one prompt at a time, as chat_rl sampled before). Timed runs interleaved for --rounds
    rounds, the median kept. The random model's rows never stop, so every row is --new_tokens long.
    """
    from nanochat.common import autodetect_device_type
    from nanochat.rl import SamplingConfig, sample_rows

    device = torch.device(args.device_type or autodetect_device_type())
    longest = args.prompt_len + 4 * (args.problems - 1)
    model = _random_model(args.depth, args.vocab_size, longest + args.new_tokens, device)
    engine = Engine(model, _NoSpecialsTokenizer(args.vocab_size), compile="off")  # RL's weights change every step: eager
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, args.vocab_size, (args.prompt_len + 4 * j,), generator=gen).tolist()
               for j in range(args.problems)]
    sampling = SamplingConfig(args.new_tokens, None, args.rows)
    rows: dict[str, list] = {}

    def run(name: str) -> None:
        if name == "batched":
            rows[name] = sample_rows(engine, prompts, args.samples, sampling, 0, 1.0)[0]
        else:
            rows[name] = [r for p in prompts for r in sample_rows(engine, [p], args.samples, sampling, 0, 1.0)[0]]

    names = ("per_problem", "batched")
    for name in names:
        progress(f"RL rollouts, {name}: a warm-up run")
        run(name)
    progress(f"RL rollouts: {args.problems} problems × {args.samples} answers of {args.new_tokens} tokens, at most "
             f"{args.rows} rows a batch, {args.rounds} rounds per path, in turn")
    times = _interleaved(run, names, args.rounds, device)
    tokens = sum(len(r) for r in rows["batched"]) - args.samples * sum(len(p) for p in prompts)
    # sampled rows draw from other seeds in the two layouts; greedy, the same answers must come out
    greedy = SamplingConfig(min(args.new_tokens, 16), None, args.rows)
    same = sample_rows(engine, prompts, args.samples, greedy, 0, 0.0)[0] == \
        [r for p in prompts for r in sample_rows(engine, [p], args.samples, greedy, 0, 0.0)[0]]
    return {"benchmark": "rollouts", "device": str(device), "depth": args.depth, "vocab_size": args.vocab_size,
            "problems": args.problems, "samples": args.samples, "rows": args.rows,
            "prompt_lens": [len(p) for p in prompts], "new_tokens": args.new_tokens, "threads": torch.get_num_threads(),
            "rounds": args.rounds, "baseline": "per_problem",
            "results": {"per_problem_tok_per_s": tokens / times["per_problem"],
                        "batched_tok_per_s": tokens / times["batched"],
                        "batched_speedup_vs_per_problem": times["per_problem"] / times["batched"],
                        "batched_same_greedy_tokens_as_per_problem": same}}


def _same_rows(rows: list[list[int]], expected: list[list[int]]) -> str:
    return f"{sum(a == b for a, b in zip(rows, expected))}/{len(expected)}"


def _timed(fn: Callable[[str], None], name: str, device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn(name)
    _sync(device)
    return time.perf_counter() - t0


def _interleaved(fn: Callable[[str], None], names: tuple[str, ...], rounds: int, device: torch.device) -> dict[str, float]:
    """Median seconds of fn(name) per name, over rounds in which every name runs once, in turn."""
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        for name in names:
            times[name].append(_timed(fn, name, device))
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def _bench_rollouts(engines: dict, prompt: list[int], args: argparse.Namespace, device: torch.device) -> dict:
    """chat_rl's sampling: a group of answers per problem, device_batch_size rows at a time, top-k, a seed per chunk."""
    names = ("engine_eager", "engine_compiled")
    rows: dict[str, list] = {}

    def rollouts(name: str) -> None:
        rows[name] = []
        for problem in range(args.rl_problems):
            for chunk, start in enumerate(range(0, args.rl_samples, args.rl_batch)):
                n = min(args.rl_batch, args.rl_samples - start)
                r, _ = engines[name].generate_batch(prompt, num_samples=n, max_tokens=args.new_tokens, temperature=1.0,
                                                    top_k=50, seed=1000 * problem + chunk)
                rows[name] += r

    progress(f"RL rollouts: {args.rl_problems} problems × {args.rl_samples} answers of {args.new_tokens} tokens, "
             f"{args.rl_batch} rows at a time, {args.rounds} rounds per path, in turn")
    times = _interleaved(rollouts, names, args.rounds, device)
    tokens = sum(len(r) - len(prompt) for r in rows["engine_eager"])
    return {"engine_eager_tok_per_s": tokens / times["engine_eager"],
            "engine_compiled_tok_per_s": tokens / times["engine_compiled"],
            "engine_compiled_speedup_vs_engine_eager": times["engine_eager"] / times["engine_compiled"],
            "engine_compiled_same_tokens_as_engine_eager": rows["engine_compiled"] == rows["engine_eager"],
            "engine_compiled_rows_same_as_engine_eager": _same_rows(rows["engine_compiled"], rows["engine_eager"])}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _model_parser(sub, name: str, help: str) -> argparse.ArgumentParser:
    """A benchmark of a random model: its depth, vocabulary and device."""
    p = sub.add_parser(name, help=help)
    p.add_argument("--depth", type=positive_int, default=4, help="model depth (width 64·depth)")
    p.add_argument("--vocab_size", type=positive_int, default=8192, help="vocabulary of the random model")
    p.add_argument("--device_type", default="", help="device (empty: autodetect)")
    return p


def main(argv: list[str] | None = None) -> dict:
    parser = ArgumentParser(description="Benchmarks with JSON output.")
    sub = parser.add_subparsers(dest="benchmark", required=True)
    tok = sub.add_parser("tokenizer", help="BPE training speed, encode throughput, bytes per token")
    tok.add_argument("--text", default="synthetic", help="'synthetic' or a path to a text file")
    tok.add_argument("--chars", type=int, default=20_000_000, help="characters of text to use")
    tok.add_argument("--vocab_size", type=int, default=65536, help="vocabulary to train")
    tok.add_argument("--threads", type=int, default=0, help="threads for batch encoding (0: all cores)")
    train = _model_parser(sub, "train", "training tok/s, MFU and peak memory of one model size, per dtype and loss")
    train.add_argument("--seq_len", type=positive_int, default=512, help="tokens per row")
    train.add_argument("--batch", type=positive_int, default=8, help="rows per step")
    train.add_argument("--steps", type=positive_int, default=2, help="timed steps per round")
    train.add_argument("--rounds", type=positive_int, default=5, help="rounds, each timing every path in turn")
    train.add_argument("--warmup", type=int, default=3, help="untimed steps first (compiling, for compiled paths)")
    train.add_argument("--paths", default="float32_plain_loss,float32,bfloat16,float32_compile,bfloat16_compile",
                       help="comma-separated <float32|bfloat16>[_compile][_plain_loss] (first is the baseline); "
                            "the default path is added")
    train.add_argument("--run_tokens", type=int, default=1_000_000,
                       help="training tokens of the run whose default path is benchmarked (auto compiles long runs)")
    train.add_argument("--loss_steps", type=int, default=100,
                       help="steps of fp32 and the default on learnable data, to compare their losses (0: skip)")
    decode = _model_parser(sub, "decode", "generation and RL rollout tok/s: the Engine's compiled decode step against eager")
    decode.add_argument("--prompt_len", type=positive_int, default=32, help="prompt tokens")
    decode.add_argument("--new_tokens", type=positive_int, default=128, help="tokens generated per row")
    decode.add_argument("--batches", default="1,8,32", help="comma-separated batch sizes to time")
    decode.add_argument("--naive_max_batch", type=int, default=8, help="time naive recompute up to this batch size")
    decode.add_argument("--rounds", type=positive_int, default=5, help="rounds, each timing every path in turn")
    decode.add_argument("--rl_problems", type=positive_int, default=2, help="RL rollouts: problems (one prompt each)")
    decode.add_argument("--rl_samples", type=positive_int, default=16, help="RL rollouts: answers per problem")
    decode.add_argument("--rl_batch", type=positive_int, default=8, help="RL rollouts: rows per generate call")
    rollouts = _model_parser(sub, "rollouts", "RL rollout tok/s: problems batched together against one batch per problem")
    rollouts.add_argument("--problems", type=positive_int, default=8, help="problems per step (prompts of different lengths)")
    rollouts.add_argument("--samples", type=positive_int, default=8, help="answers per problem")
    rollouts.add_argument("--rows", type=positive_int, default=32, help="most rows per decode batch (chat_rl's --device_batch_size)")
    rollouts.add_argument("--prompt_len", type=positive_int, default=32, help="the shortest prompt; each next is 4 tokens longer")
    rollouts.add_argument("--new_tokens", type=positive_int, default=128, help="tokens generated per row")
    rollouts.add_argument("--rounds", type=positive_int, default=3, help="rounds, each timing both paths in turn")
    parser.add_argument("--out", default=None, help="also write the JSON to this file")
    args = parser.parse_args(argv)

    result = {"tokenizer": bench_tokenizer, "train": bench_train, "decode": bench_decode,
              "rollouts": bench_rollouts}[args.benchmark](args)
    result["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return result


if __name__ == "__main__":
    run_main(main)
