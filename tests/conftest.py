"""Shared fixtures: an isolated base dir, small parquet shards, a tiny trained tokenizer."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanochat.tokenizer import RustBPETokenizer

SHARED_DATA = Path(os.environ.get("NANOCHAT_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data")).resolve()


def shared_data_path(*parts: str) -> Path:
    """A file under ../shared/data, or skip the test with the reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared/data is not beside this checkout)")
    return path


WORDS = "the a cat dog sat on mat ran far away over hill river stone apple seven twelve café naïve über".split()


SYLLABLES = "ka lo mi ne ru sa ti vo ba de fi gu".split()


def random_document(rng: random.Random) -> str:
    n = rng.randint(3, 60)
    # real words plus made-up ones, so BPE has thousands of distinct pairs to merge
    words = [rng.choice(WORDS) if rng.random() < 0.5 else "".join(rng.choices(SYLLABLES, k=rng.randint(1, 3))) for _ in range(n)]
    if rng.random() < 0.3:
        words.append(str(rng.randint(0, 99999)))
    return " ".join(words) + rng.choice([".", "!", "?", "\n"])


@pytest.fixture(scope="session")
def tiny_tokenizer() -> RustBPETokenizer:
    rng = random.Random(0)
    corpus = [random_document(rng) for _ in range(3000)]
    return RustBPETokenizer.train_from_iterator(corpus, vocab_size=512)


@pytest.fixture
def base_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    monkeypatch.delenv("NANOCHAT_DATASET", raising=False)
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    return tmp_path


def write_shard(path: Path, docs: list[str], docs_per_row_group: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": docs}), path, row_group_size=docs_per_row_group)


@pytest.fixture
def shards(base_dir) -> list[list[str]]:
    """Four small shards (three train, one val) of random documents in <base>/base_data."""
    rng = random.Random(1)
    all_docs = []
    for i in range(4):
        docs = [f"doc{i}-{j} " + random_document(rng) for j in range(rng.randint(30, 50))]
        write_shard(base_dir / "base_data" / f"shard_{i:05d}.parquet", docs, docs_per_row_group=8)
        all_docs.append(docs)
    return all_docs
