"""
The pretraining twin: documents mixing every kind of item, written as parquet shards in
FineWeb-Edu's layout (one 'text' column, several row groups; the last shard is validation).
"""

from __future__ import annotations

import glob
import hashlib
import os
import random
from concurrent.futures import ProcessPoolExecutor

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from nanochat.common import atomic_write
from nanochat.synthetic.arithmetic import make_arithmetic_problem
from nanochat.synthetic.code import make_code_snippet
from nanochat.synthetic.facts import make_fact, make_quiz
from nanochat.synthetic.spelling import make_spelling_drill
from nanochat.synthetic.stories import make_story

def _make_item(rng: random.Random) -> str:
    """One paragraph: word problems, spelling drills, facts, quizzes, functions, stories."""
    r = rng.random()
    if r < 0.22:
        problem = make_arithmetic_problem(rng)
        return f"Question: {problem['question']}\nAnswer: {problem['answer']}"
    if r < 0.42:
        return make_spelling_drill(rng)
    if r < 0.64:
        return " ".join(make_fact(rng) for _ in range(rng.randint(2, 5)))
    if r < 0.74:
        return make_quiz(rng)
    if r < 0.86:
        return make_code_snippet(rng)
    return make_story(rng)


def make_document(rng: random.Random, min_chars: int = 200, max_chars: int = 1500) -> str:
    """A few paragraphs of mixed kinds, so document lengths vary the way web pages do."""
    target = rng.randint(min_chars, max_chars)
    parts, length = [], 0
    while length < target:
        parts.append(_make_item(rng))
        length += len(parts[-1]) + 2
    return "\n\n".join(parts)


def _shard_rng(seed: int, index: int) -> random.Random:
    # str seeds are hashed with SHA-512: stable across runs and machines, unlike hash()
    return random.Random(f"nanochat-synthetic-{seed}-{index}")


def _fingerprint(seed: int, chars_per_shard: int, docs_per_row_group: int) -> str:
    """What a shard's bytes depend on: the generators' code (this package) and the arguments. Stored in each shard's metadata."""
    digest = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(os.path.dirname(__file__), "*.py"))):
        with open(path, "rb") as f:
            digest.update(f.read())
    digest.update(f"|{seed}|{chars_per_shard}|{docs_per_row_group}".encode())
    return digest.hexdigest()[:16]


_FINGERPRINT_KEY = b"nanochat_synthetic"


def _is_current(path: str, fingerprint: str) -> bool:
    """Whether a shard on disk was written by this code with these arguments (an older twin is rewritten)."""
    try:
        metadata = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowException):
        return False
    return metadata.get(_FINGERPRINT_KEY) == fingerprint.encode()


def _write_shard(path: str, seed: int, index: int, chars_per_shard: int, docs_per_row_group: int) -> str:
    rng = _shard_rng(seed, index)
    docs, total = [], 0
    while total < chars_per_shard:
        docs.append(make_document(rng))
        total += len(docs[-1])
    fingerprint = _fingerprint(seed, chars_per_shard, docs_per_row_group)
    table = pa.table({"text": pa.array(docs, type=pa.string())}).replace_schema_metadata({_FINGERPRINT_KEY: fingerprint})
    atomic_write(path, lambda f: pq.write_table(table, f, row_group_size=docs_per_row_group,
                                                  write_page_checksum=True))  # readers verify each page's CRC
    return path


def write_shards(data_dir: str, num_shards: int = 8, seed: int = 0, chars_per_shard: int = 500_000,
                 docs_per_row_group: int = 256, num_workers: int = 1) -> list[str]:
    """
    Write shard_00000.parquet ... in FineWeb-Edu's layout (one 'text' column, several row
    groups); the last shard serves as the validation split. Shard i depends only on (seed, i),
    so it is the same whatever num_shards is, shards can be written in parallel, and shards
    already present are skipped, which makes an interrupted run resumable. A shard written by
    another version of this module (or with other arguments) is written again.
    """
    if num_shards < 2:
        raise ValueError(f"num_shards must be at least 2 (the last shard is the validation split), got {num_shards}")
    os.makedirs(data_dir, exist_ok=True)
    paths = [os.path.join(data_dir, f"shard_{i:05d}.parquet") for i in range(num_shards)]
    fingerprint = _fingerprint(seed, chars_per_shard, docs_per_row_group)
    todo = [i for i, path in enumerate(paths) if not _is_current(path, fingerprint)]
    args = [(paths[i], seed, i, chars_per_shard, docs_per_row_group) for i in todo]
    if num_workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=min(num_workers, len(todo))) as pool:
            futures = [pool.submit(_write_shard, *a) for a in args]
            for future in tqdm(futures, desc="synthetic shards"):
                future.result()
    else:
        for a in tqdm(args, desc="synthetic shards"):
            _write_shard(*a)
    return paths
