"""
Direct preference optimization: raise the chosen reply's log-probability over the rejected
one's, measured against a frozen reference (the starting model), with the loss only on each
pair's final assistant reply. The reference's log-probabilities are computed once per pair,
before training; the reference itself stays loaded only to measure the KL at evaluations.

    python -m scripts.chat_dpo
    python -m scripts.chat_dpo --loss=ipo --beta=0.5
    python -m scripts.chat_dpo --dataset=hh-rlhf --data_files=hh_train.jsonl --val_data_files=hh_test.jsonl
    torchrun --standalone --nproc_per_node=8 -m scripts.chat_dpo -- --run=dpo

Logs preference accuracy (chosen reward above rejected), the reward margin, the chosen and
rejected log-probabilities (both falling together is likelihood displacement) and, at each
evaluation, the KL to the reference per reply token on held-out pairs.
Starts from chatsft_checkpoints/ (or --source), saves to chatdpo_checkpoints/<model_tag>/.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from typing import Any

import torch

from nanochat.checkpoint_manager import checkpoint_dir_for
from nanochat.common import print0, script_main
from nanochat.preference import (LOSSES, held_out_sums, my_pairs, pair_schedule, pair_step, preference_loader,
                                 preference_loss, reference_logprobs, sequence_logprobs, token_kl, train_on_pairs)
from nanochat.precision import compile_model, training_precision
from nanochat.preflight import plan_run
from nanochat.stages import STAGES
from nanochat.training import StepBatches, StepLog, TrainingLoop, build_optimizers, finish_run, start_stage
from scripts.flags import ArgumentParser, add_preference_args, add_stage_args
from tasks.preferences import PreferencePairs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(description="Direct preference optimization on preference pairs.")
    add_stage_args(p, source="sft", init_lr_frac=0.02)
    p.add_argument("--loss", default="sigmoid", choices=LOSSES, help="sigmoid: DPO; ipo: IPO; simpo: SimPO (no reference)")
    p.add_argument("--beta", type=float, default=0.1, help="strength of the reference (sigmoid, ipo) or reward scale (simpo)")
    p.add_argument("--gamma", type=float, default=0.5, help="simpo's target reward margin")
    p.add_argument("--sft_coef", type=float, default=0.0,
                   help="add this × the chosen reply's mean token NLL to the loss (RPO; against both replies' "
                        "log-probabilities falling together)")
    add_preference_args(p, eval_what="held-out preference metrics")
    return p.parse_args(argv)


def dpo_stats(model: torch.nn.Module, autocast: contextlib.AbstractContextManager, args: argparse.Namespace):
    """A micro-batch's DPO loss and what to log of it: accuracy, margin, chosen and rejected log-probs (pair_step)."""
    def stats(inputs: torch.Tensor, targets: torch.Tensor, reference: torch.Tensor) -> dict[str, torch.Tensor]:
        with autocast:
            policy, lengths = sequence_logprobs(model, inputs, targets)
        out = preference_loss(args.loss, args.beta, policy, reference, lengths, args.gamma)
        B = len(out.losses)
        loss = out.losses.mean()
        if args.sft_coef:  # RPO: the chosen reply's per-token NLL too, so DPO cannot make it less likely
            loss = loss + args.sft_coef * (-policy[:B] / lengths[:B].clamp(min=1)).mean()
        return {"loss": loss, "accuracy": out.accuracy, "margin": out.margin,
                "chosen_logp": policy[:B].mean(), "rejected_logp": policy[B:].mean()}
    return stats


def evaluate(model: torch.nn.Module, reference_model: torch.nn.Module, val_set: PreferencePairs,
             reference: dict[int, tuple[float, float]], tokenizer: Any, B: int, max_len: int,
             autocast: contextlib.AbstractContextManager, args: argparse.Namespace) -> dict[str, float]:
    """Held-out preference metrics over every rank's share of val_set, and the KL to the reference per reply token."""
    device = next(model.parameters()).device

    def chunk_sums(chunk: list[int], inputs: torch.Tensor, targets: torch.Tensor) -> list[torch.Tensor]:
        with autocast:
            # the log-probs as the reference's were computed (same function, same chunks), the logits for the KL
            policy, _ = sequence_logprobs(model, inputs, targets)
            logits, ref_logits = model(inputs), reference_model(inputs)
        ref = torch.tensor([reference[i][0] for i in chunk] + [reference[i][1] for i in chunk], device=device)
        out = preference_loss(args.loss, args.beta, policy, ref, (targets >= 0).sum(1), args.gamma)
        n = len(chunk)
        return [out.losses.sum(), out.accuracy * n, out.margin * n, policy[:n].sum(), policy[n:].sum(),
                token_kl(logits, ref_logits, targets), (targets >= 0).sum().float()], out.right

    names = ("loss", "accuracy", "margin", "chosen_logp", "rejected_logp", "kl", "tokens")
    sums, pairs, by_kind = held_out_sums(val_set, tokenizer, B, max_len, device, names, chunk_sums)
    tokens = max(sums.pop("tokens"), 1)
    return {**{f"val_{k}": v / (tokens if k == "kl" else max(pairs, 1)) for k, v in sums.items()},
            **{f"val_accuracy/{k}": v for k, v in by_kind.items()}}


@script_main
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    stage = start_stage(args, "nanochat-dpo")
    model, tokenizer, device, world_size = stage.model, stage.tokenizer, stage.device, stage.world_size
    # rows are padded per batch: never compiled by default, so the run's length does not matter
    dtype, use_compile, autocast = training_precision(stage.device_type, args.dtype, args.compile, fixed_shapes=False,
                                                      train_tokens=None)
    # the frozen reference is the source checkpoint itself, also when a resumed policy has moved on
    reference_model = stage.frozen_source(args)
    checkpoint_dir = checkpoint_dir_for("dpo", stage.model_tag)
    max_len = args.max_seq_len or model.config.sequence_len
    B = args.device_batch_size
    schedule = pair_schedule(args, world_size)
    train_set, val_set, num_iterations = schedule.train_set, schedule.val_set, schedule.num_iterations
    plan_run(model.config, 2 * B, max_len, world_size, dtype, use_compile, device, args, {
        "model": f"{stage.model_tag} from {args.source}: {model.num_params():,} parameters, and its frozen copy as the reference",
        **schedule.plan(args, world_size),
        "loss": f"{args.loss}, beta {args.beta}" + (f", gamma {args.gamma}" if args.loss == "simpo" else ""),
    })
    t0 = time.perf_counter()
    train_reference = reference_logprobs(reference_model, train_set, my_pairs(train_set), tokenizer, B, max_len, device, autocast)
    val_reference = reference_logprobs(reference_model, val_set, my_pairs(val_set), tokenizer, B, max_len, device, autocast)
    print0(f"reference log-probabilities of {len(train_reference) + len(val_reference):,} pairs on rank 0 "
           f"in {time.perf_counter() - t0:.1f}s")
    train_model = compile_model(model, use_compile, fixed_shapes=False)
    optimizers = build_optimizers(model, args)

    run_meta = {"model_config": vars(model.config), "num_iterations": num_iterations}
    log = StepLog(0, world_size=world_size)
    loop = TrainingLoop.begin(args, checkpoint_dir, model, optimizers, device, run_meta, log)
    data_state = loop.start.data_state
    batches = StepBatches(preference_loader(train_set, tokenizer, B, max_len, train_reference, device, loop=True,
                                            resume_state=data_state), schedule.grad_accum_steps)

    train_stats = dpo_stats(train_model, autocast, args)
    metrics = train_on_pairs(
        loop, model, optimizers, batches, num_iterations,
        step_fn=lambda: pair_step(train_model, optimizers, batches, train_stats),
        evaluate=lambda: evaluate(model, reference_model, val_set, val_reference, tokenizer, B, max_len, autocast, args),
        log=log, wandb_run=stage.wandb_run, args=args)

    results = {"steps": num_iterations, **metrics, "final_smooth_loss": log.smooth_loss,
               "training_time_min": log.state["total_time"] / 60,
               "skipped_pairs": sum(train_set.skipped.values()) + sum(val_set.skipped.values())}
    finish_run(results, device, STAGES["dpo"].section, args, stage.device_type, stage.wandb_run, log.state["evals"])
    return results


if __name__ == "__main__":
    main()
