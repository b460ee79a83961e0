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
from typing import Any

import torch

from nanochat.common import script_main
from nanochat.preference import (as_reward_model, bradley_terry_loss, held_out_sums, pair_schedule, pair_step,
                                 preference_loader, reply_rewards, reward_dir, train_on_pairs)
from nanochat.precision import compile_model, training_precision
from nanochat.preflight import plan_run
from nanochat.training import StepBatches, StepLog, TrainingLoop, build_optimizers, finish_run, start_stage
from scripts.flags import ArgumentParser, add_preference_args, add_stage_args
from tasks.preferences import PreferencePairs

REPORT_SECTION = "Reward model"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(description="Train a reward model on preference pairs (Bradley–Terry).")
    add_stage_args(p, source="sft", init_lr_frac=0.02)
    p.add_argument("--center_coef", type=float, default=0.01, help="weight of (r_chosen + r_rejected)² in the loss")
    add_preference_args(p, eval_what="held-out accuracy")
    return p.parse_args(argv)


def rm_stats(model: torch.nn.Module, autocast: contextlib.AbstractContextManager, center_coef: float):
    """A micro-batch's Bradley–Terry loss and what to log of it: pairwise accuracy and margin (pair_step)."""
    def stats(inputs: torch.Tensor, targets: torch.Tensor, _reference: None) -> dict[str, torch.Tensor]:
        with autocast:
            out = bradley_terry_loss(reply_rewards(model, inputs, targets), center_coef)
        return {"loss": out.losses.mean(), "accuracy": out.accuracy, "margin": out.margin}
    return stats


def evaluate(model: torch.nn.Module, val_set: PreferencePairs, tokenizer: Any, B: int, max_len: int,
             autocast: contextlib.AbstractContextManager, center_coef: float) -> dict[str, float]:
    """Held-out pairwise accuracy, margin and loss over every rank's share of val_set."""
    def chunk_sums(chunk: list[int], inputs: torch.Tensor, targets: torch.Tensor) -> list[torch.Tensor]:
        with autocast:
            rewards = reply_rewards(model, inputs, targets)
        out = bradley_terry_loss(rewards, center_coef)
        n = len(chunk)
        return [out.losses.sum(), out.accuracy * n, out.margin * n, rewards.sum()], out.right

    device = next(model.parameters()).device
    names = ("loss", "accuracy", "margin", "scores")
    sums, pairs, by_kind = held_out_sums(val_set, tokenizer, B, max_len, device, names, chunk_sums)
    pairs = max(pairs, 1)
    return {"val_loss": sums["loss"] / pairs, "val_accuracy": sums["accuracy"] / pairs, "val_margin": sums["margin"] / pairs,
            "val_mean_score": sums["scores"] / (2 * pairs), **{f"val_accuracy/{k}": v for k, v in by_kind.items()}}


@script_main
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    stage = start_stage(args, "nanochat-rm")
    tokenizer, device, world_size = stage.tokenizer, stage.device, stage.world_size
    # rows are padded per batch: never compiled by default, so the run's length does not matter
    dtype, use_compile, autocast = training_precision(stage.device_type, args.dtype, args.compile, fixed_shapes=False,
                                                      train_tokens=None)
    model = as_reward_model(stage.model)  # the same trunk, one score instead of the next-token logits
    checkpoint_dir = reward_dir(stage.model_tag)
    max_len = args.max_seq_len or model.config.sequence_len
    B = args.device_batch_size
    schedule = pair_schedule(args, world_size)
    train_set, val_set, num_iterations = schedule.train_set, schedule.val_set, schedule.num_iterations
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

    train_stats = rm_stats(train_model, autocast, args.center_coef)
    metrics = train_on_pairs(
        loop, model, optimizers, batches, num_iterations,
        step_fn=lambda: pair_step(train_model, optimizers, batches, train_stats),
        evaluate=lambda: evaluate(model, val_set, tokenizer, B, max_len, autocast, args.center_coef),
        log=log, wandb_run=stage.wandb_run, args=args)

    results = {"steps": num_iterations, **metrics, "final_smooth_loss": log.smooth_loss,
               "training_time_min": log.state["total_time"] / 60,
               "skipped_pairs": sum(train_set.skipped.values()) + sum(val_set.skipped.values())}
    finish_run(results, device, REPORT_SECTION, args, stage.device_type, stage.wandb_run, log.state["evals"])
    return results


if __name__ == "__main__":
    main()
