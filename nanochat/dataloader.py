"""
Pretraining data loader: parquet documents → BOS-prefixed tokens → (inputs, targets) batches.

Each rank reads its own row groups (rank, rank + world_size, ...) of every shard, so the
ranks see disjoint parts of the stream. Documents are tokenized in batches on several
threads and packed end to end into rows of T tokens; a batch's last target becomes the
next batch's first input, so every token is predicted exactly once.

The loader's position is small and exact: the next document not fully consumed
(epoch, file, row group, document) and how many of its tokens were already used. A run
resumed from that position sees exactly the tokens the uninterrupted run would have seen.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

import torch

from nanochat.common import get_dist_info
from nanochat.dataset import open_parquet, split_files

# (epoch, file_index, row_group, doc_index): where a document sits in this rank's stream
Position = tuple[int, int, int, int]


def _documents(files: list[str], start: Position, rank: int, world_size: int) -> Iterator[tuple[Position, str]]:
    """This rank's documents from `start` on, cycling over the files forever (epoch += 1 each pass)."""
    epoch, file_index, row_group, doc_index = start
    while True:
        produced = False
        for fi in range(file_index, len(files)):
            pf = open_parquet(files[fi])
            first_rg = row_group if fi == file_index else rank
            for rg in range(first_rg, pf.num_row_groups, world_size):
                texts = pf.read_row_group(rg, columns=["text"]).column("text").to_pylist()
                first_doc = doc_index if (fi, rg) == (file_index, row_group) else 0
                for di in range(first_doc, len(texts)):
                    produced = True
                    yield (epoch, fi, rg, di), texts[di]
        if not produced and (file_index, row_group, doc_index) == (0, rank, 0):
            raise RuntimeError(
                f"rank {rank} of {world_size} got no documents: the shards {files} have fewer row groups "
                "than there are ranks; write more or smaller row groups, or use fewer ranks"
            )
        epoch, file_index, row_group, doc_index = epoch + 1, 0, rank, 0


def tokenizing_distributed_data_loader_with_state(
    B: int,
    T: int,
    split: str,
    tokenizer: Any = None,
    device: str | torch.device = "cpu",
    tokenizer_threads: int = 4,
    tokenizer_batch_size: int = 128,
    resume_state: dict | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict]]:
    """
    Yields (inputs, targets, state): inputs and targets are (B, T) int64 on `device`;
    state is the position right after this batch, to pass back as `resume_state`.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', not {split!r}")
    if tokenizer is None:
        from nanochat.tokenizer import get_tokenizer

        tokenizer = get_tokenizer()
    _, rank, _, world_size = get_dist_info()
    files = split_files(split)
    start: Position = (0, 0, rank, 0)
    skip_tokens = 0
    if resume_state is not None:
        if resume_state["world_size"] != world_size or resume_state["rank"] != rank:
            raise ValueError(
                f"loader state is from rank {resume_state['rank']} of {resume_state['world_size']}, "
                f"this is rank {rank} of {world_size}: resume with the same number of ranks"
            )
        start = tuple(resume_state["position"])
        skip_tokens = resume_state["token_offset"]

    device = torch.device(device)
    use_cuda = device.type == "cuda"
    bos = tokenizer.get_bos_token_id()
    documents = _documents(files, start, rank, world_size)
    needed = B * T + 1
    tokens: list[int] = []
    # documents whose tokens are (partly) in `tokens`, oldest first, with their token counts;
    # the first one has already lost `used` tokens from the front
    pending: deque[tuple[Position, int]] = deque()
    used = 0

    while True:
        while len(tokens) < needed:
            batch = [next(documents) for _ in range(tokenizer_batch_size)]
            encoded = tokenizer.encode([text for _, text in batch], prepend=bos, num_threads=tokenizer_threads)
            for (pos, _), ids in zip(batch, encoded):
                pending.append((pos, len(ids)))
                if skip_tokens:  # resuming inside this document
                    ids, used, skip_tokens = ids[skip_tokens:], skip_tokens, 0
                tokens.extend(ids)
        chunk = torch.tensor(tokens[:needed], dtype=torch.long, pin_memory=use_cuda)
        # keep the last target: it is the next batch's first input
        del tokens[: B * T]
        advance = B * T
        while advance:
            pos, count = pending[0]
            take = min(count - used, advance)
            advance -= take
            used += take
            if used == count:
                pending.popleft()
                used = 0
        inputs = chunk[:-1].view(B, T).to(device, non_blocking=use_cuda)
        targets = chunk[1:].view(B, T).to(device, non_blocking=use_cuda)
        state = {"position": list(pending[0][0]), "token_offset": used, "rank": rank, "world_size": world_size}
        yield inputs, targets, state


def tokenizing_distributed_data_loader(*args: Any, **kwargs: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The same stream without the state, for evaluation loops."""
    for inputs, targets, _ in tokenizing_distributed_data_loader_with_state(*args, **kwargs):
        yield inputs, targets
