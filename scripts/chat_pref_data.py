"""
On-policy preference pairs: sample --num_samples answers per problem from a chat model on tasks
whose answers a verifier scores (chat_rl's reward tasks: GSM8K, SpellingBee, ...), and where a
problem got both a right and a wrong answer, pair them: the right one chosen, the wrong one
rejected. The pairs are written as JSONL in UltraFeedback's columns (`prompt`, and `chosen` and
`rejected` message lists, plus `task`, `index` and both replies' rewards), one file from the
tasks' train problems and one from their test problems, which chat_dpo and chat_rm read with
--data_files and --val_data_files.

    python -m scripts.chat_pref_data --num_samples=8 --max_problems=2000
    python -m scripts.chat_dpo --data_files=<the train file> --val_data_files=<the test file>
    torchrun --standalone --nproc_per_node=8 -m scripts.chat_pref_data -- --tasks=GSM8K,SpellingBee

Reproducible: the problems are decoded in chunks of --device_batch_size // --num_samples, each
chunk's answers drawn with a seed made of --seed, the split and its first problem's number, so
the same checkpoint, seed and batch size give the same files, byte for byte, on any number of
ranks. Each rank samples chunks rank, rank + world_size, ...; rank 0 writes them all in problem
order, atomically (an interrupted run leaves the previous file or none, never half of one).

A reply that called the calculator is written as GSM8K writes one, `<<expr=result>>` where the
tool call and its output were (tasks.gsm8k.answer_to_parts reads it back into parts): the
files' columns hold strings, and the tool's special tokens, decoded into a string, would be
re-encoded as ordinary text.

Starts from chatsft_checkpoints/ (or -i), writes $NANOCHAT_BASE_DIR/preference_data/ (or --output_dir).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
from dataclasses import dataclass, replace

import torch.distributed as dist
from tqdm import tqdm

from nanochat.checkpoint_manager import load_model
from nanochat.common import (atomic_write, autodetect_device_type, compute_cleanup, compute_init, get_base_dir,
                             get_dist_info, print0, script_main)
from nanochat.engine import ContextFullError, Engine
from nanochat.precision import autocast_context, resolve_dtype
from nanochat.report import get_report
from nanochat.rl import (REWARD_TASKS, Group, ProblemSampler, RewardPool, SamplingConfig, answer_conversations,
                         parse_tasks, sample_groups)
from nanochat.stages import STAGES
from scripts.flags import ArgumentParser, add_device_args, optional_top_k, positive_int
from tasks.preferences import validate_pair

OUTPUT_FOLDER = "preference_data"  # under $NANOCHAT_BASE_DIR


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(description="Sample answers on verifiable tasks and pair a right one with a wrong one (JSONL).")
    p.add_argument("-i", "--source", default="sft", choices=list(STAGES), help="which stage's model answers")
    p.add_argument("--model_tag", default=None, help="model tag, e.g. d20 (default: the deepest one)")
    p.add_argument("--model_step", type=int, default=None, help="checkpoint step (default: the last)")
    p.add_argument("--tasks", default="GSM8K",
                   help=f"tasks, comma-separated, each with an optional :weight (else by size), as chat_rl's; "
                        f"of {', '.join(REWARD_TASKS)}")
    p.add_argument("--output_dir", default="", help=f"where <source>-<model_tag>-train.jsonl and -test.jsonl go "
                                                    f"(default: $NANOCHAT_BASE_DIR/{OUTPUT_FOLDER})")
    p.add_argument("--num_samples", type=positive_int, default=8, help="answers sampled per problem")
    p.add_argument("--max_problems", type=int, default=-1,
                   help="train pairs from the first N train problems the tasks give (a mixture draws at random: "
                        "repeats are dropped); -1: all")
    p.add_argument("--eval_problems", type=int, default=256,
                   help="held-out pairs (for --val_data_files) from the first N test problems; -1: all, 0: none")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (> 0: the answers must differ)")
    p.add_argument("--greedy", action="store_true",
                   help="also decode each problem greedily and put that answer first: the answer the model gives is "
                        "then the pair's rejected one where it is wrong (and a sample right), its chosen one where right")
    p.add_argument("--top_k", type=optional_top_k, default=None, help="sample among the k likeliest tokens (none: all)")
    p.add_argument("--max_new_tokens", type=positive_int, default=256, help="most tokens per answer")
    p.add_argument("--device_batch_size", type=positive_int, default=8, help="most answers in one forward pass")
    p.add_argument("--reward_workers", type=positive_int, default=4, help="rewards scored at once (HumanEval: sandboxes)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed: the same seed and checkpoint give the same file")
    add_device_args(p)
    args = p.parse_args(argv)
    if args.temperature <= 0:
        p.error(f"--temperature must be > 0, got {args.temperature}: greedy answers are all the same, so no pair")
    return args


def problem_list(sampler: ProblemSampler, count: int) -> list[tuple[str, int]]:
    """(task, index) of the first `count` problems the sampler draws (keys 0, 1, ...), without repeats."""
    return list(dict.fromkeys((name, index) for name, _, index in map(sampler, range(count))))


def problem_seed(seed: int, split: str, problem: int) -> int:
    """The sampling seed of the chunk starting at a split's problem number `problem`: from these alone, so a rank's share cannot change it."""
    return random.Random(f"chat_pref_data:{seed}:{split}:{problem}").getrandbits(62)  # str seeds hash with sha512: stable


def reply_text(content: str | list[dict]) -> str:
    """
    A reply as one string, for the file's string columns: its text, and each calculator call as
    GSM8K writes it, <<expr=result>>, right where the model called it.
    """
    if isinstance(content, str):
        return content
    pieces = []
    for before, part, after in zip([None, *content], content, [*content[1:], None]):
        if part["type"] == "text":
            pieces.append(part["text"])
        elif part["type"] == "python":  # closed by its output, or at once when the tool gave none
            pieces.append(f"<<{part['text']}=" + ("" if after and after["type"] == "python_output" else ">>"))
        else:
            pieces.append(("" if before and before["type"] == "python" else "<<=") + f"{part['text']}>>")
    return "".join(pieces)


def make_pair(group: Group, index: int, tokenizer, stop_tokens: set[int]) -> dict | None:
    """
    The pair of a group of answers to problem `index` of its task, in UltraFeedback's columns
    (and where it came from): the first right answer (reward
    > 0) chosen and the first wrong one rejected, or the next ones where those do not make a pair
    the preference loader accepts (an empty reply; the same text). None without such a pair.
    """
    conversations = answer_conversations(group, tokenizer, stop_tokens)
    prompt = [{"role": m["role"], "content": m["content"]} for m in conversations[0]["messages"][:-1]]
    replies = [reply_text(c["messages"][-1]["content"]) for c in conversations]
    right = [i for i, r in enumerate(group.rewards) if r > 0]
    wrong = [i for i, r in enumerate(group.rewards) if r <= 0]
    for c, r in itertools.product(right, wrong):
        try:
            validate_pair({"messages": prompt, "chosen": replies[c], "rejected": replies[r]})
        except ValueError:
            continue
        user = next(m["content"] for m in reversed(prompt) if m["role"] == "user")
        return {"prompt": user,
                "chosen": [*prompt, {"role": "assistant", "content": replies[c]}],
                "rejected": [*prompt, {"role": "assistant", "content": replies[r]}],
                "task": group.task_name, "index": index, "chosen_reward": group.rewards[c], "rejected_reward": group.rewards[r],
                "calculator_notation": True}  # the loaders render <<expr=result>> back into the tool calls the model made
    return None


def put_first(group: Group, first: Group) -> Group:
    """group with first's answers (the greedy one) ahead of its own: make_pair takes the first right and the first wrong."""
    return replace(group, rows=first.rows + group.rows, masks=first.masks + group.masks,
                   truncated=first.truncated + group.truncated, rewards=first.rewards + group.rewards)


@dataclass
class Outcome:
    """What one problem gave: its pair (or None), and how many of its answers were right."""

    problem: int  # its number in the split's problem list: the file's order
    pair: dict | None
    right: int
    answers: int  # 0: its prompt filled the model's context


def sample_share(engine: Engine, tokenizer, tasks: dict, problems: list[tuple[str, int]], split: str,
                 args: argparse.Namespace, autocast: contextlib.AbstractContextManager) -> list[Outcome]:
    """
    This rank's problems, each answered num_samples times and paired where it can be. The problems
    go in chunks of device_batch_size // num_samples (at least one), decoded together; chunk c is
    rank c mod world_size's, seeded by its first problem's number, so the files do not depend on the ranks.
    """
    _, rank, _, world_size = get_dist_info()
    sampling = SamplingConfig(args.max_new_tokens, args.top_k, args.device_batch_size)
    pool = RewardPool(args.reward_workers)
    size = max(1, args.device_batch_size // args.num_samples)
    mine: list[Outcome] = []

    def answer(chunk: list[tuple[str, int]], seed: int) -> list[Group]:
        """The chunk's groups, decoded together: num_samples sampled answers, after the greedy answer with --greedy."""
        chunk_problems = [(name, tasks[name], index) for name, index in chunk]
        with autocast:
            groups = sample_groups(engine, tokenizer, chunk_problems, args.num_samples, sampling, seed, args.temperature,
                                   pool)
            if not args.greedy:
                return groups
            greedy = sample_groups(engine, tokenizer, chunk_problems, 1, sampling, 0, 0.0, pool)
        return [put_first(group, greedy_group) for group, greedy_group in zip(groups, greedy)]

    bar = tqdm(total=len(problems), desc=split, unit="problem", disable=rank != 0)
    for first in range(rank * size, len(problems), world_size * size):
        chunk = [(p, *problems[p]) for p in range(first, min(first + size, len(problems)))]
        seed = problem_seed(args.seed, split, first)
        try:
            groups = answer([(name, index) for _, name, index in chunk], seed)
        except ContextFullError:  # a prompt leaves no room to answer: its chunk's problems one by one, that one counted
            groups = []
            for j, (_, name, index) in enumerate(chunk):
                try:
                    groups += answer([(name, index)], seed + j)
                except ContextFullError:
                    groups.append(None)
        for (p, _, index), group in zip(chunk, groups):
            if group is None:
                mine.append(Outcome(p, None, 0, 0))
                continue
            sampled = group.rewards[1:] if args.greedy else group.rewards  # the counts are of the sampled answers
            mine.append(Outcome(p, make_pair(group, index, tokenizer, engine.stop_tokens), sum(r > 0 for r in sampled),
                                len(sampled)))
        # the bar shows on rank 0, whose chunks start each round: the round's problems, all ranks, are done
        bar.update(min(first + world_size * size, len(problems)) - bar.n)
        bar.set_postfix(pairs=sum(o.pair is not None for o in mine), refresh=False)
    bar.close()
    pool.close()
    return mine


def all_ranks_in_order(mine: list[Outcome]) -> list[Outcome]:
    """Every rank's outcomes on every rank, in problem order: the same list whatever the number of ranks."""
    shares = [mine]
    if get_dist_info()[0]:
        shares = [None] * get_dist_info()[3]
        dist.all_gather_object(shares, mine)
    return sorted((o for share in shares for o in share), key=lambda o: o.problem)


@script_main
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    weights = parse_tasks(args.tasks)
    device_type = args.device_type or autodetect_device_type()
    _, rank, _, world_size, device = compute_init(device_type)
    autocast = autocast_context(device_type, resolve_dtype(device_type, args.dtype))
    model, tokenizer, meta = load_model(args.source, device, "eval", args.model_tag, args.model_step)
    engine = Engine(model, tokenizer)
    output_dir = args.output_dir or os.path.join(get_base_dir(), OUTPUT_FOLDER)
    print0(f"{args.num_samples} answers per problem of {args.tasks} from {args.source} {meta['model_tag']} "
           f"step {meta['step']}, on {world_size} rank(s)")

    results: dict[str, dict] = {}
    for split, limit in (("train", args.max_problems), ("test", args.eval_problems)):
        if limit == 0:
            continue
        tasks = {name: REWARD_TASKS[name](split) for name in weights}
        count = limit if limit > 0 else sum(len(t) for t in tasks.values())
        problems = problem_list(ProblemSampler(tasks, weights), count)
        done = all_ranks_in_order(sample_share(engine, tokenizer, tasks, problems, split, args, autocast))
        pairs = [o.pair for o in done if o.pair is not None]
        path = os.path.join(output_dir, f"{args.source}-{meta['model_tag']}-{split}.jsonl")
        if rank == 0:
            os.makedirs(output_dir, exist_ok=True)
            text = "".join(json.dumps(pair, ensure_ascii=False) + "\n" for pair in pairs)
            atomic_write(path, lambda f, text=text: f.write(text.encode("utf-8")))
        answers = sum(o.answers for o in done)
        results[split] = {
            "problems": len(done), "pairs": len(pairs),
            "all_right": sum(0 < o.answers == o.right for o in done), "all_wrong": sum(0 < o.answers and not o.right for o in done),
            "prompt_too_long": sum(not o.answers for o in done),
            "sampled_accuracy": sum(o.right for o in done) / max(answers, 1), "file": path,
        }
        r = results[split]
        print0(f"{split}: {r['pairs']:,} of {r['problems']:,} problems gave a pair (a right and a wrong answer); "
               f"{r['all_right']:,} had only right answers, {r['all_wrong']:,} only wrong ones"
               + (f", {r['prompt_too_long']:,} prompts filled the context" if r["prompt_too_long"] else "")
               + f"; {100 * r['sampled_accuracy']:.1f}% of the answers were right; wrote {path}")

    if "train" in results:
        held_out = f" --val_data_files={results['test']['file']}" if "test" in results else ""
        print0(f"train on them: python -m scripts.chat_dpo --data_files={results['train']['file']}{held_out} (or chat_rm)")
    get_report().log(section="Preference data", data=[
        {**vars(args), "device_type": device_type, "model_step": meta["step"]},
        {f"{split} {name}": value for split, r in results.items() for name, value in r.items()}])
    compute_cleanup()
    return results


if __name__ == "__main__":
    main()
