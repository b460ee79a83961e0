"""
Learning from preference pairs (tasks/preferences.py), the pieces DPO and the reward model
share: a pair as two token rows whose targets are only the final reply, the log-probability
of that reply under a model, the frozen reference's log-probabilities computed once per pair,
and the DPO-family losses.

The reward model is the chat model's trunk with a one-row head, saved under REWARD_FOLDER
(not a stage to chat with, so not in the stage registry); load_reward_model and
score_conversation score any conversation's final reply.

A batch of B pairs is 2B rows: the B chosen conversations, then the B rejected ones, each
right-padded; targets are -1 everywhere but the final assistant reply (its text and
<|assistant_end|>), so earlier assistant turns of a multi-turn prompt are context, not data.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from nanochat.checkpoint_manager import COMPILED_PREFIX, find_largest_model, find_last_step, load_checkpoint
from nanochat.common import get_base_dir, get_dist_info
from nanochat.dataloader import padded_rows, rank_batches
from nanochat.errors import NanochatError
from nanochat.gpt import GPT, GPTConfig
from nanochat.schedules import apply_schedule
from nanochat.tokenizer import get_tokenizer
from nanochat.training import all_reduce_mean
from tasks.gsm8k import answer_to_parts
from tasks.preferences import PreferencePairs, preference_datasets

LOSSES = ("sigmoid", "ipo", "simpo")


def with_reply(pair: dict, reply: str) -> dict:
    """The pair's prompt answered by reply, as a conversation (calculator calls as tool parts where the pair says so)."""
    content = answer_to_parts(reply) if pair.get("calculator_notation") else reply
    return {"messages": [*pair["messages"], {"role": "assistant", "content": content}]}


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
    return padded_rows(rows, tokenizer.get_bos_token_id(), device)


def sequence_logprobs(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed log-probability of its target tokens (fp32), and how many there are."""
    nll = model(inputs, targets, loss_reduction="none").view(targets.shape).float()  # 0 where targets are -1
    return -nll.sum(dim=1), (targets >= 0).sum(dim=1)


# ---- a preference run's data and steps ----


class PreferenceRunError(NanochatError):
    """A preference run's flags and data do not make a run: a step that does not divide, too few pairs."""

    every_rank = True  # from flags and data every rank shares


@dataclass
class PairSchedule:
    """What chat_dpo's and chat_rm's flags (flags.add_preference_args) make of the data: the pairs and the steps."""

    train_set: PreferencePairs
    val_set: PreferencePairs
    grad_accum_steps: int
    num_iterations: int

    def plan(self, args: argparse.Namespace, world_size: int) -> dict[str, str]:
        """The plan's lines about the data, the steps and the batch."""
        return {"data": f"{self.train_set.summary()}; held out: {self.val_set.summary()}",
                "steps": f"{self.num_iterations:,} of {args.target_pairs_per_step} pairs",
                "batch": f"{self.grad_accum_steps} micro-batches of {args.device_batch_size} pairs on each of "
                         f"{world_size} ranks"}


def pair_schedule(args: argparse.Namespace, world_size: int) -> PairSchedule:
    """The pairs the flags name and the number of steps: --num_iterations, or --num_epochs over the train pairs."""
    pairs_per_micro_step = args.device_batch_size * world_size
    if args.twin_kinds and (args.data_files or args.val_data_files):
        raise PreferenceRunError("--twin_kinds picks pairs of the offline twin: drop it, or drop --data_files")
    if args.target_pairs_per_step % pairs_per_micro_step:
        raise PreferenceRunError(f"--target_pairs_per_step={args.target_pairs_per_step} is not a multiple of "
                                 f"device_batch_size × world_size = {pairs_per_micro_step}")
    train_set, val_set = preference_datasets(args.dataset, args.data_files, args.val_data_files, args.max_pairs,
                                             args.eval_pairs, args.twin_kinds)
    if len(train_set) < pairs_per_micro_step or len(val_set) == 0:
        raise PreferenceRunError(f"too few well-formed pairs to train on ({train_set.summary()}; {val_set.summary()})")
    num_iterations = args.num_iterations
    if num_iterations <= 0:
        num_iterations = len(train_set) // args.target_pairs_per_step * args.num_epochs
    return PairSchedule(train_set, val_set, args.target_pairs_per_step // pairs_per_micro_step, num_iterations)


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
            logp = sequence_logprobs(reference, inputs, targets)[0].tolist()  # one device sync per chunk
            for j, i in enumerate(chunk):
                out[i] = (logp[j], logp[len(chunk) + j])
    return out


def my_pairs(dataset: Any) -> list[int]:
    """This rank's pair indices (rank, rank + world_size, ...): the ones its loader will read."""
    _, rank, _, world_size = get_dist_info()
    return list(range(rank, len(dataset), world_size))


def preference_loader(dataset: Any, tokenizer: Any, B: int, max_len: int,
                      reference: dict[int, tuple[float, float]] | None, device: str | torch.device = "cpu",
                      loop: bool = False, resume_state: dict | None = None
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, dict]]:
    """
    Batches of B pairs from this rank's share: (inputs, targets, the reference's (2B,)
    log-probabilities or None without a reference, state); the state is the next pair to
    take, as sft_loader's.
    """
    for batch, state in rank_batches(dataset, B, loop, resume_state):
        inputs, targets = pair_batch([dataset[i] for i in batch], tokenizer, max_len, device)
        ref = None if reference is None else torch.tensor(
            [reference[i][0] for i in batch] + [reference[i][1] for i in batch], device=device)
        yield inputs, targets, ref, state


# ---- what chat_dpo and chat_rm share: the step, the held-out sums, the loop ----

# a micro-batch's statistics from (inputs, targets, the reference's log-probs or None):
# "loss", the mean over its pairs with its graph, first, then any scalars to log
PairStats = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], dict[str, torch.Tensor]]


def pair_step(model: torch.nn.Module, optimizers: list[torch.optim.Optimizer], batches: Any,
              pair_stats: PairStats) -> tuple[dict[str, float], Any]:
    """
    One optimizer step over the next micro-batches of pairs (a training.StepBatches): the loss
    is the mean over every pair of the step (each micro-batch holds the same number of pairs,
    and the optimizers average the ranks). Returns the step's statistics, means over the step
    and the ranks but "tokens", the step's reply tokens, and the data state.
    """
    micro_batches = batches.take()
    n = len(micro_batches)
    sums: torch.Tensor | None = None
    for inputs, targets, reference, data_state in micro_batches:
        stats = pair_stats(inputs, targets, reference)
        (stats["loss"] / n).backward()
        batches.fetch_one()  # overlap the next step's data loading with this backward
        # the reply tokens times n, so that the mean below over micro-batches and ranks times the ranks is the total
        values = torch.stack([*stats.values(), (targets >= 0).sum() * n]).detach()
        sums = values if sums is None else sums + values
    for opt in optimizers:
        opt.step()
    model.zero_grad(set_to_none=True)
    means = all_reduce_mean(sums / n)
    metrics = dict(zip([*stats, "tokens"], means.tolist()))
    metrics["tokens"] *= get_dist_info()[3]
    return metrics, data_state


@torch.no_grad()
def held_out_sums(dataset: Any, tokenizer: Any, B: int, max_len: int, device: torch.device, names: Sequence[str],
                  chunk_sums: Callable[[list[int], torch.Tensor, torch.Tensor], tuple[list[torch.Tensor], torch.Tensor]]
                  ) -> tuple[dict[str, float], float, dict[str, float]]:
    """
    Sums over every rank's share of held-out pairs, B at a time: chunk_sums(pair indices,
    inputs, targets) gives one sum per name and whether each pair was ranked right. Returns the
    sums over all ranks, the pair count, and the accuracy per kind of pair (the twin's kinds;
    empty when the pairs have none).
    """
    pair_kinds = [dataset[i].get("kind") for i in range(len(dataset))]
    kinds = sorted({kind for kind in pair_kinds if kind is not None})
    totals = torch.zeros(len(names) + 1 + 2 * len(kinds), device=device)  # names, pairs, right and count per kind
    mine = my_pairs(dataset)
    for k in range(0, len(mine), B):
        chunk = mine[k : k + B]
        inputs, targets = pair_batch([dataset[i] for i in chunk], tokenizer, max_len, device)
        sums, right = chunk_sums(chunk, inputs, targets)
        of_kind = torch.tensor([[pair_kinds[i] == kind for i in chunk] for kind in kinds], device=device,
                               dtype=torch.float32).reshape(len(kinds), len(chunk))
        totals += torch.cat([torch.stack([*sums, torch.tensor(float(len(chunk)), device=device)]),
                             of_kind @ right.float(), of_kind.sum(1)])
    if get_dist_info()[0]:
        dist.all_reduce(totals)  # a rank with no pairs still joins, with zeros
    values = totals.tolist()
    n = len(names)
    right, count = values[n + 1 : n + 1 + len(kinds)], values[n + 1 + len(kinds) :]
    by_kind = {kind: r / max(c, 1) for kind, r, c in zip(kinds, right, count)}
    return dict(zip(names, values[:n])), values[n], by_kind


def train_on_pairs(loop: Any, model: torch.nn.Module, optimizers: list[torch.optim.Optimizer], batches: Any,
                   num_iterations: int, step_fn: Callable[[], tuple[dict[str, float], Any]],
                   evaluate: Callable[[], dict[str, float]], log: Any, wandb_run: Any, args: argparse.Namespace
                   ) -> dict[str, float]:
    """
    chat_dpo's and chat_rm's loop (a training.TrainingLoop, the same bookkeeping as every
    stage's): held-out metrics every --eval_every steps and at the end, saves, the learning
    rate linear to zero, one step_fn() a step. Returns the last held-out metrics.
    """
    step, metrics, data_state = loop.start.step, {}, loop.start.data_state
    while True:
        last = step == num_iterations or not batches.have_next_step()
        if loop.eval_due(step, args.eval_every, last):
            model.eval()
            metrics = evaluate()
            model.train()
            for name, value in metrics.items():
                wandb_run.log(log.eval(step, name, value))
        if loop.save_due(step, last):
            loop.save(step, model, optimizers, data_state, **metrics)
        if last:
            return metrics

        lrm = 1.0 - step / num_iterations  # linear to zero
        apply_schedule(optimizers, lrm)
        t0 = time.perf_counter()
        stats, data_state = step_fn()
        dt = time.perf_counter() - t0
        loss, tokens = stats.pop("loss"), stats.pop("tokens")  # tok/s counts reply tokens, as SFT's counts targets
        wandb_run.log(log.step(step, num_iterations, loss, dt, lrm, tokens=int(tokens), **stats))
        step += 1


# ---- the losses ----


@dataclass
class PreferenceLoss:
    """Per pair: the loss, and the implicit rewards of the chosen and the rejected reply."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor

    @property
    def right(self) -> torch.Tensor:
        """Per pair, whether the chosen reply has the higher reward (a tie counts as wrong)."""
        return self.chosen_rewards > self.rejected_rewards

    @property
    def accuracy(self) -> torch.Tensor:
        """The fraction of pairs ranked right."""
        return self.right.float().mean()

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


# ---- the reward model ----


REWARD_FOLDER = "chatrm_checkpoints"  # $NANOCHAT_BASE_DIR/<folder>/<model_tag>/: a scorer, not a chat model to talk to


def reward_dir(model_tag: str) -> str:
    """Where chat_rm saves the reward model of one model tag."""
    return os.path.join(get_base_dir(), REWARD_FOLDER, model_tag)


def as_reward_model(model: GPT) -> GPT:
    """
    The chat model's trunk with a scalar head: the output head becomes one row, so forward(idx)
    gives (B, T, 1) scores, soft-capped to ±15 like the logits were, and the head trains with
    the head's learning rate. Small random, not zero, at first: a zero head would give the
    trunk no gradient until the head had grown.
    """
    model.lm_head = torch.nn.Linear(model.config.n_embd, 1, bias=False, device=model.lm_head.weight.device)
    torch.nn.init.normal_(model.lm_head.weight, std=model.config.n_embd ** -0.5 / 10)
    return model


def reply_rewards(model: GPT, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """
    Per row of pair_batch: the score read where the reply's last token is fed (its last
    target predicts <|assistant_end|>, so the trunk has seen the whole reply there); a row
    whose reply was truncated away is read at its first token.
    """
    positions = torch.arange(targets.shape[1], device=targets.device)
    last = torch.where(targets >= 0, positions, 0).max(dim=1).values
    scores = model(inputs)[..., 0]
    return scores.gather(1, last[:, None])[:, 0].float()


def bradley_terry_loss(rewards: torch.Tensor, center_coef: float = 0.0) -> PreferenceLoss:
    """
    -log σ(r_c − r_r) per pair, from (2B,) rewards, chosen first, plus center_coef·(r_c + r_r)²:
    Bradley–Terry fixes only differences, so the centering term keeps the scores near zero
    (comparable across runs, and safe to add to task rewards).
    """
    B = rewards.shape[0] // 2
    chosen, rejected = rewards[:B], rewards[B:]
    return PreferenceLoss(-F.logsigmoid(chosen - rejected) + center_coef * (chosen + rejected) ** 2, chosen, rejected)


def load_reward_model(device: torch.device | str, model_tag: str | None = None, step: int | None = None
                      ) -> tuple[GPT, Any, dict[str, Any]]:
    """A reward model chat_rm saved (default: the largest tag, its last step), in eval mode, and its tokenizer."""
    checkpoints_dir = os.path.join(get_base_dir(), REWARD_FOLDER)
    model_tag = model_tag or find_largest_model(checkpoints_dir)
    checkpoint_dir = os.path.join(checkpoints_dir, model_tag)
    step = find_last_step(checkpoint_dir) if step is None else step
    model_data, _, meta = load_checkpoint(checkpoint_dir, step, device)
    model = GPT(GPTConfig(**meta["model_config"])).to(device)
    model.init_weights()  # the rotary buffers, which are not in the state dict
    as_reward_model(model)
    model.load_state_dict({k.removeprefix(COMPILED_PREFIX): v for k, v in model_data.items()}, strict=True)
    return model.eval(), get_tokenizer(), {**meta, "model_tag": model_tag, "step": step}


@torch.no_grad()
def score_conversation(model: GPT, tokenizer: Any, conversation: dict, max_len: int | None = None) -> float:
    """The reward model's score of a conversation's final assistant reply."""
    return score_conversations(model, tokenizer, [conversation], 1, max_len)[0]


# ---- scoring many conversations (chat_rl --reward_model) ----


@torch.no_grad()
def score_conversations(model: GPT, tokenizer: Any, conversations: Sequence[dict], batch_size: int,
                        max_len: int | None = None) -> list[float]:
    """
    score_conversation of each conversation, batch_size of them per forward pass. Rows are
    right-padded: the trunk is causal, so the padding after a reply cannot change its score.
    """
    max_len = max_len or model.config.sequence_len
    device = model.lm_head.weight.device
    scores: list[float] = []
    for start in range(0, len(conversations), batch_size):
        rows = [final_reply_row(c, tokenizer, max_len) for c in conversations[start : start + batch_size]]
        inputs, targets = padded_rows(rows, tokenizer.get_bos_token_id(), device)
        scores += reply_rewards(model, inputs, targets).tolist()  # one device sync per batch
    return scores
