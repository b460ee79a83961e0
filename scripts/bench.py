"""
Benchmarks, printed as JSON. Speeds are reported with a baseline measured in the same run,
so ratios stay meaningful on a loaded or different machine.

    python -m scripts.bench tokenizer --vocab_size=65536 --text=synthetic
    python -m scripts.bench tokenizer --text=../shared/data/tinyshakespeare/input.txt
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time

import torch


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


def bench_tokenizer(args: argparse.Namespace) -> dict:
    from nanochat.tokenizer import train_tokenizer

    docs = load_documents(args.text, args.chars)
    chars = sum(len(d) for d in docs)
    tokenizer, train_s = train_tokenizer(docs, args.vocab_size)

    t0 = time.perf_counter()
    single = [tokenizer.encode(d) for d in docs]
    single_s = time.perf_counter() - t0
    threads = args.threads or os.cpu_count() or 1
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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Benchmarks with JSON output.")
    sub = parser.add_subparsers(dest="benchmark", required=True)
    tok = sub.add_parser("tokenizer", help="BPE training speed, encode throughput, bytes per token")
    tok.add_argument("--text", default="synthetic", help="'synthetic' or a path to a text file")
    tok.add_argument("--chars", type=int, default=20_000_000, help="characters of text to use")
    tok.add_argument("--vocab_size", type=int, default=65536)
    tok.add_argument("--threads", type=int, default=0, help="threads for batch encoding (0: all cores)")
    parser.add_argument("--out", default=None, help="also write the JSON to this file")
    args = parser.parse_args(argv)

    result = {"tokenizer": bench_tokenizer}[args.benchmark](args)
    result["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return result


if __name__ == "__main__":
    main()
