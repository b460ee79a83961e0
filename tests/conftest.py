"""Shared fixtures: an isolated base dir, small parquet shards, a tiny trained tokenizer, tiny checkpoints, a fact checker for the twins."""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanochat.dataset import get_data_dir
from nanochat import synthetic as syn
from nanochat.synthetic import write_shards
from nanochat.tokenizer import RustBPETokenizer, get_tokenizer_dir, train_tokenizer
from tiny import save_stage_checkpoint, tiny_gpt

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


@pytest.fixture
def offline(base_dir, monkeypatch):
    monkeypatch.setenv("NANOCHAT_DATASET", "synthetic")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return base_dir


@pytest.fixture
def base_checkpoint(offline, tiny_tokenizer):
    """A tiny random 'base model' as base_train would have saved it."""
    save_stage_checkpoint(tiny_gpt(tiny_tokenizer.get_vocab_size(), jitter=0.02), "base", 10, tokenizer=tiny_tokenizer)
    return offline


@pytest.fixture
def sft_checkpoint(offline, tiny_tokenizer):
    """A tiny random 'SFT model' (depth 1, 128-token context) as chat_sft would have saved it: where chat_dpo and chat_rm start."""
    save_stage_checkpoint(tiny_gpt(tiny_tokenizer.get_vocab_size(), 128, n_head=2, n_kv_head=1, jitter=0.02), "sft", 5,
                          tokenizer=tiny_tokenizer)
    return offline


@pytest.fixture
def synthetic_setup(base_dir, monkeypatch):
    monkeypatch.setenv("NANOCHAT_DATASET", "synthetic")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    paths = write_shards(get_data_dir(), num_shards=3, chars_per_shard=60_000, docs_per_row_group=16)
    docs = [text for path in paths[:-1] for text in pq.read_table(path)["text"].to_pylist()]
    tokenizer, _ = train_tokenizer(docs, vocab_size=512)
    tokenizer.save(get_tokenizer_dir())
    return base_dir


@pytest.fixture(scope="session")
def fact_holds() -> Callable[[str, str], bool | None]:
    """
    Whether an answer answers a twin's question, looked up in the fact tables by another route
    than the generators' (None: a question this does not check).
    """
    tables = [
        (r"(?:What color is|Which color is|What is the color of|Which color best describes) (.+)\?", dict(syn.COLORS)),
        (r"(?:What sound does|What does|Which sound does|What noise does) an? (.+) (?:make|say)\?", dict(syn.SOUNDS)),
        (r"What is the capital(?: city)? of (.+)\?|Which city is the capital of (.+)\?|Name the capital of (.+)\.",
         dict(syn.CAPITALS)),
        (r"(?:On which continent is|Which continent is) (.+?)(?: in)?\?|(.+) is on which continent\?", syn.CONTINENTS),
        (r"(?:What is|Which word is) the plural of (.+)\?|How do you say more than one (.+)\?", dict(syn.PLURALS)),
        (r"Which animal (?:says|makes the sound|goes) (.+)\?", {s: a for a, s in syn.SOUNDS}),
    ]

    def holds(question: str, answer: str) -> bool | None:
        for pattern, table in tables:
            if m := re.fullmatch(pattern, question):
                return table[next(g for g in m.groups() if g)] == answer
        if m := re.fullmatch(r"(?:What is|How much is) (\d) plus (\d)\?|What do you get when you add (\d) and (\d)\?", question):
            a, b = (int(g) for g in m.groups() if g)
            return int(answer) == a + b
        if m := re.fullmatch(r"(?:Which|What) day comes (after|before) (\w+)\?|What is the day (after|before) (\w+)\?", question):
            word, day = (g for g in m.groups() if g)
            return syn.DAYS[(syn.DAYS.index(day) + (1 if word == "after" else -1)) % 7] == answer
        if m := re.fullmatch(r"How many legs (?:does|has) an? (\w+) (?:have|got)\?", question):
            return dict(syn.LEGS)[m[1]] == int(answer)
        return None

    return holds
