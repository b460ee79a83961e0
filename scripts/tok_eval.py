"""
Compression of our tokenizer (bytes per token, higher is better) on sample texts and on the
train and val shards, beside GPT-2's and GPT-4's encodings where tiktoken can load them.
Offline (NANOCHAT_DATASET=synthetic, or HF_HUB_OFFLINE=1) the comparison is skipped with a
note instead of trying the network; --references=gpt2,gpt4 asks for it anyway (it then needs
the network or tiktoken's cache).

    python -m scripts.tok_eval
"""

from __future__ import annotations

import os
import sys

from nanochat.common import run_main
from nanochat.dataset import get_dataset_name, parquets_iter_batched
from nanochat.report import get_report
from nanochat.tokenizer import RustBPETokenizer, TokenizerNotFoundError, get_tokenizer
from scripts.flags import ArgumentParser

SAMPLES = {
    "news": (
        "The city council voted on Tuesday to expand the riverside park by nearly forty acres, "
        "ending a debate that had stretched over three years. Supporters said the new green space "
        "would reduce flooding downstream, while opponents worried about the $12.5 million price tag "
        "and the loss of parking near the old market hall. Construction is expected to begin in spring."
    ),
    "code": (
        "def moving_average(values: list[float], window: int) -> list[float]:\n"
        "    if window <= 0:\n"
        "        raise ValueError(\"window must be positive\")\n"
        "    out, total = [], 0.0\n"
        "    for i, v in enumerate(values):\n"
        "        total += v\n"
        "        if i >= window:\n"
        "            total -= values[i - window]\n"
        "        out.append(total / min(i + 1, window))\n"
        "    return out\n"
    ),
    "math": (
        "Let $f(x) = x^3 - 6x^2 + 11x - 6$. Since $f(1) = 0$, we factor $f(x) = (x-1)(x^2 - 5x + 6) "
        "= (x-1)(x-2)(x-3)$, so the roots are $1, 2, 3$ and $\\sum_{i=1}^{3} r_i = 6$. "
        "By Vieta, $r_1 r_2 r_3 = 6$ as well, and $\\int_0^1 f(x)\\,dx = -\\frac{9}{4}$."
    ),
    "korean": (
        "서울은 대한민국의 수도이며 한강을 따라 넓게 펼쳐져 있다. 봄에는 벚꽃이 피고 가을에는 "
        "단풍이 아름다워 많은 사람들이 공원을 찾는다. 도시는 오래된 궁궐과 현대적인 건물이 함께 "
        "어우러진 모습으로 유명하다."
    ),
    "science": (
        "Photosynthesis converts light energy into chemical energy. In the thylakoid membranes, "
        "chlorophyll absorbs photons near 430 nm and 662 nm, driving the splitting of water "
        "(2H2O → 4H+ + 4e- + O2). The Calvin cycle then fixes CO2 into three-carbon sugars using "
        "ATP and NADPH, with the enzyme RuBisCO catalysing the first step."
    ),
}

REFERENCES = {"gpt2": "gpt2", "gpt4": "cl100k_base"}


def offline_reason() -> str | None:
    """Why this run must not reach for the network (tiktoken downloads its encodings), or None."""
    if get_dataset_name() == "synthetic":
        return "NANOCHAT_DATASET=synthetic"
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    return None


def load_reference(name: str) -> tuple[RustBPETokenizer | None, str]:
    """A tiktoken reference encoding, or None and a one-line note saying why it is missing."""
    try:
        return RustBPETokenizer.from_pretrained(REFERENCES[name]), ""
    except Exception as e:  # no network and no cached copy, most often
        return None, f"note: {name} not compared: tiktoken could not load {REFERENCES[name]} (offline, no cached copy: {type(e).__name__})"


def shard_sample(split: str, max_chars: int) -> str:
    """The first documents of a split, up to max_chars."""
    texts, total = [], 0
    for batch in parquets_iter_batched(split=split):
        for text in batch:
            texts.append(text)
            total += len(text)
            if total >= max_chars:
                return "\n".join(texts)
    return "\n".join(texts)


def bytes_per_token(tokenizer: RustBPETokenizer, text: str) -> float:
    ids = tokenizer.encode(text)
    if tokenizer.decode(ids) != text:
        raise AssertionError("encode/decode round trip failed")
    return len(text.encode("utf-8")) / max(len(ids), 1)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = ArgumentParser(description="Bytes per token of our tokenizer against GPT-2 and GPT-4.")
    parser.add_argument("--references", default=None,
                        help="comma-separated from gpt2,gpt4; empty for none (default: both, or none when offline)")
    parser.add_argument("--shard_chars", type=int, default=200_000, help="characters sampled from each of train and val")
    args = parser.parse_args(argv)

    try:
        tokenizers = {"ours": get_tokenizer()}
    except TokenizerNotFoundError as e:
        sys.exit(f"error: {e}")
    notes = []
    references = args.references
    if references is None:
        references = "gpt2,gpt4"
        if (reason := offline_reason()) is not None:
            references = ""
            notes.append(f"note: GPT-2 / GPT-4 not compared: offline ({reason}); tiktoken would download them. "
                         "Ask with --references=gpt2,gpt4 where the network or tiktoken's cache is available")
            print(notes[-1])
    for name in filter(None, references.split(",")):
        if name not in REFERENCES:
            parser.error(f"unknown reference {name!r}; choose from {', '.join(REFERENCES)}")
        reference, note = load_reference(name)
        if reference is None:
            notes.append(note)
            print(note)
        else:
            tokenizers[name] = reference

    texts = dict(SAMPLES)
    for split in ("train", "val"):
        texts[f"{split}-shard"] = shard_sample(split, args.shard_chars)

    results: dict[str, dict[str, float]] = {}
    header = f"{'text':<12} {'bytes':>9}" + "".join(f" {name:>8}" for name in tokenizers)
    print(f"bytes per token (higher compresses better)\n{header}\n{'-' * len(header)}")
    for label, text in texts.items():
        results[label] = {name: bytes_per_token(tok, text) for name, tok in tokenizers.items()}
        print(f"{label:<12} {len(text.encode('utf-8')):>9,}" + "".join(f" {v:>8.2f}" for v in results[label].values()))

    rows = "\n".join(f"| {label} | " + " | ".join(f"{v:.2f}" for v in r.values()) + " |" for label, r in results.items())
    table = "| text | " + " | ".join(tokenizers) + " |\n|---|" + "---|" * len(tokenizers) + "\n" + rows
    get_report().log(section="Tokenizer evaluation", data=["Bytes per token:", table, *notes])
    return results


if __name__ == "__main__":
    run_main(main)
