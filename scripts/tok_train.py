"""
Train the BPE tokenizer on the pretraining shards and save it under $NANOCHAT_BASE_DIR/tokenizer.

    python -m scripts.tok_train --vocab_size=65536 --max_chars=2000000000
"""

from __future__ import annotations

import sys

from tqdm import tqdm

from nanochat.common import command_here, run_main
from nanochat.dataset import get_data_dir, list_parquet_files, parquets_iter_batched
from nanochat.report import get_report
from nanochat.tokenizer import get_tokenizer_dir, text_iterator, train_tokenizer
from scripts.flags import ArgumentParser


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description="Train a byte-level BPE tokenizer on the training shards.")
    parser.add_argument("--vocab_size", type=int, default=65536, help="final vocabulary: 256 bytes + merges + 9 special tokens")
    parser.add_argument("--max_chars", type=int, default=2_000_000_000, help="train on at most this many characters")
    parser.add_argument("--doc_cap", type=int, default=10_000, help="cut each document to this many characters")
    args = parser.parse_args(argv)
    if args.max_chars <= 0 or args.doc_cap <= 0:
        parser.error("--max_chars and --doc_cap must be positive")

    try:
        list_parquet_files()
    except FileNotFoundError as e:
        sys.exit(f"error: {e}")
    print(f"training a {args.vocab_size:,}-token tokenizer on up to {args.max_chars:,} chars from {get_data_dir()}")

    progress = tqdm(total=args.max_chars, unit="char", unit_scale=True, desc="ingesting")
    chars = 0

    def counted(texts):
        nonlocal chars
        for text in texts:
            chars += len(text)
            progress.update(len(text))
            yield text

    texts = counted(text_iterator(parquets_iter_batched(split="train"), args.max_chars, args.doc_cap))
    tokenizer, seconds = train_tokenizer(texts, args.vocab_size)
    progress.total = chars  # the data may hold less than --max_chars
    progress.refresh()
    progress.close()
    path = tokenizer.save(get_tokenizer_dir())

    sample = "Hello world! 12345 <|bos|> naïve café 안녕하세요"
    assert tokenizer.decode(tokenizer.encode(sample)) == sample, "round trip failed on the sample text"
    token_bytes = tokenizer.token_byte_lengths()
    print(f"trained in {seconds:.1f}s on {chars:,} chars ({chars / max(seconds, 1e-9):,.0f} chars/s)")
    print(f"vocab size {tokenizer.get_vocab_size():,}; saved {path} and token_bytes.pt")
    if tokenizer.get_vocab_size() < args.vocab_size:
        print(f"note: the corpus ran out of pairs to merge before {args.vocab_size:,} tokens; the vocabulary is smaller")
    nonzero = token_bytes[token_bytes > 0].float()
    get_report().log(
        section="Tokenizer training",
        data=[
            vars(args),
            {
                "train_chars": chars,
                "train_time_s": seconds,
                "chars_per_s": chars / max(seconds, 1e-9),
                "trained_vocab_size": tokenizer.get_vocab_size(),
                "num_special_tokens": len(tokenizer.get_special_tokens()),
                "token_bytes_min": int(nonzero.min()),
                "token_bytes_max": int(nonzero.max()),
                "token_bytes_mean": nonzero.mean().item(),
            },
        ],
    )
    print(f"saved to {get_tokenizer_dir()}; next: {command_here('python -m scripts.tok_eval')}")


if __name__ == "__main__":
    run_main(main)
