"""
Reward model: the chat model's trunk with a scalar head read at the reply's last token,
trained on preference pairs with the Bradley–Terry loss (the chosen reply should score
higher) plus a small term that keeps the scores centered on zero.

    python -m scripts.chat_rm
    python -m scripts.chat_rm --dataset=hh-rlhf --data_files=hh_train.jsonl --val_data_files=hh_test.jsonl
    torchrun --standalone --nproc_per_node=8 -m scripts.chat_rm -- --run=rm

Logs pairwise accuracy and the score margin, on the training pairs each step and on held-out
pairs at each evaluation. Starts from chatsft_checkpoints/ (or --source), saves to
chatrm_checkpoints/<model_tag>/; nanochat.preference.load_reward_model loads it by tag and
score_conversation scores any conversation.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from typing import Any

import torch
import torch.distributed as dist

from nanochat.common import get_dist_info, script_main
from nanochat.preference import (as_reward_model, bradley_terry_loss, my_pairs, pair_batch, pair_schedule, preference_loader,
                                 reply_rewards, reward_dir)
from nanochat.precision import autocast_context, compile_model, resolve_dtype, wants_compile
from nanochat.preflight import plan_run
from nanochat.schedules import apply_schedule
from nanochat.training import (StepBatches, StepLog, TrainingLoop, all_reduce_mean, build_optimizers, finish_run,
                               start_stage)
from scripts.flags import ArgumentParser, add_preference_args, add_stage_args
from tasks.preferences import PreferencePairs

REPORT_SECTION = "Reward model"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(description="Train a reward model on preference pairs (Bradley–Terry).")
    add_stage_args(p, source="sft", init_lr_frac=0.02)
    p.add_argument("--center_coef", type=float, default=0.01, help="weight of (r_chosen + r_rejected)² in the loss")
    add_preference_args(p, eval_what="held-out accuracy")
    return p.parse_args(argv)


def rm_step(model: torch.nn.Module, optimizers: list[torch.optim.Optimizer], batches: StepBatches,
            autocast: contextlib.AbstractContextManager, center_coef: float) -> tuple[dict[str, float], Any]:
    """One optimizer step, the loss a mean over the step's pairs; its metrics (the same on every rank) and the data state."""
    micro_batches = batches.take()
    # loss, accuracy, margin, reply tokens: summed over micro-batches for logging
    stats = torch.zeros(4, device=next(model.parameters()).device)
    for inputs, targets, _, data_state in micro_batches:
        with autocast:
            out = bradley_terry_loss(reply_rewards(model, inputs, targets), center_coef)
        loss = out.losses.mean()
        (loss / len(micro_batches)).backward()
        batches.fetch_one()  # overlap the next step's data loading with this backward
        stats += torch.stack([loss, out.accuracy, out.margin, (targets >= 0).sum() * len(micro_batches)]).detach()
    for opt in optimizers:
        opt.step()
    model.zero_grad(set_to_none=True)
    stats = all_reduce_mean(stats / len(micro_batches))
    metrics = dict(zip(("loss", "accuracy", "margin", "tokens"), stats.tolist()))
    metrics["tokens"] *= get_dist_info()[3]  # the mean over ranks back to the step's total
    return metrics, data_state


@torch.no_grad()
def evaluate(model: torch.nn.Module, val_set: PreferencePairs, tokenizer: Any, B: int, max_len: int,
             autocast: contextlib.AbstractContextManager, center_coef: float) -> dict[str, float]:
    """Held-out pairwise accuracy, margin and loss over every rank's share of val_set."""
    device = next(model.parameters()).device
    totals = torch.zeros(5, device=device)  # sums of: loss, correct pairs, margin, scores; pairs
    mine = my_pairs(val_set)
    for k in range(0, len(mine), B):
        chunk = mine[k : k + B]
        inputs, targets = pair_batch([val_set[i] for i in chunk], tokenizer, max_len, device)
        with autocast:
            rewards = reply_rewards(model, inputs, targets)
        out = bradley_terry_loss(rewards, center_coef)
        n = len(chunk)
        totals += torch.stack([out.losses.sum(), out.accuracy * n, out.margin * n, rewards.sum(),
                               torch.tensor(float(n), device=device)])
    if get_dist_info()[0]:
        dist.all_reduce(totals)
    loss, correct, margin, scores, pairs = totals.tolist()
    pairs = max(pairs, 1)
    return {"val_loss": loss / pairs, "val_accuracy": correct / pairs, "val_margin": margin / pairs,
            "val_mean_score": scores / (2 * pairs)}


@script_main
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    stage = start_stage(args, "nanochat-rm")
    tokenizer, device, world_size = stage.tokenizer, stage.device, stage.world_size
    dtype = resolve_dtype(stage.device_type, args.dtype)
    autocast = autocast_context(stage.device_type, dtype)
    model = as_reward_model(stage.model)  # the same trunk, one score instead of the next-token logits
    checkpoint_dir = reward_dir(stage.model_tag)
    max_len = args.max_seq_len or model.config.sequence_len
    B = args.device_batch_size
    schedule = pair_schedule(args, world_size)
    train_set, val_set, num_iterations = schedule.train_set, schedule.val_set, schedule.num_iterations
    use_compile = wants_compile(args.compile, stage.device_type, fixed_shapes=False)  # rows are padded per batch
    plan_run(model.config, 2 * B, max_len, world_size, dtype, use_compile, device, args, {
        "model": f"{stage.model_tag} from {args.source} with a scalar head: {model.num_params():,} parameters",
        **schedule.plan(args, world_size),
        "loss": f"Bradley–Terry + {args.center_coef} × (r_chosen + r_rejected)²",
    })
    train_model = compile_model(model, use_compile, fixed_shapes=False)
    optimizers = build_optimizers(model, args)

    run_meta = {"model_config": vars(model.config), "num_iterations": num_iterations, "reward_model": True}
    log = StepLog(0, world_size=world_size)
    loop = TrainingLoop.begin(args, checkpoint_dir, model, optimizers, device, run_meta, log)
    data_state = loop.start.data_state
    batches = StepBatches(preference_loader(train_set, tokenizer, B, max_len, None, device, loop=True,
                                            resume_state=data_state), schedule.grad_accum_steps)

    step, metrics = loop.start.step, {}
    while True:
        last = step == num_iterations or not batches.have_next_step()
        if loop.eval_due(step, args.eval_every, last):
            model.eval()
            metrics = evaluate(model, val_set, tokenizer, B, max_len, autocast, args.center_coef)
            model.train()
            for name, value in metrics.items():
                stage.wandb_run.log(log.eval(step, name, value))
        if loop.save_due(step, last):
            loop.save(step, model, optimizers, data_state, **metrics)
        if last:
            break

        lrm = 1.0 - step / num_iterations  # linear to zero
        apply_schedule(optimizers, lrm)
        t0 = time.perf_counter()
        stats, data_state = rm_step(train_model, optimizers, batches, autocast, args.center_coef)
        dt = time.perf_counter() - t0
        loss, tokens = stats.pop("loss"), stats.pop("tokens")  # tok/s counts reply tokens
        stage.wandb_run.log(log.step(step, num_iterations, loss, dt, lrm, tokens=int(tokens), **stats))
        step += 1

    results = {"steps": num_iterations, **metrics, "final_smooth_loss": log.smooth_loss,
               "training_time_min": log.state["total_time"] / 60,
               "skipped_pairs": sum(train_set.skipped.values()) + sum(val_set.skipped.values())}
    finish_run(results, device, REPORT_SECTION, args, stage.device_type, stage.wandb_run, log.state["evals"])
    return results


if __name__ == "__main__":
    main()
