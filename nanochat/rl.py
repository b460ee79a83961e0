"""
The pieces of RL on verifiable rewards that chat_rl puts together, each testable on its own:

- the task mixture: which tasks give problems (`--tasks=GSM8K:2,SpellingBee`), and the problem
  a step's slot gets, from its number alone (so a resumed or distributed run draws the same);
- rollouts: a group of answers to one problem, told apart as finished or cut at max_new_tokens,
  with the sampled stop token kept so that stopping can be learned;
- rewards, scored in a bounded pool of threads (a HumanEval reward runs the code in a sandbox
  process whose wall-clock timeout bounds its cost, so a pool of N bounds how many run at once),
  and, against a reward model, its score mixed in (each answer as the conversation it completes);
- advantages (group-relative, optionally divided by the group's or the batch's std);
- the policy loss: REINFORCE as nanochat ships it, or with the knobs of modern GRPO (a ratio to
  the rollout policy clipped to [1-clip_low, 1+clip_high], a truncated importance weight for
  top-k sampling, a k3 KL penalty to a frozen reference, sequence-mean aggregation);
- pass@k by the unbiased estimator of Chen et al. (2021).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist
import torch.nn.functional as F

from nanochat.common import get_dist_info
from nanochat.engine import Engine
from tasks.common import Task

# ---- the task mixture ----


def _gsm8k(split: str) -> Task:
    from tasks.gsm8k import GSM8K
    return GSM8K(subset="main", split=split)


def _spellingbee(split: str) -> Task:
    from tasks.spellingbee import SpellingBee
    return SpellingBee(size=1000 if split == "test" else 20_000, split=split)


def _simplespelling(split: str) -> Task:
    from tasks.spellingbee import SimpleSpelling
    return SimpleSpelling(size=1000 if split == "test" else 20_000, split=split)


def _humaneval(split: str) -> Task:
    from tasks.humaneval import HumanEval
    # HumanEval has one split: train on the even problems, evaluate on the odd ones
    return HumanEval(start=0 if split == "train" else 1, step=2)


def _arc(subset: str) -> Callable[[str], Task]:
    def build(split: str) -> Task:
        from tasks.arc import ARC
        return ARC(subset=subset, split=split)
    return build


REWARD_TASKS: dict[str, Callable[[str], Task]] = {
    "GSM8K": _gsm8k, "SpellingBee": _spellingbee, "SimpleSpelling": _simplespelling, "HumanEval": _humaneval,
    "ARC-Easy": _arc("ARC-Easy"), "ARC-Challenge": _arc("ARC-Challenge"),
}


def parse_tasks(spec: str) -> dict[str, float | None]:
    """'GSM8K:2,SpellingBee' → {'GSM8K': 2.0, 'SpellingBee': None}: a weight, or None for 'in proportion to its size'."""
    out: dict[str, float | None] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, weight = part.partition(":")
        if name not in REWARD_TASKS:
            raise ValueError(f"--tasks: unknown task {name!r}; choose among {', '.join(REWARD_TASKS)}")
        out[name] = float(weight) if weight else None
    if not out:
        raise ValueError("--tasks names no task")
    if any(w is not None and w <= 0 for w in out.values()):
        raise ValueError(f"--tasks weights must be positive: {spec!r}")
    return out


class ProblemSampler:
    """
    The problem of slot `key` (a step's global problem number, or a refill's), from the key alone:
    one task is walked in order (key mod its length); a mixture picks the task by weight (by size
    where no weight is given) and the problem at random, both from random.Random(key).
    """

    def __init__(self, tasks: dict[str, Task], weights: dict[str, float | None]) -> None:
        self.names = list(tasks)
        self.tasks = tasks
        self.weights = [float(len(tasks[n])) if weights.get(n) is None else weights[n] for n in self.names]

    def __call__(self, key: int) -> tuple[str, Task, int]:
        if len(self.names) == 1:
            name = self.names[0]
            return name, self.tasks[name], key % len(self.tasks[name])
        rng = random.Random(key)
        name = rng.choices(self.names, weights=self.weights)[0]
        return name, self.tasks[name], rng.randrange(len(self.tasks[name]))


# ---- rollouts and rewards ----


@dataclass
class Group:
    """The answers sampled for one problem: rows are prompt + answer (+ the sampled stop token)."""

    task_name: str
    rows: list[list[int]]
    masks: list[list[int]]  # 1 on sampled tokens, 0 on the prompt and forced tool output
    truncated: list[bool]  # cut at max_new_tokens instead of stopping
    rewards: list[float]  # what the advantages are computed from
    conversation: dict | None = None  # the problem (its last message the task's reference answer)
    prompt_len: int = 0  # where each row's answer starts
    # with a reward model: the verifier's rewards and the model's scores that `rewards` mixes
    task_rewards: list[float] | None = None
    rm_scores: list[float] | None = None

    @property
    def verifier_rewards(self) -> list[float]:
        """The task's own rewards, whether or not a reward model's score was mixed into `rewards`."""
        return self.rewards if self.task_rewards is None else self.task_rewards

    @property
    def zero_variance(self) -> bool:
        """All rewards equal: every advantage is 0, so the group teaches nothing."""
        return max(self.rewards) == min(self.rewards)


def answer_tokens(row: list[int], prompt_len: int, stop_tokens: set[int]) -> list[int]:
    """A row's answer, without the stop token the row may end with."""
    answer = row[prompt_len:]
    if answer and answer[-1] in stop_tokens:
        answer = answer[:-1]
    return answer


def answer_text(tokenizer, row: list[int], prompt_len: int, stop_tokens: set[int]) -> str:
    """The decoded answer (what a task's reward reads), without the stop token the row may end with."""
    return tokenizer.decode(answer_tokens(row, prompt_len, stop_tokens))


def answer_content(tokenizer, answer: list[int]) -> str | list[dict]:
    """
    An answer's tokens as an assistant message's content, such that rendering the message gives
    back the tool tokens the model sampled: its text, or, where it called the calculator, a list
    of text, python and python_output parts (render_conversation writes their delimiters back;
    decoded as text, the delimiters would be re-encoded as ordinary characters).
    """
    opens = {tokenizer.encode_special("<|python_start|>"): "python",
             tokenizer.encode_special("<|output_start|>"): "python_output"}
    closes = {tokenizer.encode_special("<|python_end|>"), tokenizer.encode_special("<|output_end|>")}
    parts: list[dict] = []
    kind, run = "text", []
    for token in [*answer, None]:  # None: the end, which closes the last run
        if token is not None and token not in opens and token not in closes:
            run.append(token)
            continue
        if run or kind != "text":  # an empty call is still a call; an empty text run is nothing
            parts.append({"type": kind, "text": tokenizer.decode(run)})
        kind, run = opens.get(token, "text"), []
    if all(part["type"] == "text" for part in parts):
        return "".join(part["text"] for part in parts)
    return parts


def answer_conversations(group: Group, tokenizer, stop_tokens: set[int]) -> list[dict]:
    """Each answer of the group as the conversation it completes: the problem's prompt, then the answer as the reply."""
    if group.conversation is None:
        raise ValueError("the group does not hold its problem's conversation: sample it with sample_group")
    prompt = group.conversation["messages"][:-1]
    return [{"messages": [*prompt, {"role": "assistant",
                                    "content": answer_content(tokenizer, answer_tokens(row, group.prompt_len, stop_tokens))}]}
            for row in group.rows]


class RewardPool:
    """
    Scores answers concurrently in at most `workers` threads. A code task's reward runs each answer
    in its own sandbox process with a wall-clock timeout, so an infinite loop, a fork bomb or a
    flood of output costs at most that timeout, and `workers` bounds how many sandboxes run at once.
    """

    def __init__(self, workers: int) -> None:
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reward")

    def score(self, task: Task, conversation: dict, answers: Sequence[str]) -> list[float]:
        return list(self.executor.map(lambda answer: float(task.reward(conversation, answer)), answers))

    def close(self) -> None:
        self.executor.shutdown(wait=True)


@dataclass(frozen=True)
class SamplingConfig:
    """How sample_group draws a group's answers (the temperature is the caller's: evaluations draw greedily too)."""

    max_new_tokens: int
    top_k: int | None
    batch_size: int  # most answers in one forward pass
    keep_stop: bool = True  # keep the sampled stop token in the row, so that training on it teaches when to stop


Problem = tuple[str, Task, int]  # a task's name, the task, and the problem's index in it


def sample_rows(engine: Engine, prompts: list[list[int]], num_samples: int, sampling: SamplingConfig, seed: int,
                temperature: float) -> tuple[list[list[int]], list[list[int]], list[bool]]:
    """
    num_samples answers to each prompt, (rows, masks, truncated) prompt after prompt. The rows
    are decoded sampling.batch_size at a time across prompts (a batch can hold several prompts,
    each prefilled once, and a prompt can span batches), each batch with its own seed, seed + its number.
    """
    slots = [j for j in range(len(prompts)) for _ in range(num_samples)]  # each row's prompt
    rows, masks, truncated = [], [], []
    for batch, start in enumerate(range(0, len(slots), sampling.batch_size)):
        batch_slots = slots[start : start + sampling.batch_size]
        members = sorted(set(batch_slots))
        r, m, t = engine.generate_rows([prompts[j] for j in members], [batch_slots.count(j) for j in members],
                                       keep_stop=sampling.keep_stop, max_tokens=sampling.max_new_tokens,
                                       temperature=temperature, top_k=sampling.top_k, seed=seed + batch)
        rows, masks, truncated = rows + r, masks + m, truncated + t
    return rows, masks, truncated


def sample_groups(engine: Engine, tokenizer, problems: Sequence[Problem], num_samples: int, sampling: SamplingConfig,
                  seed: int, temperature: float, pool: RewardPool) -> list[Group]:
    """num_samples answers to each problem, all problems sampled together (sample_rows), and their rewards: a Group per problem."""
    conversations = [task[index] for _, task, index in problems]
    prompts = [tokenizer.render_for_completion(conversation) for conversation in conversations]
    rows, masks, truncated = sample_rows(engine, prompts, num_samples, sampling, seed, temperature)
    groups = []
    for j, ((name, task, _), conversation, prompt) in enumerate(zip(problems, conversations, prompts)):
        lo, hi = j * num_samples, (j + 1) * num_samples
        answers = [answer_text(tokenizer, row, len(prompt), engine.stop_tokens) for row in rows[lo:hi]]
        groups.append(Group(name, rows[lo:hi], masks[lo:hi], truncated[lo:hi], pool.score(task, conversation, answers),
                            conversation, len(prompt)))
    return groups


def sample_group(engine: Engine, tokenizer, task_name: str, task: Task, index: int, num_samples: int,
                 sampling: SamplingConfig, seed: int, temperature: float, pool: RewardPool) -> Group:
    """One problem's group: sample_groups of one problem, sampling.batch_size answers at a time."""
    return sample_groups(engine, tokenizer, [(task_name, task, index)], num_samples, sampling, seed, temperature, pool)[0]


def mix_rewards(group: Group, scores: list[float], task_weight: float, rm_weight: float) -> Group:
    """The group rewarded task_weight · its task's reward + rm_weight · a reward model's score, both kept for the log."""
    rewards = [task_weight * t + rm_weight * s for t, s in zip(group.rewards, scores, strict=True)]
    return replace(group, rewards=rewards, task_rewards=group.rewards, rm_scores=scores)


def shape_rewards(rewards: list[float], truncated: list[bool], overlong: str) -> list[float]:
    """--overlong=penalty: an answer cut at max_new_tokens loses 1 whatever it said ('mask' drops it from the loss instead)."""
    if overlong != "penalty":
        return rewards
    return [r - 1.0 if t else r for r, t in zip(rewards, truncated)]


# ---- advantages ----


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """The sums over ranks of a few numbers (the numbers themselves on one process)."""
    if not get_dist_info()[0]:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def group_advantages(group_rewards: Sequence[list[float]], adv_norm: str, device: torch.device,
                     eps: float = 1e-6) -> list[list[float]]:
    """
    Reward minus its group's mean ('none', as nanochat), divided by the group's std ('group', as
    GRPO) or by the std of every advantage of the step, all ranks ('batch', as Dr. GRPO suggests).
    """
    centered = []
    for rewards in group_rewards:
        mean = sum(rewards) / len(rewards)
        centered.append([r - mean for r in rewards])
    if adv_norm == "none":
        return centered
    if adv_norm == "group":
        return [[a / (math.sqrt(sum(x * x for x in adv) / len(adv)) + eps) for a in adv] for adv in centered]
    flat = [a for adv in centered for a in adv]
    sum_sq, count = all_reduce_sum([sum(a * a for a in flat), len(flat)], device)
    std = math.sqrt(sum_sq / max(count, 1))
    return [[a / (std + eps) for a in adv] for adv in centered]


# ---- the policy loss ----


@dataclass
class LossConfig:
    """The knobs; all off is nanochat's REINFORCE with a group-mean baseline, bit for bit."""

    clip_low: float = 0.0  # 0 and 0: no ratio clipping (one update per rollout)
    clip_high: float = 0.0
    kl_coef: float = 0.0
    tis_cap: float = 0.0  # the truncated importance weight's cap; 0: no weight
    top_k: int | None = None
    temperature: float = 1.0

    @property
    def plain(self) -> bool:
        """No ratio, no weight, no KL: the loss is −Σ advantage · log p, as nanochat computes it."""
        return not (self.clip_low or self.clip_high or self.kl_coef or self.tis_cap)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) per position (0 where the target is -1), from (B, T, V) logits."""
    logp = F.log_softmax(logits.float(), dim=-1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    return logp.masked_fill(targets < 0, 0.0)


@torch.no_grad()
def rollout_statistics(model: torch.nn.Module, ref_model: torch.nn.Module | None, inputs: torch.Tensor,
                       targets: torch.Tensor, cfg: LossConfig) -> dict[str, torch.Tensor]:
    """
    Per sampled token under the rollout policy (the model before this step's updates): its log-prob
    (the ratio's denominator), the policy's entropy, the sampling distribution's log-prob (top-k and
    temperature: the importance weight's denominator) and the reference's log-prob (for the KL).
    """
    logits = model(inputs).float()
    logp_all = F.log_softmax(logits, dim=-1)
    stats = {"old_logp": token_logprobs(logits, targets),
             "entropy": -(logp_all.exp() * logp_all).sum(-1).masked_fill(targets < 0, 0.0)}
    if cfg.tis_cap:
        scaled = logits / cfg.temperature
        if cfg.top_k:
            kth = torch.topk(scaled, min(cfg.top_k, scaled.size(-1)), dim=-1).values[..., -1:]
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        stats["sample_logp"] = token_logprobs(scaled, targets)
    if ref_model is not None:
        stats["ref_logp"] = token_logprobs(ref_model(inputs).float(), targets)
    return stats


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """The k3 estimator of KL(policy ‖ reference) per sampled token: exp(r) − r − 1 ≥ 0 with r = ref − policy."""
    r = ref_logp - logp
    return r.exp() - r - 1


def policy_loss(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, advantages: torch.Tensor,
                weights: torch.Tensor, stats: dict[str, torch.Tensor], cfg: LossConfig,
                counters: dict[str, float]) -> torch.Tensor:
    """
    The summed loss over this micro-batch's sampled tokens (train_step_token_normalized divides by
    the step's token count; `weights` turn that into a mean of per-sequence means). Adds to
    counters the clipped tokens and the KL, for the log.
    """
    if cfg.plain:
        nll = model(inputs, targets, loss_reduction="none").view_as(targets)  # 0 where the target is -1
        return (nll * advantages[:, None] * weights).sum()
    mask = (targets >= 0).float()
    logp = token_logprobs(model(inputs), targets)
    adv = advantages[:, None]
    ratio = (logp - stats["old_logp"]).exp()
    surrogate = ratio * adv
    if cfg.clip_low or cfg.clip_high:
        clipped = ratio.clamp(1 - cfg.clip_low, 1 + cfg.clip_high) * adv
        surrogate = torch.minimum(surrogate, clipped)  # pessimistic: no gain from moving the ratio past the range
        counters["clipped"] += float(((clipped < ratio * adv).float() * mask).sum())
    if cfg.tis_cap:
        # sampled from top-k/temperature q, trained as π: weigh by π/q, capped so rare tokens cannot blow up the step
        surrogate = surrogate * (stats["old_logp"] - stats["sample_logp"]).exp().clamp(max=cfg.tis_cap)
    loss = -surrogate
    if cfg.kl_coef:
        kl = k3_kl(logp, stats["ref_logp"]) * mask
        counters["kl"] += float(kl.detach().sum())
        loss = loss + cfg.kl_coef * kl
    return (loss * mask * weights).sum()


def rollout_batches(rows: list[list[int]], masks: list[list[int]], advantages: list[float], weights: list[float],
                    pad: int, device_batch_size: int, device: torch.device):
    """
    (inputs, targets, advantages, weights) micro-batches: the model is trained only on what it
    sampled. No rows at all gives one micro-batch with no targets, so a rank left without work
    still runs the step's collectives, contributing zero gradients.
    """
    if not rows:
        rows, masks, advantages, weights = [[pad, pad]], [[0, 0]], [0.0], [0.0]
    for start in range(0, len(rows), device_batch_size):
        chunk = range(start, min(start + device_batch_size, len(rows)))
        width = max(len(rows[i]) for i in chunk) - 1
        inputs = [rows[i][:-1] + [pad] * (width - len(rows[i]) + 1) for i in chunk]
        targets = [[t if m else -1 for t, m in zip(rows[i][1:], masks[i][1:])] + [-1] * (width - len(rows[i]) + 1)
                   for i in chunk]
        yield (torch.tensor(inputs, device=device), torch.tensor(targets, device=device),
               torch.tensor([advantages[i] for i in chunk], dtype=torch.float32, device=device),
               torch.tensor([[weights[i]] for i in chunk], dtype=torch.float32, device=device))


def sequence_weights(lengths: list[int], num_tokens: int, num_rows: int) -> list[float]:
    """
    Per-row token weights that make the token-normalized loss (Σ / num_tokens) a mean of
    per-sequence means: row i's tokens weigh num_tokens / (num_rows · len_i).
    """
    return [num_tokens / (num_rows * n) if n else 0.0 for n in lengths]


# ---- evaluation ----


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k from n samples of which c passed: 1 − C(n−c, k) / C(n, k) (Chen et al., 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))
