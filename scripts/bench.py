"""
Benchmarks, printed as JSON. Speeds are reported with a baseline measured in the same run,
so ratios stay meaningful on a loaded or different machine.

    python -m scripts.bench tokenizer --vocab_size=65536 --text=synthetic
    python -m scripts.bench tokenizer --text=../shared/data/tinyshakespeare/input.txt
    python -m scripts.bench train --depth=4 --vocab_size=8192 --seq_len=512 --batch=8 --dtypes=float32,bfloat16
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

import torch

from nanochat.common import run_main
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


def bench_train(args: argparse.Namespace) -> dict:
    """Optimizer steps per second of a fresh model on random tokens, once per dtype, same model and data."""
    from nanochat.common import autodetect_device_type
    from nanochat.gpt import GPT, config_for_depth
    from nanochat.preflight import estimate_peak_memory
    from nanochat.training import StepBatches, autocast_context, peak_flops, train_step

    device_type = args.device_type or autodetect_device_type()
    device = torch.device(device_type)
    config = config_for_depth(args.depth, args.vocab_size, args.seq_len)
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, args.vocab_size, (args.batch, args.seq_len + 1), generator=g).to(device)
    results = {}
    for dtype_name in args.dtypes.split(","):
        torch.manual_seed(0)
        model = GPT(config).to(device)
        model.init_weights()
        optimizers = model.setup_optimizers()
        train_model = torch.compile(model) if args.compile else model
        autocast = autocast_context(device_type, getattr(torch, dtype_name))
        batches = StepBatches(iter(lambda: (data[:, :-1], data[:, 1:]), None), 1)
        progress(f"train {dtype_name}: {args.warmup} warm-up steps{' (compiling)' if args.compile else ''}, then "
                 f"{args.steps} timed steps of {args.batch}×{args.seq_len} tokens")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(args.warmup):
            train_step(train_model, optimizers, batches, autocast)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            loss, _ = train_step(train_model, optimizers, batches, autocast)
        loss.item()
        _sync(device)
        dt = (time.perf_counter() - t0) / args.steps
        tok_per_s = args.batch * args.seq_len / dt
        peak = peak_flops(device)
        results[dtype_name] = {
            "step_ms": 1000 * dt,
            "tok_per_s": tok_per_s,
            "mfu_percent": 100 * model.estimate_flops() * tok_per_s / peak if peak else None,
            "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
            # the preflight's formula for the same step, to hold it against the measured peak
            "estimated_peak_gib": estimate_peak_memory(config, args.batch, args.seq_len, 1, getattr(torch, dtype_name),
                                                       args.compile).total / 2**30,
        }
    first = next(iter(results))
    for name, r in results.items():
        r[f"speedup_vs_{first}"] = r["tok_per_s"] / results[first]["tok_per_s"]
    return {
        "benchmark": "train",
        "device": str(device) if device_type != "cuda" else torch.cuda.get_device_name(device),
        "depth": args.depth, "vocab_size": args.vocab_size, "seq_len": args.seq_len, "batch": args.batch,
        "num_params": sum(p.numel() for p in model.parameters()), "compile": args.compile,
        "threads": torch.get_num_threads(), "results": results,
    }


class _NoSpecialsTokenizer:
    """Special tokens outside the vocabulary, so a random model never stops or calls tools early."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def encode_special(self, name: str) -> int:
        return self.vocab_size + hash(name) % 1000

    def get_bos_token_id(self) -> int:
        return self.vocab_size + 1000


@torch.inference_mode()
def _naive_decode(model, prompt: list[int], batch: int, new_tokens: int, rng: torch.Generator) -> None:
    """The reference: a full forward over the whole sequence for every new token."""
    from nanochat.gpt import sample_next_token

    ids = torch.tensor([prompt] * batch, device=model.get_device())
    for _ in range(new_tokens):
        logits = model(ids)[:, -1, :]
        ids = torch.cat([ids, sample_next_token(logits, rng, 1.0)], dim=1)


def bench_decode(args: argparse.Namespace) -> dict:
    """Engine (KV cache) against naive recompute, tokens generated per second, per batch size."""
    from nanochat.common import autodetect_device_type
    from nanochat.engine import Engine
    from nanochat.gpt import GPT, config_for_depth

    device = torch.device(args.device_type or autodetect_device_type())
    torch.manual_seed(0)
    model = GPT(config_for_depth(args.depth, args.vocab_size, sequence_len=args.prompt_len + args.new_tokens)).to(device)
    model.init_weights()
    with torch.no_grad():  # a trained model is not zero in its head and projections
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model.eval()
    tokenizer = _NoSpecialsTokenizer(args.vocab_size)
    # the same weights in bf16: decoding reads every weight once per step, so halving them matters
    engines = {"engine": Engine(model, tokenizer), "engine_bf16": Engine(copy.deepcopy(model).bfloat16(), tokenizer)}
    prompt = torch.randint(0, args.vocab_size, (args.prompt_len,), generator=torch.Generator().manual_seed(1)).tolist()
    results = {}
    for batch in [int(b) for b in args.batches.split(",")]:
        timings = {}
        for name in ("naive", *engines):
            progress(f"decode batch {batch}, {name}: {args.new_tokens} new tokens, a warm-up run then a timed one")
            for _ in range(2):  # the first run warms up
                _sync(device)
                t0 = time.perf_counter()
                if name == "naive":
                    _naive_decode(model, prompt, batch, args.new_tokens, torch.Generator(device=device).manual_seed(0))
                else:
                    rows, _ = engines[name].generate_batch(prompt, num_samples=batch, max_tokens=args.new_tokens)
                    assert all(len(r) == args.prompt_len + args.new_tokens for r in rows)
                _sync(device)
                timings[name] = time.perf_counter() - t0
        tokens = batch * args.new_tokens
        results[f"batch_{batch}"] = {f"{name}_tok_per_s": tokens / t for name, t in timings.items()}
        for name in engines:
            results[f"batch_{batch}"][f"{name}_speedup_vs_naive"] = timings["naive"] / timings[name]
    return {"benchmark": "decode", "device": str(device), "depth": args.depth, "vocab_size": args.vocab_size,
            "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "threads": torch.get_num_threads(),
            "results": results}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> dict:
    parser = ArgumentParser(description="Benchmarks with JSON output.")
    sub = parser.add_subparsers(dest="benchmark", required=True)
    tok = sub.add_parser("tokenizer", help="BPE training speed, encode throughput, bytes per token")
    tok.add_argument("--text", default="synthetic", help="'synthetic' or a path to a text file")
    tok.add_argument("--chars", type=int, default=20_000_000, help="characters of text to use")
    tok.add_argument("--vocab_size", type=int, default=65536, help="vocabulary to train")
    tok.add_argument("--threads", type=int, default=0, help="threads for batch encoding (0: all cores)")
    train = sub.add_parser("train", help="training tok/s and MFU of one model size, per dtype")
    train.add_argument("--depth", type=positive_int, default=4, help="model depth (width 64·depth)")
    train.add_argument("--vocab_size", type=positive_int, default=8192, help="vocabulary of the random model")
    train.add_argument("--seq_len", type=positive_int, default=512, help="tokens per row")
    train.add_argument("--batch", type=positive_int, default=8, help="rows per step")
    train.add_argument("--steps", type=positive_int, default=10, help="timed steps")
    train.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    train.add_argument("--dtypes", default="float32", help="comma-separated: float32,bfloat16 (first is the baseline)")
    train.add_argument("--device_type", default="", help="device (empty: autodetect)")
    train.add_argument("--compile", action="store_true", help="torch.compile the model")
    decode = sub.add_parser("decode", help="generation tok/s: the KV-cache Engine against naive recompute")
    decode.add_argument("--depth", type=positive_int, default=4, help="model depth (width 64·depth)")
    decode.add_argument("--vocab_size", type=positive_int, default=8192, help="vocabulary of the random model")
    decode.add_argument("--prompt_len", type=positive_int, default=32, help="prompt tokens")
    decode.add_argument("--new_tokens", type=positive_int, default=128, help="tokens generated per row")
    decode.add_argument("--batches", default="1,8", help="comma-separated batch sizes to time")
    decode.add_argument("--device_type", default="", help="device (empty: autodetect)")
    parser.add_argument("--out", default=None, help="also write the JSON to this file")
    args = parser.parse_args(argv)

    result = {"tokenizer": bench_tokenizer, "train": bench_train, "decode": bench_decode}[args.benchmark](args)
    result["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return result


if __name__ == "__main__":
    run_main(main)
