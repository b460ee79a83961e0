"""
Mid-training: teach the base model the chat format, special tokens, tool calls and multiple
choice, by training on whole rendered conversations packed into full rows.

    python -m scripts.mid_train
    torchrun --standalone --nproc_per_node=8 -m scripts.mid_train -- --device_batch_size=16 --run=mid

Starts from base_checkpoints/, saves to mid_checkpoints/<model_tag>/.
"""

from __future__ import annotations

import argparse
import time

import torch

from nanochat.checkpoint_manager import checkpoint_dir_for
from nanochat.common import script_main
from nanochat.dataloader import packed_conversation_loader
from nanochat.loss_eval import evaluate_bpb
from nanochat.precision import compile_model, peak_flops, training_precision
from nanochat.preflight import plan_run
from nanochat.schedules import apply_schedule, lr_multiplier, muon_momentum
from nanochat.stages import STAGES
from nanochat.tokenizer import get_token_bytes
from nanochat.training import (StepBatches, StepLog, TrainingLoop, all_reduce_mean, build_optimizers, finish_run,
                               grad_accum_steps_for, start_stage, train_step)
from scripts.flags import ArgumentParser, add_stage_args, positive_int
from tasks.common import TaskMixture
from tasks.customjson import CustomJSON, get_identity_conversations
from tasks.gsm8k import GSM8K
from tasks.mmlu import MMLU
from tasks.smoltalk import SmolTalk
from tasks.spellingbee import SimpleSpelling, SpellingBee


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(description="Mid-train a base model on conversations.")
    add_stage_args(p, source="base", init_lr_frac=1.0)
    p.add_argument("--max_seq_len", type=int, default=0, help="row length (0: the model's sequence length)")
    p.add_argument("--device_batch_size", type=positive_int, default=32, help="rows per forward pass on each device")
    p.add_argument("--total_batch_size", type=positive_int, default=524288, help="tokens per optimizer step, all ranks")
    p.add_argument("--num_iterations", type=int, default=-1, help="optimizer steps (-1: one pass over the mixture)")
    p.add_argument("--spelling_size", type=int, default=200_000, help="SimpleSpelling examples (SpellingBee gets 40%%)")
    p.add_argument("--max_conversations", type=int, default=0,
                   help="train on only the first N conversations of the shuffled mixture (0: all; for quick trials)")
    p.add_argument("--eval_every", type=int, default=150, help="val bpb every N steps (-1: only at the end)")
    p.add_argument("--eval_tokens", type=int, default=20 * 524288, help="validation tokens per evaluation")
    p.add_argument("--save_every", type=int, default=-1, help="checkpoint every N steps (-1: only at the end)")
    return p.parse_args(argv)


def build_mixtures(spelling_size: int, max_conversations: int = 0) -> tuple[TaskMixture, TaskMixture]:
    identity = get_identity_conversations()
    train = TaskMixture([
        SmolTalk(split="train"),
        MMLU(subset="auxiliary_train", split="train"),
        GSM8K(subset="main", split="train"),
        CustomJSON(identity),
        CustomJSON(identity),  # twice: the model should know who it is
        SimpleSpelling(size=spelling_size, split="train"),
        SpellingBee(size=int(0.4 * spelling_size), split="train"),
    ], stop=max_conversations or None)
    val = TaskMixture([SmolTalk(split="test"), MMLU(subset="all", split="test", stop=5200),
                       GSM8K(subset="main", split="test", stop=420)])
    return train, val


def lr_for_progress(step: int, num_iterations: int, progress: float) -> float:
    """Constant, then linear to zero over the last 20%: of the steps if counted, else of the data."""
    if num_iterations > 0:
        return lr_multiplier(step, num_iterations, warmdown_ratio=0.2)
    return 1.0 if progress < 0.8 else max(0.0, 1 - (progress - 0.8) / 0.2)


@script_main
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    stage = start_stage(args, "nanochat-mid")
    model, tokenizer, device, world_size = stage.model, stage.tokenizer, stage.device, stage.world_size
    checkpoint_dir = checkpoint_dir_for("mid", stage.model_tag)
    T = args.max_seq_len or model.config.sequence_len
    B = args.device_batch_size
    grad_accum_steps = grad_accum_steps_for(args.total_batch_size, B, T, world_size)
    train_set, val_set = build_mixtures(args.spelling_size, args.max_conversations)
    # packed rows: always B×T; -1 iterations is a pass over the mixture
    dtype, use_compile, autocast = training_precision(
        stage.device_type, args.dtype, args.compile, fixed_shapes=True,
        train_tokens=args.num_iterations * args.total_batch_size if args.num_iterations > 0 else None)
    plan_run(model.config, B, T, world_size, dtype, use_compile, device, args, {
        "model": f"{stage.model_tag} from {args.source} step {stage.source_meta['step']}: {model.num_params():,} parameters",
        "data": f"{len(train_set):,} conversations packed into rows of {T} tokens",
        "steps": f"{args.num_iterations:,} of {args.total_batch_size:,} tokens" if args.num_iterations > 0
                 else f"one pass over the data, {args.total_batch_size:,} tokens a step",
        "batch": f"{grad_accum_steps} micro-batches of {B}×{T} on each of {world_size} ranks",
    })
    train_model = compile_model(model, use_compile, fixed_shapes=True)
    optimizers = build_optimizers(model, args)

    run_meta = {"model_config": vars(model.config), "num_iterations": args.num_iterations, "source_step": stage.source_meta["step"]}
    log = StepLog(args.total_batch_size, model.estimate_flops(), peak_flops(device), world_size)
    # the source's step is recorded, not compared: a resumed run's weights come from its own checkpoint
    loop = TrainingLoop.begin(args, checkpoint_dir, model, optimizers, device, run_meta, log,
                              expect={k: v for k, v in run_meta.items() if k != "source_step"})
    data_state = loop.start.data_state

    batches = StepBatches(packed_conversation_loader(train_set, tokenizer, B, T, device, loop=args.num_iterations > 0,
                                                     resume_state=data_state), grad_accum_steps)
    token_bytes = get_token_bytes(device)
    eval_steps = max(1, args.eval_tokens // (B * T * world_size))

    step, val_bpb = loop.start.step, None
    progress = 0.0 if data_state is None else data_state["progress"]
    # as after every step: the mean over ranks, so a resumed run sets the rate the uninterrupted one did
    progress = all_reduce_mean(torch.tensor(progress, dtype=torch.float64, device=device)).item()
    while True:
        # each rank packs its own conversations, so ranks run dry at different steps: the run ends
        # when any rank cannot fill another step, decided together so no rank is left in a collective
        last = step == args.num_iterations or not batches.have_next_step()
        # at the end always, even where a resumed run starts: the results report this val bpb
        if last or loop.eval_due(step, args.eval_every):
            model.eval()
            val_batches = packed_conversation_loader(val_set, tokenizer, B, T, device, loop=True)
            val_bpb = evaluate_bpb(train_model, val_batches, eval_steps, token_bytes, autocast)  # same shapes: compiled
            model.train()
            stage.wandb_run.log(log.eval(step, "val_bpb", val_bpb))
        if loop.save_due(step, last):
            loop.save(step, model, optimizers, data_state, val_bpb=val_bpb)
        if last:
            break

        lrm = lr_for_progress(step, args.num_iterations, progress)
        apply_schedule(optimizers, lrm, muon_momentum(step))
        t0 = time.perf_counter()
        loss, (data_state,) = train_step(train_model, optimizers, batches, autocast)
        loss_value = all_reduce_mean(loss).item()
        dt = time.perf_counter() - t0
        # the mean over ranks: every rank must set the same learning rate on its optimizer shard
        progress = all_reduce_mean(torch.tensor(data_state["progress"], dtype=torch.float64, device=device)).item()
        stage.wandb_run.log(log.step(step, args.num_iterations if args.num_iterations > 0 else None, loss_value, dt, lrm,
                               progress=progress))  # a NaN loss ends the run here
        step += 1

    val_history = [v for _, v in log.history("val_bpb")]
    results = {"steps": step, "initial_val_bpb": val_history[0], "final_val_bpb": val_bpb,
               "final_smooth_loss": log.smooth_loss, "training_time_min": log.state["total_time"] / 60}
    finish_run(results, device, STAGES["mid"].section, args, stage.device_type, stage.wandb_run, log.state["evals"])
    return results


if __name__ == "__main__":
    main()
