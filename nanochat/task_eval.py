"""
Evaluating a chat model on a Task, as chat_eval, chat_sft and chat_rl all do.

Categorical tasks (multiple choice) are scored without sampling: the prompt goes through the
model in batches and the prediction is the answer letter with the highest logit, among the
example's letters only. Generative tasks are sampled through the Engine, several problems
decoded together, and judged by the task's own `evaluate`; with several samples an example
counts as solved if any sample is right (pass@k). Examples are split across ranks and the
counts summed.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from tqdm import tqdm

from nanochat.common import get_dist_info
from nanochat.engine import Engine

# multiple choice with four options is right a quarter of the time by chance
CHANCE_ACCURACY = {"categorical": 0.25, "generative": 0.0}


def _summed_across_ranks(correct: int, total: int, device: torch.device) -> tuple[int, int]:
    if not get_dist_info()[0]:
        return correct, total
    counts = torch.tensor([correct, total], dtype=torch.long, device=device)
    dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    return int(counts[0]), int(counts[1])


def _my_indices(num: int, max_problems: int | None) -> range:
    _, rank, _, world_size = get_dist_info()
    stop = num if max_problems is None or max_problems < 0 else min(num, max_problems)
    return range(rank, stop, world_size)


def _letter_token_ids(tokenizer, letters: list[str]) -> list[int]:
    ids = [tokenizer.encode(letter) for letter in letters]
    if any(len(i) != 1 for i in ids):
        raise ValueError(f"answer letters {letters} must each be a single token")
    return [i[0] for i in ids]


@torch.no_grad()
def evaluate_categorical(task, model, tokenizer, batch_size: int = 8, max_problems: int | None = None,
                         progress: bool = True) -> float:
    """Accuracy from the logits over each example's answer letters right after <|assistant_start|>."""
    device = model.get_device()
    indices = list(_my_indices(len(task), max_problems))
    bos = tokenizer.get_bos_token_id()
    correct = 0
    bar = tqdm(total=len(indices), desc="categorical", disable=not progress or get_dist_info()[1] != 0, leave=False)
    for start in range(0, len(indices), batch_size):
        conversations = [task[i] for i in indices[start : start + batch_size]]
        prompts = [tokenizer.render_for_completion(c) for c in conversations]
        width = max(len(p) for p in prompts)
        # right padding: causal attention never lets a prompt see the padding after it
        batch = torch.tensor([p + [bos] * (width - len(p)) for p in prompts], dtype=torch.long, device=device)
        logits = model(batch)
        for row, (conversation, prompt) in enumerate(zip(conversations, prompts)):
            letters = conversation["letters"]
            letter_logits = logits[row, len(prompt) - 1, _letter_token_ids(tokenizer, letters)]
            prediction = letters[int(letter_logits.argmax())]
            correct += int(bool(task.evaluate(conversation, prediction)))
        bar.update(len(conversations))
    bar.close()
    correct, total = _summed_across_ranks(correct, len(indices), device)
    return correct / max(total, 1)


@torch.no_grad()
def evaluate_generative(task, model, tokenizer, num_samples: int = 1, max_new_tokens: int = 512,
                        temperature: float = 0.0, top_k: int | None = 50, max_problems: int | None = None,
                        progress: bool = True, seed: int = 42, batch_size: int = 8) -> float:
    """
    Fraction of examples with at least one right answer among num_samples samples (pass@num_samples).
    Problems are decoded together, batch_size answers a batch (each problem's samples in one
    batch, so at least one problem), since a decoding step costs little more for more rows.
    A batch's samples are drawn with seed + the index of its first problem; greedy answers
    depend on neither.
    """
    device = model.get_device()
    engine = Engine(model, tokenizer)
    indices = list(_my_indices(len(task), max_problems))
    per_batch = max(1, batch_size // num_samples)
    correct = 0
    bar = tqdm(total=len(indices), desc="generative", disable=not progress or get_dist_info()[1] != 0, leave=False)
    for start in range(0, len(indices), per_batch):
        batch = indices[start : start + per_batch]
        conversations = [task[i] for i in batch]
        prompts = [tokenizer.render_for_completion(conversation) for conversation in conversations]
        rows, _, _ = engine.generate_rows(prompts, [num_samples] * len(batch), max_tokens=max_new_tokens,
                                          temperature=temperature, top_k=top_k, seed=seed + batch[0])
        for j, (conversation, prompt) in enumerate(zip(conversations, prompts)):
            answers = [tokenizer.decode(row[len(prompt):]) for row in rows[j * num_samples : (j + 1) * num_samples]]
            correct += int(any(task.evaluate(conversation, answer) for answer in answers))
        bar.update(len(batch))
        bar.set_postfix(acc=f"{correct / (start + len(batch)):.3f}")
    bar.close()
    correct, total = _summed_across_ranks(correct, len(indices), device)
    return correct / max(total, 1)


def evaluate_task(task, model, tokenizer, **kwargs) -> float:
    """Dispatch on the task's eval_type; kwargs that the other kind does not take are dropped."""
    if task.eval_type == "categorical":
        keys = ("batch_size", "max_problems", "progress")
        return evaluate_categorical(task, model, tokenizer, **{k: v for k, v in kwargs.items() if k in keys})
    keys = ("num_samples", "max_new_tokens", "temperature", "top_k", "max_problems", "progress", "seed", "batch_size")
    return evaluate_generative(task, model, tokenizer, **{k: v for k, v in kwargs.items() if k in keys})


def centered_accuracy(accuracy: float, eval_type: str) -> float:
    """0 at chance, 1 at perfect: how ChatCORE puts tasks of different chance levels on one scale."""
    chance = CHANCE_ACCURACY[eval_type]
    return (accuracy - chance) / (1.0 - chance)
