"""
Reinforcement learning on verifiable rewards: sample a group of answers per problem from a
mixture of tasks (GSM8K, spelling, HumanEval, ARC), reward the right ones with each task's
verifier, and push up the log-probability of each answer by its advantage (its reward minus
its group's mean), a group-relative policy gradient in the style of GRPO.

With --reward_model=TAG a reward model trained by chat_rm scores every answer too (its
conversation rendered whole), and the reward is --task_weight × the task's + --rm_weight × the
model's score (--task_weight=0: the reward model alone); the KL penalty to the source is then on
by default, and each step logs the reward model's score beside the task rewards and the answer
length, so reward hacking (score and length up while the task reward falls) shows in the log.

With no knob set this is nanochat's simplified on-policy REINFORCE. The knobs of modern GRPO
(--kl_coef, --ppo_epochs/--num_minibatches with ratio clipping, --adv_norm, --loss_agg,
--dynamic_sampling, --overlong) are each off by default; two defaults differ from nanochat's:
the sampled stop token is trained (--train_stop_token=0 switches it off) and sampling uses the
full distribution (--top_k unset; when set, a truncated importance weight corrects for it).

    python -m scripts.chat_rl --tasks=GSM8K:2,SpellingBee
    python -m scripts.chat_rl --reward_model=d20 --task_weight=0.5
    torchrun --standalone --nproc_per_node=8 -m scripts.chat_rl -- --run=rl

Starts from chatsft_checkpoints/ (or --source), saves to chatrl_checkpoints/<model_tag>/.
"""

from __future__ import annotations

import argparse
import itertools
import time
from functools import partial

import torch

from nanochat.checkpoint_manager import checkpoint_dir_for
from nanochat.common import get_dist_info, script_main
from nanochat.engine import Engine
from nanochat.errors import PreflightError
from nanochat.precision import compile_model, training_precision
from nanochat.preflight import plan_run
from nanochat.preference import load_reward_model, score_conversations
from nanochat.rl import (REWARD_TASKS, Group, LossConfig, ProblemSampler, RewardPool, SamplingConfig, all_reduce_sum,
                         answer_conversations, group_advantages, k3_kl, mix_rewards, parse_tasks, pass_at_k, policy_loss,
                         rollout_batches, rollout_statistics, sample_groups, sequence_weights,
                         shape_rewards)
from nanochat.schedules import apply_schedule
from nanochat.stages import STAGES
from nanochat.training import (StepBatches, StepLog, TrainingLoop, build_optimizers, finish_run, start_stage,
                               train_step_token_normalized)
from scripts.flags import ArgumentParser, add_stage_args, optional_top_k, positive_int

REFILL_KEYS = 1 << 40  # dynamic sampling's fresh problems are numbered from here: never a regular slot's number
# --kl_coef when --reward_model is given and --kl_coef is not: a learned reward can be gamed, and the
# KL to the source is what keeps the policy near the replies the reward model was trained to judge
RM_KL_COEF = 0.05


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(description="Policy-gradient RL on verifiable task rewards.")
    add_stage_args(p, source="sft", init_lr_frac=0.05)
    p.add_argument("--tasks", default="GSM8K",
                   help=f"reward tasks, comma-separated, each with an optional :weight (else by size); of {', '.join(REWARD_TASKS)}")
    p.add_argument("--num_samples", type=positive_int, default=16, help="answers sampled per problem (the group)")
    p.add_argument("--max_new_tokens", type=int, default=256, help="most tokens per sampled answer")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the answers")
    p.add_argument("--top_k", type=optional_top_k, default=None, help="sample among the k likeliest tokens (none: all)")
    p.add_argument("--tis_cap", type=float, default=2.0,
                   help="cap of the importance weight π/q correcting top-k or temperature sampling (0: no weight)")
    p.add_argument("--train_stop_token", type=int, choices=(0, 1), default=1, help="train on the sampled stop token")
    p.add_argument("--device_batch_size", type=positive_int, default=8,
                   help="most rows in any forward pass: answers decoded together (across problems) and trained on")
    p.add_argument("--examples_per_step", type=positive_int, default=16, help="problems per step, all ranks")
    p.add_argument("--num_epochs", type=int, default=1, help="passes over the tasks' train problems (when --num_iterations is -1)")
    p.add_argument("--num_iterations", type=int, default=-1, help="steps (-1: from --num_epochs)")
    # the knobs of modern GRPO, each off by default
    p.add_argument("--kl_coef", type=float, default=None,
                   help=f"k3 KL penalty to the source checkpoint, in the loss (default: 0, or {RM_KL_COEF} with --reward_model)")
    p.add_argument("--ppo_epochs", type=positive_int, default=1, help="passes over each rollout")
    p.add_argument("--num_minibatches", type=positive_int, default=1, help="optimizer updates per pass over a rollout")
    p.add_argument("--clip_low", type=float, default=0.2, help="ratio clipped below at 1-clip_low (when updates > 1)")
    p.add_argument("--clip_high", type=float, default=0.28, help="ratio clipped above at 1+clip_high (when updates > 1)")
    p.add_argument("--adv_norm", choices=("none", "group", "batch"), default="none",
                   help="divide advantages by the group's std, the step's, or not at all")
    p.add_argument("--loss_agg", choices=("token", "sequence"), default="token",
                   help="mean over the step's tokens, or the mean of per-answer means")
    p.add_argument("--dynamic_sampling", action="store_true",
                   help="replace groups whose rewards are all equal with fresh problems; drop those left")
    p.add_argument("--max_refills", type=int, default=8, help="fresh problems per rank and step, at most (dynamic sampling)")
    p.add_argument("--overlong", choices=("none", "mask", "penalty"), default="none",
                   help="answers cut at --max_new_tokens: as any other, left out of the loss, or their reward minus 1")
    p.add_argument("--reward_workers", type=positive_int, default=4, help="rewards scored at once (HumanEval: sandboxes)")
    # a learned reward beside (or instead of) the tasks' verifiers
    p.add_argument("--reward_model", default=None, metavar="TAG",
                   help="also score answers with chat_rm's reward model of this tag (default: none)")
    p.add_argument("--reward_model_step", type=int, default=None, help="the reward model's checkpoint step (default: the last)")
    p.add_argument("--rm_weight", type=float, default=1.0, help="weight of the reward model's score in the reward")
    p.add_argument("--task_weight", type=float, default=1.0,
                   help="weight of the task's reward when a reward model scores too (0: the reward model alone)")
    # evaluation
    p.add_argument("--eval_every", type=int, default=60, help="pass@k on the tasks' test problems every N steps (-1: only at the end)")
    p.add_argument("--eval_examples", type=int, default=400, help="test problems per task and evaluation")
    p.add_argument("--eval_samples", type=positive_int, default=8, help="samples per test problem for pass@k")
    p.add_argument("--save_every", type=int, default=60, help="checkpoint every N steps (-1: only at the end)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    args = p.parse_args(argv)
    if args.kl_coef is None:
        args.kl_coef = RM_KL_COEF if args.reward_model else 0.0
    if not args.reward_model and (args.rm_weight != 1.0 or args.task_weight != 1.0):
        p.error("--rm_weight and --task_weight weigh a reward model's score against the task's: add --reward_model=TAG")
    return args


@torch.no_grad()
def evaluate(engine: Engine, tokenizer, tasks: dict, args: argparse.Namespace, sampling: SamplingConfig,
             pool: RewardPool) -> dict[str, float]:
    """
    Per task, on its first eval_examples test problems (rank-strided): pass@k by the unbiased
    estimator over eval_samples answers at temperature 1, and greedy pass@1 beside it. The
    problems are sampled together with fixed seeds, so changes between evaluations are the model's.
    """
    _, rank, _, world_size = get_dist_info()
    n = args.eval_samples
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64) if k < n] + [n]
    results = {}
    for name, task in tasks.items():
        if min(args.eval_examples, len(task)) <= 0:  # nothing to measure: no number rather than a 0
            continue
        problems = [(name, task, i) for i in range(rank, min(args.eval_examples, len(task)), world_size)]
        sampled = sample_groups(engine, tokenizer, problems, n, sampling, 10**9, 1.0, pool)
        greedy = sample_groups(engine, tokenizer, problems, 1, sampling, 0, 0.0, pool)
        sums = [0.0] * (len(ks) + 2)  # pass@k for each k, greedy, problems
        for group, first in zip(sampled, greedy):
            correct = sum(r > 0 for r in group.rewards)
            for j, k in enumerate(ks):
                sums[j] += pass_at_k(n, correct, k)
            sums[-2] += float(first.rewards[0] > 0)
            sums[-1] += 1
        sums = all_reduce_sum(sums, engine.model.get_device())
        count = max(sums[-1], 1)
        results.update({f"{name}/pass@{k}": sums[j] / count for j, k in enumerate(ks)})
        results[f"{name}/greedy_pass@1"] = sums[-2] / count
    return results


@script_main
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    weights = parse_tasks(args.tasks)
    stage = start_stage(args, "nanochat-rl")
    model, tokenizer, device, world_size = stage.model, stage.tokenizer, stage.device, stage.world_size
    if args.examples_per_step % world_size:
        raise PreflightError(f"--examples_per_step={args.examples_per_step} must be a multiple of the {world_size} ranks")
    # rollouts differ in length: never compiled by default, so the run's length does not matter
    dtype, use_compile, autocast = training_precision(stage.device_type, args.dtype, args.compile, fixed_shapes=False,
                                                      train_tokens=None)
    # the frozen reference of the KL: the source checkpoint itself (a resumed run loads it again, unchanged)
    ref_model = stage.frozen_source(args)
    reward_model = None
    if args.reward_model:
        reward_model, _, rm_meta = load_reward_model(device, args.reward_model, args.reward_model_step)
        if reward_model.config.vocab_size != model.config.vocab_size:
            raise PreflightError(f"the reward model {args.reward_model} has a vocabulary of {reward_model.config.vocab_size:,} "
                                 f"tokens, the policy {model.config.vocab_size:,}: train the reward model from this "
                                 "policy's source (chat_rm --source) so both read the same tokens")
    checkpoint_dir = checkpoint_dir_for("rl", stage.model_tag)
    train_tasks = {name: REWARD_TASKS[name]("train") for name in weights}
    test_tasks = {name: REWARD_TASKS[name]("test") for name in weights}
    sampler = ProblemSampler(train_tasks, weights)
    num_iterations = args.num_iterations
    if num_iterations <= 0:
        num_iterations = sum(len(t) for t in train_tasks.values()) // args.examples_per_step * args.num_epochs
    updates_per_step = args.ppo_epochs * args.num_minibatches
    loss_cfg = LossConfig(
        # one update per rollout trains at ratio 1: nothing to clip
        clip_low=args.clip_low if updates_per_step > 1 else 0.0, clip_high=args.clip_high if updates_per_step > 1 else 0.0,
        kl_coef=args.kl_coef, top_k=args.top_k, temperature=args.temperature,
        # sampling from what is trained (full distribution, temperature 1) needs no correction
        tis_cap=args.tis_cap if (args.top_k or args.temperature != 1.0) else 0.0)
    plan_run(model.config, args.device_batch_size, model.config.sequence_len, world_size, dtype, use_compile, device,
             args, {
        "model": f"{stage.model_tag} from {args.source}: {model.num_params():,} parameters",
        "tasks": ", ".join(f"{n} ({len(t):,} train problems)" for n, t in train_tasks.items()),
        "steps": f"{num_iterations:,} of {args.examples_per_step} problems × {args.num_samples} samples, "
                 f"{updates_per_step} update(s) each",
        "batch": f"rows of at most {model.config.sequence_len} tokens, {args.device_batch_size} per forward pass "
                 f"on each of {world_size} ranks",
        **({"reward": f"{args.task_weight} × task reward + {args.rm_weight} × reward model {args.reward_model} "
                      f"(step {rm_meta['step']}), KL coefficient {args.kl_coef}"} if reward_model is not None else {}),
    })
    train_model = compile_model(model, use_compile, fixed_shapes=False)
    optimizers = build_optimizers(model, args)

    run_meta = {"model_config": vars(model.config), "num_iterations": num_iterations}
    if reward_model is not None:  # a resumed run must be rewarded by the same reward model
        run_meta["reward_model"] = {"model_tag": args.reward_model, "step": rm_meta["step"]}
    log = StepLog(0, world_size=world_size)  # tok/s from each step's count of sampled tokens
    loop = TrainingLoop.begin(args, checkpoint_dir, model, optimizers, device, run_meta, log)

    engine = Engine(model, tokenizer)
    sampling = SamplingConfig(args.max_new_tokens, args.top_k, args.device_batch_size, bool(args.train_stop_token))
    pool = RewardPool(args.reward_workers)
    pad = tokenizer.get_bos_token_id()

    def score_answers(group: Group) -> list[float]:
        """The reward model's score of each answer, its conversation rendered whole, device_batch_size per forward."""
        conversations = answer_conversations(group, tokenizer, engine.stop_tokens)
        return score_conversations(reward_model, tokenizer, conversations, args.device_batch_size)

    per_rank = args.examples_per_step // world_size
    task_names = list(train_tasks)
    step, evals = loop.start.step, {}
    while True:
        last = step == num_iterations
        if loop.eval_due(step, args.eval_every, last):
            model.eval()
            with autocast:
                evals = evaluate(engine, tokenizer, test_tasks, args, sampling, pool)
            model.train()
            for name, value in evals.items():
                stage.wandb_run.log(log.eval(step, name, value))
        if loop.save_due(step, last):
            # the data position is the step itself: step s draws problems s·examples_per_step onwards
            loop.save(step, model, optimizers, {"next_step": step}, evals=evals)
        if last:
            break

        # ---- rollouts: a group of answers per problem, rewarded by its task (and the reward model) ----
        t0 = time.perf_counter()
        model.eval()
        keys = [step * args.examples_per_step + stage.rank + j * world_size for j in range(per_rank)]
        groups, sampled, refills = [], [], 0
        for attempt in itertools.count():
            # the rank's problems sampled together (decode batches of device_batch_size rows across problems)
            seed = args.seed + 1_000_003 * step + 10_007 * (attempt * world_size + stage.rank)
            with autocast:
                new = sample_groups(engine, tokenizer, [sampler(key) for key in keys], args.num_samples, sampling, seed,
                                    args.temperature, pool)
                if reward_model is not None:
                    new = [mix_rewards(g, score_answers(g), args.task_weight, args.rm_weight) for g in new]
            sampled += new
            kept = [g for g in new if not (args.dynamic_sampling and g.zero_variance)]
            groups += kept
            # dynamic sampling: a fresh problem for each flat group dropped, max_refills per rank and step at most
            fresh = min(len(new) - len(kept), args.max_refills - refills)
            if fresh == 0:
                break
            # numbered apart from every regular slot and every other rank's refills
            first = REFILL_KEYS + (step * world_size + stage.rank) * (args.max_refills + 1) + refills
            keys = list(range(first, first + fresh))
            refills += fresh
        advantages = group_advantages([shape_rewards(g.rewards, g.truncated, args.overlong) for g in groups],
                                      args.adv_norm, device)
        rows = [row for g in groups for row in g.rows]
        masks = [mask for g in groups for mask in g.masks]
        if args.overlong == "mask":  # a cut answer is neither right nor wrong: leave it out of the loss
            masks = [[0] * len(m) if t else m for g in groups for m, t in zip(g.masks, g.truncated)]
        row_advantages = [a for adv in advantages for a in adv]

        # ---- updates: ppo_epochs passes over the rollout, num_minibatches optimizer steps each ----
        model.train()
        lrm = 1.0 - step / num_iterations
        apply_schedule(optimizers, lrm)
        minibatches = []
        for m in range(args.num_minibatches):  # contiguous slices; on an uneven rank some may be empty
            lo, hi = m * len(rows) // args.num_minibatches, (m + 1) * len(rows) // args.num_minibatches
            lengths = [sum(mask[1:]) for mask in masks[lo:hi]]
            row_weights = [1.0] * (hi - lo)
            if args.loss_agg == "sequence":
                num_tokens, num_rows = all_reduce_sum([sum(lengths), sum(n > 0 for n in lengths)], device)
                row_weights = sequence_weights(lengths, int(num_tokens), int(num_rows))
            micro = list(rollout_batches(rows[lo:hi], masks[lo:hi], row_advantages[lo:hi], row_weights, pad,
                                         args.device_batch_size, device))
            with autocast:  # the rollout policy's log-probs, entropy, and the reference's, before any update
                micro = [(*b, rollout_statistics(model, ref_model, b[0], b[1], loss_cfg)) for b in micro]
            minibatches.append(micro)
        counters = {"clipped": 0.0, "kl": 0.0}
        loss_fn = partial(policy_loss, cfg=loss_cfg, counters=counters)
        for _ in range(args.ppo_epochs):
            for micro in minibatches:
                loss, num_tokens, _ = train_step_token_normalized(train_model, optimizers,
                                                                  StepBatches(iter(micro), len(micro)), autocast,
                                                                  loss_fn=loss_fn)
        dt = time.perf_counter() - t0

        # ---- what a researcher watches ----
        trained = [b for micro in minibatches for b in micro]
        per_task = [x for name in task_names
                    for x in (sum(sum(g.verifier_rewards) for g in sampled if g.task_name == name),
                              sum(len(g.rewards) for g in sampled if g.task_name == name))]
        # with a reward model: its mean score and the task's mean reward beside the reward they make up
        learned = ([sum(sum(g.rm_scores) for g in sampled), sum(sum(g.verifier_rewards) for g in sampled)]
                   if reward_model is not None else [])
        totals = all_reduce_sum([
            sum(len(g.rewards) for g in sampled), sum(sum(g.rewards) for g in sampled),
            len(sampled), sum(g.zero_variance for g in sampled), refills,
            sum(sum(m) for g in sampled for m in g.masks),  # sampled tokens (not the forced tool output)
            sum(sum(g.truncated) for g in sampled),
            sum(float(b[-1]["entropy"].sum()) for b in trained), sum(int((b[1] >= 0).sum()) for b in trained),
            sum(float(k3_kl(b[-1]["old_logp"], b[-1]["ref_logp"]).masked_fill(b[1] < 0, 0.0).sum()) for b in trained),
            counters["clipped"], *per_task, *learned], device)
        answers, tokens = max(totals[0], 1), max(totals[8], 1)
        metrics = {
            "reward": totals[1] / answers, "zero_var_share": totals[3] / max(totals[2], 1), "refills": totals[4],
            "response_len": totals[5] / answers, "truncated": totals[6] / answers, "entropy": totals[7] / tokens,
            "kl": totals[9] / tokens, "clip_frac": totals[10] / (tokens * updates_per_step),
            **{f"reward/{name}": totals[11 + 2 * i] / max(totals[12 + 2 * i], 1) for i, name in enumerate(task_names)},
        }
        if learned:
            metrics["rm_score"], metrics["task_reward"] = (x / answers for x in totals[11 + 2 * len(task_names):])
        for name, value in metrics.items():
            log.track(step, name, value)  # the report's curves
        stage.wandb_run.log(log.step(step, num_iterations, loss.item(), dt, lrm, tokens=num_tokens,
                               **metrics))  # a NaN loss ends the run here
        step += 1

    pool.close()
    rewards = log.history("reward")
    results = {"steps": num_iterations, **evals,
               "mean_reward_first_step": rewards[0][1] if rewards else None,
               "mean_reward_last_step": rewards[-1][1] if rewards else None,
               "training_time_min": log.state["total_time"] / 60}
    for name in ("rm_score", "task_reward", "response_len") if reward_model is not None else ():
        # a score that rose while the task's reward fell, or by lengthening the answers: reward hacking
        history = log.history(name)
        results[f"{name}_first_step"] = history[0][1] if history else None
        results[f"{name}_last_step"] = history[-1][1] if history else None
    finish_run(results, device, STAGES["rl"].section, args, stage.device_type, stage.wandb_run, log.state["evals"])
    return results


if __name__ == "__main__":
    main()
