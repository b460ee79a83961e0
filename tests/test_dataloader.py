from __future__ import annotations

import itertools

import pytest
import torch

from nanochat.dataloader import tokenizing_distributed_data_loader, tokenizing_distributed_data_loader_with_state


def _set_rank(monkeypatch, rank: int, world_size: int) -> None:
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("LOCAL_RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world_size))


def _rank_documents(train_shards: list[list[str]], rank: int, world_size: int, rows: int = 8) -> list[str]:
    """Reference: this rank's documents, row groups of `rows` docs strided by rank, shard by shard."""
    docs = []
    for shard in train_shards:
        groups = [shard[i : i + rows] for i in range(0, len(shard), rows)]
        for group in groups[rank::world_size]:
            docs += group
    return docs


def _reference_stream(tok, docs: list[str], length: int) -> list[int]:
    stream: list[int] = []
    for doc in itertools.cycle(docs):
        stream += tok.encode(doc, prepend=tok.get_bos_token_id())
        if len(stream) >= length:
            return stream[:length]


@pytest.mark.parametrize("world_size", [1, 2])
def test_batches_are_the_packed_token_stream_of_this_ranks_documents(shards, tiny_tokenizer, monkeypatch, world_size):
    B, T, steps = 2, 16, 40  # enough steps to wrap around the train split
    train = shards[:-1]
    streams = []
    for rank in range(world_size):
        _set_rank(monkeypatch, rank, world_size)
        loader = tokenizing_distributed_data_loader(B, T, "train", tokenizer=tiny_tokenizer, tokenizer_batch_size=5)
        batches = list(itertools.islice(loader, steps))
        expected = _reference_stream(tiny_tokenizer, _rank_documents(train, rank, world_size), steps * B * T + 1)
        for k, (x, y) in enumerate(batches):
            assert x.shape == y.shape == (B, T) and x.dtype == torch.long
            window = torch.tensor(expected[k * B * T : (k + 1) * B * T + 1])
            assert torch.equal(x.flatten(), window[:-1])
            assert torch.equal(y.flatten(), window[1:])
        streams.append(set(_rank_documents(train, rank, world_size)))
    # ranks see disjoint documents that together cover the train split
    assert set.union(*streams) == {d for shard in train for d in shard}
    assert sum(len(s) for s in streams) == sum(len(shard) for shard in train)


def test_val_split_reads_only_the_last_shard(shards, tiny_tokenizer):
    loader = tokenizing_distributed_data_loader(1, 32, "val", tokenizer=tiny_tokenizer)
    x, _ = next(loader)
    expected = _reference_stream(tiny_tokenizer, shards[-1], 33)
    assert x.flatten().tolist() == expected[:32]


@pytest.mark.parametrize("world_size", [1, 2])
def test_resume_from_any_saved_position_continues_exactly(shards, tiny_tokenizer, monkeypatch, world_size):
    B, T, steps = 4, 16, 100
    _set_rank(monkeypatch, world_size - 1, world_size)
    kwargs = dict(tokenizer=tiny_tokenizer, tokenizer_batch_size=3)
    run = list(itertools.islice(tokenizing_distributed_data_loader_with_state(B, T, "train", **kwargs), steps))
    assert max(state["position"][0] for _, _, state in run) >= 1, "the run should cross an epoch boundary"
    assert any(state["token_offset"] > 0 for _, _, state in run), "some saves should fall inside a document"
    for k in range(0, steps - 5, 7):
        resumed = tokenizing_distributed_data_loader_with_state(B, T, "train", resume_state=run[k][2], **kwargs)
        for j, (x, y, state) in enumerate(itertools.islice(resumed, 5)):
            x_ref, y_ref, state_ref = run[k + 1 + j]
            assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
            assert state == state_ref


def test_resume_with_other_world_size_is_refused(shards, tiny_tokenizer, monkeypatch):
    _, _, state = next(tokenizing_distributed_data_loader_with_state(1, 8, "train", tokenizer=tiny_tokenizer))
    _set_rank(monkeypatch, 0, 2)
    with pytest.raises(ValueError, match="same number of ranks"):
        next(tokenizing_distributed_data_loader_with_state(1, 8, "train", tokenizer=tiny_tokenizer, resume_state=state))


def test_more_ranks_than_row_groups_is_a_clear_error(base_dir, tiny_tokenizer, monkeypatch):
    from conftest import write_shard

    for i in range(2):
        write_shard(base_dir / "base_data" / f"shard_{i:05d}.parquet", ["a b c", "d e f"], docs_per_row_group=2)
    _set_rank(monkeypatch, 1, 2)
    with pytest.raises(RuntimeError, match="fewer row groups than there are ranks"):
        next(tokenizing_distributed_data_loader(1, 4, "train", tokenizer=tiny_tokenizer))


def test_missing_data_says_what_to_run(base_dir, tiny_tokenizer):
    with pytest.raises(FileNotFoundError, match="nanochat.dataset"):
        next(tokenizing_distributed_data_loader(1, 4, "train", tokenizer=tiny_tokenizer))
