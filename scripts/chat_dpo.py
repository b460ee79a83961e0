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
import torch.distributed as dist

from nanochat.checkpoint_manager import checkpoint_dir_for
from nanochat.common import get_dist_info, print0, script_main
from nanochat.preference import (LOSSES, my_pairs, pair_batch, pair_schedule, preference_loader, preference_loss,
                                 reference_logprobs, sequence_logprobs, token_kl)
from nanochat.precision import autocast_context, compile_model, resolve_dtype, wants_compile
from nanochat.preflight import plan_run
from nanochat.schedules import apply_schedule
from nanochat.stages import STAGES
from nanochat.training import (StepBatches, StepLog, TrainingLoop, all_reduce_mean, build_optimizers, finish_run,
                               start_stage)
from scripts.flags import ArgumentParser, add_preference_args, add_stage_args
from tasks.preferences import PreferencePairs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(description="Direct preference optimization on preference pairs.")
    add_stage_args(p, source="sft", init_lr_frac=0.02)
    p.add_argument("--loss", default="sigmoid", choices=LOSSES, help="sigmoid: DPO; ipo: IPO; simpo: SimPO (no reference)")
    p.add_argument("--beta", type=float, default=0.1, help="strength of the reference (sigmoid, ipo) or reward scale (simpo)")
    p.add_argument("--gamma", type=float, default=0.5, help="simpo's target reward margin")
    add_preference_args(p, eval_what="held-out preference metrics")
    return p.parse_args(argv)


def dpo_step(model: torch.nn.Module, optimizers: list[torch.optim.Optimizer], batches: StepBatches,
             autocast: contextlib.AbstractContextManager, args: argparse.Namespace) -> tuple[dict[str, float], Any]:
    """
    One optimizer step over the next micro-batches of pairs: the loss is the mean over every
    pair of the step (each micro-batch holds the same number of pairs, and the optimizers
    average the ranks). Returns the step's metrics, the same on every rank, and the data state.
    """
    micro_batches = batches.take()
    # loss, accuracy, margin, chosen and rejected log-probs, reply tokens: summed over micro-batches for logging
    stats = torch.zeros(6, device=next(model.parameters()).device)
    for inputs, targets, reference, data_state in micro_batches:
        with autocast:
            policy, lengths = sequence_logprobs(model, inputs, targets)
        out = preference_loss(args.loss, args.beta, policy, reference, lengths, args.gamma)
        loss = out.losses.mean()
        (loss / len(micro_batches)).backward()
        batches.fetch_one()  # overlap the next step's data loading with this backward
        B = len(out.losses)
        stats += torch.stack([loss, out.accuracy, out.margin, policy[:B].mean(), policy[B:].mean(),
                              lengths.sum() * len(micro_batches)]).detach()
    for opt in optimizers:
        opt.step()
    model.zero_grad(set_to_none=True)
    stats = all_reduce_mean(stats / len(micro_batches))
    names = ("loss", "accuracy", "margin", "chosen_logp", "rejected_logp", "tokens")
    metrics = dict(zip(names, stats.tolist()))
    metrics["tokens"] *= get_dist_info()[3]  # the mean over ranks back to the step's total
    return metrics, data_state


@torch.no_grad()
def evaluate(model: torch.nn.Module, reference_model: torch.nn.Module, val_set: PreferencePairs,
             reference: dict[int, tuple[float, float]], tokenizer: Any, B: int, max_len: int,
             autocast: contextlib.AbstractContextManager, args: argparse.Namespace) -> dict[str, float]:
    """Held-out preference metrics over every rank's share of val_set, and the KL to the reference per reply token."""
    device = next(model.parameters()).device
    # sums of: loss, correct pairs, margin, chosen and rejected log-probs, KL; pairs; reply tokens
    totals = torch.zeros(8, device=device)
    mine = my_pairs(val_set)
    for k in range(0, len(mine), B):
        chunk = mine[k : k + B]
        inputs, targets = pair_batch([val_set[i] for i in chunk], tokenizer, max_len, device)
        with autocast:
            # the log-probs as the reference's were computed (same function, same chunks), the logits for the KL
            policy, _ = sequence_logprobs(model, inputs, targets)
            logits, ref_logits = model(inputs), reference_model(inputs)
        ref = torch.tensor([reference[i][0] for i in chunk] + [reference[i][1] for i in chunk], device=device)
        out = preference_loss(args.loss, args.beta, policy, ref, (targets >= 0).sum(1), args.gamma)
        n = len(chunk)
        totals += torch.stack([out.losses.sum(), out.accuracy * n, out.margin * n, policy[:n].sum(), policy[n:].sum(),
                               token_kl(logits, ref_logits, targets), torch.tensor(float(n), device=device),
                               (targets >= 0).sum().float()])
    if get_dist_info()[0]:
        dist.all_reduce(totals)
    loss, correct, margin, chosen, rejected, kl, pairs, tokens = totals.tolist()
    pairs = max(pairs, 1)
    return {"val_loss": loss / pairs, "val_accuracy": correct / pairs, "val_margin": margin / pairs,
            "val_chosen_logp": chosen / pairs, "val_rejected_logp": rejected / pairs, "val_kl": kl / max(tokens, 1)}


@script_main
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    stage = start_stage(args, "nanochat-dpo")
    model, tokenizer, device, world_size = stage.model, stage.tokenizer, stage.device, stage.world_size
    dtype = resolve_dtype(stage.device_type, args.dtype)
    autocast = autocast_context(stage.device_type, dtype)
    # the frozen reference is the source checkpoint itself, also when a resumed policy has moved on
    reference_model = stage.frozen_source(args)
    checkpoint_dir = checkpoint_dir_for("dpo", stage.model_tag)
    max_len = args.max_seq_len or model.config.sequence_len
    B = args.device_batch_size
    schedule = pair_schedule(args, world_size)
    train_set, val_set, num_iterations = schedule.train_set, schedule.val_set, schedule.num_iterations
    use_compile = wants_compile(args.compile, stage.device_type, fixed_shapes=False)  # rows are padded per batch
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

    step, metrics = loop.start.step, {}
    while True:
        last = step == num_iterations or not batches.have_next_step()
        if loop.eval_due(step, args.eval_every, last):
            model.eval()
            metrics = evaluate(model, reference_model, val_set, val_reference, tokenizer, B, max_len, autocast, args)
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
        stats, data_state = dpo_step(train_model, optimizers, batches, autocast, args)
        dt = time.perf_counter() - t0
        loss, tokens = stats.pop("loss"), stats.pop("tokens")  # tok/s counts reply tokens, as SFT's counts targets
        stage.wandb_run.log(log.step(step, num_iterations, loss, dt, lrm, tokens=int(tokens), **stats))
        step += 1

    results = {"steps": num_iterations, **metrics, "final_smooth_loss": log.smooth_loss,
               "training_time_min": log.state["total_time"] / 60,
               "skipped_pairs": sum(train_set.skipped.values()) + sum(val_set.skipped.values())}
    finish_run(results, device, STAGES["dpo"].section, args, stage.device_type, stage.wandb_run, log.state["evals"])
    return results


if __name__ == "__main__":
    main()
