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
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from nanochat.common import get_dist_info
from nanochat.dataset import open_parquet, read_texts, split_files

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
                texts = read_texts(pf, files[fi], rg)
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


def _check_resume_state(state: dict, rank: int, world_size: int) -> None:
    if state["world_size"] != world_size or state["rank"] != rank:
        raise ValueError(
            f"loader state is from rank {state['rank']} of {state['world_size']}, "
            f"this is rank {rank} of {world_size}: resume with the same number of ranks"
        )


def pack_documents(documents: Iterator[tuple[Any, list[int]]], B: int, T: int, device: torch.device,
                   skip_tokens: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, Any, int]]:
    """
    Pack token documents end to end into (B, T) inputs and targets. Yields them with the
    position of the first document not yet fully used and how many of its tokens were, the
    exact place to restart from (`skip_tokens` drops that many tokens of the first document).
    A batch's last target is the next batch's first input, so no token goes unpredicted.
    """
    use_cuda = device.type == "cuda"
    needed = B * T + 1
    tokens: list[int] = []
    # documents whose tokens are (partly) in `tokens`, oldest first, with their token counts;
    # the first one has already lost `used` tokens from the front
    pending: deque[tuple[Any, int]] = deque()
    used = 0
    while True:
        while len(tokens) < needed:
            try:
                pos, ids = next(documents)
            except StopIteration:
                return  # a finite stream ends with its last full batch
            pending.append((pos, len(ids)))
            if skip_tokens:  # resuming inside this document
                ids, used, skip_tokens = ids[skip_tokens:], skip_tokens, 0
            tokens.extend(ids)
        chunk = torch.tensor(tokens[:needed], dtype=torch.long, pin_memory=use_cuda)
        del tokens[: B * T]
        advance = B * T
        while advance:
            count = pending[0][1]
            take = min(count - used, advance)
            advance -= take
            used += take
            if used == count:
                pending.popleft()
                used = 0
        inputs = chunk[:-1].view(B, T).to(device, non_blocking=use_cuda)
        targets = chunk[1:].view(B, T).to(device, non_blocking=use_cuda)
        yield inputs, targets, pending[0][0], used


def _tokenized(documents: Iterator[tuple[Position, str]], tokenizer: Any, threads: int,
               batch_size: int) -> Iterator[tuple[Position, list[int]]]:
    """Tokenize documents batch_size at a time on several threads, BOS first, keeping their positions."""
    bos = tokenizer.get_bos_token_id()
    while True:
        batch = [next(documents) for _ in range(batch_size)]
        encoded = tokenizer.encode([text for _, text in batch], prepend=bos, num_threads=threads)
        yield from zip((pos for pos, _ in batch), encoded)


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
        _check_resume_state(resume_state, rank, world_size)
        start, skip_tokens = tuple(resume_state["position"]), resume_state["token_offset"]
    documents = _tokenized(_documents(files, start, rank, world_size), tokenizer, tokenizer_threads, tokenizer_batch_size)
    for inputs, targets, pos, used in pack_documents(documents, B, T, torch.device(device), skip_tokens):
        yield inputs, targets, {"position": list(pos), "token_offset": used, "rank": rank, "world_size": world_size}


def tokenizing_distributed_data_loader(*args: Any, **kwargs: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The same stream without the state, for evaluation loops."""
    for inputs, targets, _ in tokenizing_distributed_data_loader_with_state(*args, **kwargs):
        yield inputs, targets


# ---- conversations (mid-training and SFT) ----


def _my_conversations(dataset: Any, start: int, loop: bool, rank: int, world_size: int) -> Iterator[int]:
    """This rank's conversation indices (rank, rank + world_size, ...) from `start`, once or forever."""
    index = start
    while True:
        if index >= len(dataset):
            if not loop:
                return
            index = rank
        yield index
        index += world_size


def packed_conversation_loader(dataset: Any, tokenizer: Any, B: int, T: int, device: str | torch.device = "cpu",
                               loop: bool = False, resume_state: dict | None = None
                               ) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict]]:
    """
    Mid-training batches: every conversation rendered (BOS, special tokens, tool calls) and
    packed end to end into full rows; the model learns from every token. One pass over the
    dataset unless `loop`; each state carries `progress`, the fraction of it consumed.
    """
    _, rank, _, world_size = get_dist_info()
    start, skip_tokens = rank, 0
    if resume_state is not None:
        _check_resume_state(resume_state, rank, world_size)
        start, skip_tokens = resume_state["index"], resume_state["token_offset"]
    documents = ((i, tokenizer.render_conversation(dataset[i], max_tokens=1 << 30)[0])
                 for i in _my_conversations(dataset, start, loop, rank, world_size))
    for inputs, targets, index, used in pack_documents(documents, B, T, torch.device(device), skip_tokens):
        yield inputs, targets, {"index": index, "token_offset": used, "progress": index / len(dataset),
                                "rank": rank, "world_size": world_size}


def sft_batch(conversations: list[dict], tokenizer: Any, max_len: int, device: str | torch.device = "cpu"
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """
    One conversation a row, right-padded to the longest: targets are the next tokens where the
    tokenizer's mask says the assistant wrote them, and -1 (ignored) everywhere else.
    """
    rows = []
    for conversation in conversations:
        ids, mask = tokenizer.render_conversation(conversation, max_tokens=max_len + 1)
        targets = [t if m else -1 for t, m in zip(ids[1:], mask[1:])]
        rows.append((ids[:-1], targets))
    return padded_rows(rows, tokenizer.get_bos_token_id(), device)


def padded_rows(rows: Sequence[tuple[list[int], list[int]]], pad: int, device: str | torch.device = "cpu"
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) rows right-padded to the longest: inputs with `pad`, targets with -1 (ignored)."""
    width = max(len(inputs) for inputs, _ in rows)
    inputs = torch.tensor([x + [pad] * (width - len(x)) for x, _ in rows], dtype=torch.long)
    targets = torch.tensor([y + [-1] * (width - len(y)) for _, y in rows], dtype=torch.long)
    device = torch.device(device)
    return inputs.to(device), targets.to(device)


def rank_batches(dataset: Any, B: int, loop: bool = False,
                 resume_state: dict | None = None) -> Iterator[tuple[list[int], dict]]:
    """
    This rank's share of the dataset's indices in batches of B, each with the state that
    resumes right after it (the next index to take); the conversation loaders build on it.
    """
    _, rank, _, world_size = get_dist_info()
    start = rank
    if resume_state is not None:
        _check_resume_state(resume_state, rank, world_size)
        start = resume_state["index"]
    indices = _my_conversations(dataset, start, loop, rank, world_size)
    while True:
        batch = [i for _, i in zip(range(B), indices)]
        if len(batch) < B:
            return
        next_index = batch[-1] + world_size
        yield batch, {"index": next_index, "progress": min(next_index / len(dataset), 1.0),
                      "rank": rank, "world_size": world_size}


def sft_loader(dataset: Any, tokenizer: Any, B: int, max_len: int, device: str | torch.device = "cpu",
               loop: bool = False, resume_state: dict | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict]]:
    """SFT batches of B conversations from this rank's share; the state is the next conversation to take."""
    for batch, state in rank_batches(dataset, B, loop, resume_state):
        inputs, targets = sft_batch([dataset[i] for i in batch], tokenizer, max_len, device)
        yield inputs, targets, state
