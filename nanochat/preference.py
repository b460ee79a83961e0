"""
Learning from preference pairs (tasks/preferences.py), the pieces DPO and the reward model
share: a pair as two token rows whose targets are only the final reply, the log-probability
of that reply under a model, the frozen reference's log-probabilities computed once per pair,
and the DPO-family losses.

A batch of B pairs is 2B rows: the B chosen conversations, then the B rejected ones, each
right-padded; targets are -1 everywhere but the final assistant reply (its text and
<|assistant_end|>), so earlier assistant turns of a multi-turn prompt are context, not data.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from nanochat.common import get_dist_info
from nanochat.dataloader import _check_resume_state, _my_conversations

LOSSES = ("sigmoid", "ipo", "simpo")


def with_reply(pair: dict, reply: str) -> dict:
    """The pair's prompt answered by reply, as a conversation."""
    return {"messages": [*pair["messages"], {"role": "assistant", "content": reply}]}


def final_reply_row(conversation: dict, tokenizer: Any, max_len: int) -> tuple[list[int], list[int]]:
    """
    (inputs, targets) of one conversation, at most max_len long: targets are the next tokens
    of the final assistant reply and -1 elsewhere. A reply pushed past max_len by a long prompt
    has no targets at all (the pair then weighs nothing), rather than some earlier turn's.
    """
    ids, mask = tokenizer.render_conversation(conversation, max_tokens=1 << 30)
    start = len(ids) - 1 - ids[::-1].index(tokenizer.encode_special("<|assistant_start|>"))
    targets = [t if m and j + 1 > start else -1 for j, (t, m) in enumerate(zip(ids[1:], mask[1:]))]
    return ids[:-1][:max_len], targets[:max_len]


def pair_batch(pairs: Sequence[dict], tokenizer: Any, max_len: int, device: str | torch.device = "cpu"
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of shape (2B, T): the chosen conversations' rows, then the rejected ones'."""
    rows = [final_reply_row(with_reply(p, p[side]), tokenizer, max_len) for side in ("chosen", "rejected") for p in pairs]
    width = max(len(x) for x, _ in rows)
    pad = tokenizer.get_bos_token_id()
    inputs = torch.tensor([x + [pad] * (width - len(x)) for x, _ in rows], dtype=torch.long)
    targets = torch.tensor([y + [-1] * (width - len(y)) for _, y in rows], dtype=torch.long)
    return inputs.to(device), targets.to(device)


def sequence_logprobs(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed log-probability of its target tokens (fp32), and how many there are."""
    nll = model(inputs, targets, loss_reduction="none").view(targets.shape).float()  # 0 where targets are -1
    return -nll.sum(dim=1), (targets >= 0).sum(dim=1)


# ---- the frozen reference ----


def reference_logprobs(reference: torch.nn.Module, dataset: Any, indices: Sequence[int], tokenizer: Any, B: int,
                       max_len: int, device: torch.device, autocast: contextlib.AbstractContextManager
                       ) -> dict[int, tuple[float, float]]:
    """
    {pair index: (log p_ref(chosen), log p_ref(rejected))} for the given pairs, in fixed chunks
    of B (so a resumed run recomputes exactly the same numbers). Computed once per run, before
    training: the reference never changes, so each step reads its numbers instead of running it.
    """
    out: dict[int, tuple[float, float]] = {}
    with torch.no_grad(), autocast:
        for k in range(0, len(indices), B):
            chunk = list(indices[k : k + B])
            inputs, targets = pair_batch([dataset[i] for i in chunk], tokenizer, max_len, device)
            logp, _ = sequence_logprobs(reference, inputs, targets)
            for j, i in enumerate(chunk):
                out[i] = (logp[j].item(), logp[len(chunk) + j].item())
    return out


def my_pairs(dataset: Any) -> list[int]:
    """This rank's pair indices (rank, rank + world_size, ...): the ones its loader will read."""
    _, rank, _, world_size = get_dist_info()
    return list(range(rank, len(dataset), world_size))


def preference_loader(dataset: Any, tokenizer: Any, B: int, max_len: int, reference: dict[int, tuple[float, float]],
                      device: str | torch.device = "cpu", loop: bool = False, resume_state: dict | None = None
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]]:
    """
    Batches of B pairs from this rank's share: (inputs, targets, the reference's (2B,)
    log-probabilities, state); the state is the next pair to take, as sft_loader's.
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
        inputs, targets = pair_batch([dataset[i] for i in batch], tokenizer, max_len, device)
        ref = torch.tensor([reference[i][0] for i in batch] + [reference[i][1] for i in batch], device=device)
        next_index = batch[-1] + world_size
        yield inputs, targets, ref, {"index": next_index, "progress": min(next_index / len(dataset), 1.0),
                                     "rank": rank, "world_size": world_size}


# ---- the losses ----


@dataclass
class PreferenceLoss:
    """Per pair: the loss, and the implicit rewards of the chosen and the rejected reply."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor

    @property
    def accuracy(self) -> torch.Tensor:
        """The fraction of pairs whose chosen reply has the higher reward (a tie counts as wrong)."""
        return (self.chosen_rewards > self.rejected_rewards).float().mean()

    @property
    def margin(self) -> torch.Tensor:
        return (self.chosen_rewards - self.rejected_rewards).mean()


def preference_loss(kind: str, beta: float, policy: torch.Tensor, reference: torch.Tensor | None,
                    lengths: torch.Tensor | None = None, gamma: float = 0.0) -> PreferenceLoss:
    """
    The DPO-family loss of B pairs from (2B,) reply log-probabilities, chosen first:
    - sigmoid (DPO): -log σ(β·[(π_c − ref_c) − (π_r − ref_r)]), the rewards β·(π − ref);
    - ipo: ([(π_c − ref_c) − (π_r − ref_r)] − 1/(2β))², which keeps the margin finite;
    - simpo: -log σ(β·(π_c/|c| − π_r/|r|) − γ), no reference, the rewards β·π/|reply|.
    """
    if kind not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, not {kind!r}")
    B = policy.shape[0] // 2
    if kind == "simpo":
        if lengths is None:
            raise ValueError("simpo needs the replies' lengths")
        rewards = beta * policy / lengths.clamp(min=1)  # length-normalized: longer replies are not favoured
        chosen, rejected = rewards[:B], rewards[B:]
        return PreferenceLoss(-F.logsigmoid(chosen - rejected - gamma), chosen, rejected)
    if reference is None:
        raise ValueError(f"{kind} needs the reference's log-probabilities")
    log_ratio = policy - reference
    chosen, rejected = beta * log_ratio[:B], beta * log_ratio[B:]
    if kind == "sigmoid":
        losses = -F.logsigmoid(chosen - rejected)
    else:
        losses = (log_ratio[:B] - log_ratio[B:] - 1 / (2 * beta)) ** 2
    return PreferenceLoss(losses, chosen, rejected)


def token_kl(policy_logits: torch.Tensor, reference_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """KL(policy ‖ reference) over the whole vocabulary, summed over the target positions (fp32)."""
    logp, logq = F.log_softmax(policy_logits.float(), -1), F.log_softmax(reference_logits.float(), -1)
    kl = (logp.exp() * (logp - logq)).sum(-1)
    return (kl * (targets >= 0)).sum()
