"""
Reinforcement learning on GSM8K: sample several answers per problem, reward the right ones,
and push up the log-probability of each answer by its advantage (its reward minus the mean
reward of its group), a group-relative policy gradient in the style of GRPO, on-policy.

    python -m scripts.chat_rl
    torchrun --standalone --nproc_per_node=8 -m scripts.chat_rl -- --run=rl

Starts from chatsft_checkpoints/ (or --source), saves to chatrl_checkpoints/<model_tag>/.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.distributed as dist

from nanochat.checkpoint_manager import checkpoint_dir_for, load_model
from nanochat.common import autodetect_device_type, compute_cleanup, compute_init, get_dist_info, init_wandb, script_main
from nanochat.engine import Engine
from nanochat.precision import autocast_context, compile_model, resolve_dtype, wants_compile
from nanochat.preflight import plan_run
from nanochat.report import get_report
from nanochat.schedules import apply_schedule, scale_learning_rates
from nanochat.stages import STAGES
from nanochat.training import StepBatches, StepLog, TrainingLoop, finish_line, train_step_token_normalized
from scripts.flags import ArgumentParser, add_stage_args, positive_int
from tasks.gsm8k import GSM8K


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(description="Policy-gradient RL on GSM8K.")
    add_stage_args(p, source="sft", init_lr_frac=0.05)
    p.add_argument("--num_samples", type=positive_int, default=16, help="answers sampled per problem (the group)")
    p.add_argument("--max_new_tokens", type=int, default=256, help="most tokens per sampled answer")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the answers")
    p.add_argument("--top_k", type=int, default=50, help="sample among the k likeliest tokens")
    p.add_argument("--device_batch_size", type=positive_int, default=8, help="most rows in any forward pass")
    p.add_argument("--examples_per_step", type=positive_int, default=16, help="problems per step, all ranks")
    p.add_argument("--num_epochs", type=int, default=1, help="passes over GSM8K train (when --num_iterations is -1)")
    p.add_argument("--num_iterations", type=int, default=-1, help="optimizer steps (-1: from --num_epochs)")
    p.add_argument("--eval_every", type=int, default=60, help="pass@k on GSM8K test every N steps (-1: only at the end)")
    p.add_argument("--eval_examples", type=int, default=400, help="GSM8K test problems per evaluation")
    p.add_argument("--save_every", type=int, default=60, help="checkpoint every N steps (-1: only at the end)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    return p.parse_args(argv)


def policy_gradient_loss(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                         advantages: torch.Tensor) -> torch.Tensor:
    """−Σ advantage · log p(token) over the sampled tokens (targets of −1 — prompt, forced tool output, padding — excluded)."""
    nll = model(inputs, targets, loss_reduction="none").view_as(targets)  # 0 where the target is -1
    return (nll * advantages[:, None]).sum()


def rollout_batches(rows: list[list[int]], masks: list[list[int]], advantages: list[float], pad: int,
                    device_batch_size: int, device: torch.device):
    """(inputs, targets, advantages) micro-batches: the model is trained only on what it sampled."""
    for start in range(0, len(rows), device_batch_size):
        chunk = range(start, min(start + device_batch_size, len(rows)))
        width = max(len(rows[i]) for i in chunk) - 1
        inputs = [rows[i][:-1] + [pad] * (width - len(rows[i]) + 1) for i in chunk]
        targets = [[t if m else -1 for t, m in zip(rows[i][1:], masks[i][1:])] + [-1] * (width - len(rows[i]) + 1)
                   for i in chunk]
        yield (torch.tensor(inputs, device=device), torch.tensor(targets, device=device),
               torch.tensor([advantages[i] for i in chunk], dtype=torch.float32, device=device))


def sample_group(engine: Engine, tokenizer, task, index: int, args: argparse.Namespace, seed: int, num_samples: int,
                 temperature: float) -> tuple[list[list[int]], list[list[int]], list[float]]:
    """num_samples answers to one problem, device_batch_size at a time, each chunk with its own seed."""
    conversation = task[index]
    prompt = tokenizer.render_for_completion(conversation)
    rows, masks = [], []
    for chunk, start in enumerate(range(0, num_samples, args.device_batch_size)):
        n = min(args.device_batch_size, num_samples - start)
        r, m = engine.generate_batch(prompt, num_samples=n, max_tokens=args.max_new_tokens, temperature=temperature,
                                     top_k=args.top_k, seed=seed + chunk)
        rows += r
        masks += m
    rewards = [task.reward(conversation, tokenizer.decode(row[len(prompt):])) for row in rows]
    return rows, masks, rewards


@torch.no_grad()
def evaluate_pass_at_k(engine: Engine, tokenizer, task, args: argparse.Namespace, step: int) -> dict[int, float]:
    """pass@k for k = 1..device_batch_size on the first eval_examples test problems (rank-strided)."""
    _, rank, _, world_size = get_dist_info()
    k_max = args.device_batch_size
    passed = torch.zeros(k_max + 1, device=engine.model.get_device())
    for i in range(rank, min(args.eval_examples, len(task)), world_size):
        _, _, rewards = sample_group(engine, tokenizer, task, i, args, seed=10**9 + 1000 * step + i,
                                     num_samples=k_max, temperature=1.0)
        for k in range(1, k_max + 1):
            passed[k] += float(any(r > 0 for r in rewards[:k]))
        passed[0] += 1
    if world_size > 1:
        dist.all_reduce(passed, op=dist.ReduceOp.SUM)
    return {k: (passed[k] / passed[0].clamp(min=1)).item() for k in range(1, k_max + 1)}


@script_main
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device_type = args.device_type or autodetect_device_type()
    ddp, rank, _, world_size, device = compute_init(device_type)
    dtype = resolve_dtype(device_type, args.dtype)
    autocast = autocast_context(device_type, dtype)
    wandb_run = init_wandb(args.run, "nanochat-rl", vars(args), rank == 0)
    if args.examples_per_step % world_size:
        sys.exit(f"error: --examples_per_step={args.examples_per_step} must be a multiple of the {world_size} ranks")
    model, tokenizer, source_meta = load_model(args.source, device, "train", args.model_tag, args.model_step)
    model_tag = source_meta["model_tag"]  # the source's tag, also when load_model chose it
    checkpoint_dir = checkpoint_dir_for("rl", model_tag)
    train_task, test_task = GSM8K(subset="main", split="train"), GSM8K(subset="main", split="test")
    num_iterations = args.num_iterations
    if num_iterations <= 0:
        num_iterations = len(train_task) // args.examples_per_step * args.num_epochs
    use_compile = wants_compile(args.compile, device_type, fixed_shapes=False)  # rollouts differ in length
    plan_run(model.config, args.device_batch_size, model.config.sequence_len, world_size, dtype, use_compile, device,
                 args, {
        "model": f"{model_tag} from {args.source}: {model.num_params():,} parameters",
        "steps": f"{num_iterations:,} of {args.examples_per_step} problems × {args.num_samples} samples",
        "batch": f"rows of at most {model.config.sequence_len} tokens, {args.device_batch_size} per forward pass "
                 f"on each of {world_size} ranks",
        "precision": f"{dtype}, compile {'on' if use_compile else 'off'}, device {device}",
    })
    train_model = compile_model(model, use_compile, fixed_shapes=False)
    optimizers = model.setup_optimizers(args.unembedding_lr, args.embedding_lr, args.matrix_lr, args.weight_decay)
    scale_learning_rates(optimizers, args.init_lr_frac)

    run_meta = {"model_config": vars(model.config), "num_iterations": num_iterations}
    log = StepLog(0, world_size=world_size)  # tok/s from each step's count of sampled tokens
    loop = TrainingLoop.begin(args, checkpoint_dir, model, optimizers, device, run_meta, log)

    engine = Engine(model, tokenizer)
    pad = tokenizer.get_bos_token_id()
    per_rank = args.examples_per_step // world_size
    step, pass_at_k = loop.start.step, {}
    while True:
        last = step == num_iterations
        if loop.eval_due(step, args.eval_every, last):
            model.eval()
            with autocast:
                pass_at_k = evaluate_pass_at_k(engine, tokenizer, test_task, args, step)
            model.train()
            for k in (1, args.device_batch_size):
                wandb_run.log(log.eval(step, f"pass@{k}", pass_at_k[k]))
        if loop.save_due(step, last):
            # the data position is the step itself: step s trains on problems s·examples_per_step onwards
            loop.save(step, model, optimizers, {"next_step": step}, pass_at_k=pass_at_k)
        if last:
            break

        t0 = time.perf_counter()
        model.eval()
        rows, masks, advantages, rewards = [], [], [], []
        for j in range(per_rank):
            index = (step * args.examples_per_step + rank + j * world_size) % len(train_task)
            seed = args.seed + 1_000_003 * step + 1009 * index
            with autocast:
                r, m, group_rewards = sample_group(engine, tokenizer, train_task, index, args, seed, args.num_samples,
                                                   args.temperature)
            mean = sum(group_rewards) / len(group_rewards)
            rows += r
            masks += m
            rewards += group_rewards
            advantages += [reward - mean for reward in group_rewards]
        model.train()
        lrm = 1.0 - step / num_iterations
        apply_schedule(optimizers, lrm)
        num_micro_batches = -(-len(rows) // args.device_batch_size)
        batches = StepBatches(rollout_batches(rows, masks, advantages, pad, args.device_batch_size, device),
                              num_micro_batches)
        loss, num_tokens, _ = train_step_token_normalized(train_model, optimizers, batches, autocast,
                                                          loss_fn=policy_gradient_loss)
        dt = time.perf_counter() - t0
        stats = torch.tensor([sum(rewards), len(rewards), sum(len(r) for r in rows)], dtype=torch.float64, device=device)
        if ddp:
            dist.all_reduce(stats, op=dist.ReduceOp.SUM)
        mean_reward, mean_length = (stats[0] / stats[1]).item(), (stats[2] / stats[1]).item()
        log.track(step, "reward", mean_reward)
        wandb_run.log(log.step(step, num_iterations, loss.item(), dt, lrm, tokens=num_tokens, reward=mean_reward,
                               seq_len=mean_length))  # a NaN loss ends the run here
        step += 1

    results = {"steps": num_iterations, **{f"pass@{k}": v for k, v in pass_at_k.items()},
               "mean_reward_first_step": log.history("reward")[0][1] if log.history("reward") else None,
               "mean_reward_last_step": log.history("reward")[-1][1] if log.history("reward") else None, "training_time_min": log.state["total_time"] / 60}
    finish_line(results, device)
    get_report().log(section=STAGES["rl"].section, data=[{**vars(args), "device_type": device_type}, results], curves=log.state["evals"])
    wandb_run.finish()
    compute_cleanup()
    return results


if __name__ == "__main__":
    main()
