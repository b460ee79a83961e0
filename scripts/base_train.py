"""
Pretrain the base model on the pretraining shards.

    python -m scripts.base_train --depth=20
    torchrun --standalone --nproc_per_node=8 -m scripts.base_train -- --depth=20 --run=d20
    python -m scripts.base_train --depth=20 --resume          # continue the latest checkpoint

Saves to $NANOCHAT_BASE_DIR/base_checkpoints/<model_tag>/.
"""

from __future__ import annotations

import argparse
import time

import torch

from nanochat.checkpoint_manager import checkpoint_dir_for
from nanochat.common import autodetect_device_type, compute_init, init_wandb, print0, script_main
from nanochat.core_eval import evaluate_core, get_eval_bundle_dir, load_tasks
from nanochat.dataloader import tokenizing_distributed_data_loader, tokenizing_distributed_data_loader_with_state
from nanochat.gpt import GPT, config_for_depth
from nanochat.loss_eval import evaluate_bpb, sample_completions
from nanochat.precision import compile_model, peak_flops, training_precision
from nanochat.preflight import plan_run
from nanochat.schedules import apply_schedule, lr_multiplier, muon_momentum
from nanochat.stages import STAGES
from nanochat.tokenizer import get_token_bytes, get_tokenizer
from nanochat.training import StepBatches, StepLog, TrainingLoop, all_reduce_mean, finish_run, grad_accum_steps_for, train_step
from scripts.flags import ArgumentParser, add_run_args, positive_int


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(description="Pretrain the base model.")
    add_run_args(p)
    # model
    p.add_argument("--depth", type=positive_int, default=20, help="layers; width is 64·depth")
    p.add_argument("--n_kv_head", type=int, default=0, help="key/value heads for GQA (0: as many as query heads)")
    p.add_argument("--smear", action="store_true",
                   help="mix each token's embedding with the previous one's (GPT.smear; not loadable by nanochat)")
    p.add_argument("--max_seq_len", type=positive_int, default=2048, help="tokens per training row (the context length)")
    # how long to train: the first of these that is set wins
    p.add_argument("--num_iterations", type=int, default=-1, help="optimizer steps (-1: from the next two flags)")
    p.add_argument("--target_flops", type=float, default=-1.0, help="train for this many FLOPs (-1: not used)")
    p.add_argument("--target_param_data_ratio", type=float, default=20.0, help="tokens per parameter (Chinchilla: 20)")
    # optimization
    p.add_argument("--device_batch_size", type=positive_int, default=32, help="rows per forward pass on each device")
    p.add_argument("--total_batch_size", type=positive_int, default=524288, help="tokens per optimizer step, all ranks")
    p.add_argument("--embedding_lr", type=float, default=0.2, help="AdamW learning rate of the token embedding")
    p.add_argument("--unembedding_lr", type=float, default=0.004, help="AdamW learning rate of the output head")
    p.add_argument("--matrix_lr", type=float, default=0.02, help="Muon learning rate of the blocks' matrices")
    p.add_argument("--weight_decay", type=float, default=0.0, help="AdamW weight decay")
    p.add_argument("--warmup_ratio", type=float, default=0.0, help="fraction of the steps spent warming the LR up")
    p.add_argument("--warmdown_ratio", type=float, default=0.2, help="fraction of the steps at the end spent decaying the LR")
    p.add_argument("--final_lr_frac", type=float, default=0.0, help="the LR at the last step, as a fraction of the peak")
    # evaluation, sampling, saving
    p.add_argument("--eval_every", type=int, default=250, help="val bpb every N steps (-1: only at the end)")
    p.add_argument("--eval_tokens", type=int, default=20 * 524288, help="validation tokens per evaluation")
    p.add_argument("--core_metric_every", type=int, default=2000, help="CORE every N steps and at the end (-1: never)")
    p.add_argument("--core_metric_max_per_task", type=int, default=500, help="examples per CORE task")
    p.add_argument("--sample_every", type=int, default=2000, help="samples every N steps (-1: only at the end)")
    p.add_argument("--save_every", type=int, default=-1, help="checkpoint every N steps (-1: only at the end)")
    p.add_argument("--model_tag", default="", help="checkpoint folder name (default: d<depth>)")
    p.add_argument("--peak_flops", type=float, default=0.0,
                   help="the device's peak FLOP/s for MFU (default: 0, the GPU table)")
    return p.parse_args(argv)


def plan_iterations(args: argparse.Namespace, num_params: int, flops_per_token: float) -> int:
    if args.num_iterations > 0:
        return args.num_iterations
    if args.target_flops > 0:
        return max(1, round(args.target_flops / (flops_per_token * args.total_batch_size)))
    if args.target_param_data_ratio > 0:
        return max(1, round(args.target_param_data_ratio * num_params / args.total_batch_size))
    raise ValueError("set one of --num_iterations, --target_flops, --target_param_data_ratio")


@script_main
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device_type = args.device_type or autodetect_device_type()
    ddp, rank, _, world_size, device = compute_init(device_type)
    master = rank == 0
    wandb_run = init_wandb(args.run, "nanochat", vars(args), master)

    tokenizer = get_tokenizer()
    token_bytes = get_token_bytes(device)
    config = config_for_depth(args.depth, tokenizer.get_vocab_size(), args.max_seq_len, args.n_kv_head or None,
                              smear=args.smear)
    model_tag = args.model_tag or f"d{args.depth}"
    checkpoint_dir = checkpoint_dir_for("base", model_tag)

    # ---- the plan (before anything big is allocated), then the model and its optimizers ----
    with torch.device("meta"):  # shapes only: no memory, no init
        model = GPT(config)
    num_params = model.num_params()
    flops_per_token = model.estimate_flops()
    num_iterations = plan_iterations(args, num_params, flops_per_token)
    B, T = args.device_batch_size, args.max_seq_len
    grad_accum_steps = grad_accum_steps_for(args.total_batch_size, B, T, world_size)
    tokens_per_step = args.total_batch_size
    # the run's first line: what it computes in, and why
    dtype, use_compile, autocast = training_precision(device_type, args.dtype, args.compile, fixed_shapes=True,
                                                      train_tokens=num_iterations * tokens_per_step)
    plan_run(config, B, T, world_size, dtype, use_compile, device, args, {
        "model": f"{model_tag}: {num_params:,} parameters, {flops_per_token:.3e} FLOPs/token, vocab {config.vocab_size:,}",
        "steps": f"{num_iterations:,} of {tokens_per_step:,} tokens; {num_iterations * tokens_per_step / num_params:.1f} tokens/param",
        "batch": f"{grad_accum_steps} micro-batches of {B}×{T} on each of {world_size} ranks",
    })
    model.to_empty(device=device)
    model.init_weights()
    train_model = compile_model(model, use_compile, fixed_shapes=True)
    optimizers = model.setup_optimizers(args.unembedding_lr, args.embedding_lr, args.matrix_lr, args.weight_decay)

    run_meta = {"model_config": vars(config), "num_iterations": num_iterations}
    log = StepLog(tokens_per_step, flops_per_token, peak_flops(device, args.peak_flops), world_size)
    loop = TrainingLoop.begin(args, checkpoint_dir, model, optimizers, device, run_meta, log)
    loader_state = loop.start.data_state  # where the saved run's data stopped (None: from the start)

    train_batches = StepBatches(tokenizing_distributed_data_loader_with_state(
        B, T, "train", tokenizer=tokenizer, device=device, resume_state=loader_state), grad_accum_steps)
    eval_steps = max(1, args.eval_tokens // (B * T * world_size))
    core_tasks = load_tasks(get_eval_bundle_dir()) if args.core_metric_every > 0 else None

    # ---- the loop: step counts finished optimizer steps; the last pass only evaluates and saves ----
    step, val_bpb, samples, core = loop.start.step, None, [], None
    while True:
        # the data loops over the shards, but if it ever ends it ends on every rank at the same step
        last = step == num_iterations or not train_batches.have_next_step()
        # at the end always, even where a resumed run starts: the results report this val bpb
        if last or loop.eval_due(step, args.eval_every):
            model.eval()
            val_batches = tokenizing_distributed_data_loader(B, T, "val", tokenizer=tokenizer, device=device)
            # the compiled model: evaluation batches have the training shape, so no recompilation
            val_bpb = evaluate_bpb(train_model, val_batches, eval_steps, token_bytes, autocast)
            model.train()
            wandb_run.log(log.eval(step, "val_bpb", val_bpb))
        if core_tasks and loop.eval_due(step, args.core_metric_every, last):
            with autocast:  # the uncompiled model: every example has its own length
                core = evaluate_core(model, tokenizer, device, tasks=core_tasks, max_per_task=args.core_metric_max_per_task)
            wandb_run.log(log.eval(step, "core_metric", core["core"]))
        if master and (last or (step > 0 and loop.due(step, args.sample_every))):
            samples = sample_completions(model, tokenizer)
            print0("\n".join(f"  sample: {s!r}" for s in samples))
        if loop.save_due(step, last):
            loop.save(step, model, optimizers, loader_state, val_bpb=val_bpb)
        if last:
            break

        lrm = lr_multiplier(step, num_iterations, args.warmup_ratio, args.warmdown_ratio, args.final_lr_frac)
        apply_schedule(optimizers, lrm, muon_momentum(step))
        t0 = time.perf_counter()
        loss, (loader_state,) = train_step(train_model, optimizers, train_batches, autocast)
        loss_value = all_reduce_mean(loss).item()  # .item() also waits for the device
        dt = time.perf_counter() - t0
        wandb_run.log(log.step(step, num_iterations, loss_value, dt, lrm))  # a NaN loss ends the run here
        step += 1

    val_history = [v for _, v in log.history("val_bpb")]
    results = {
        "num_params": num_params,
        "flops_per_token": flops_per_token,
        "num_iterations": num_iterations,
        "tokens_trained": num_iterations * tokens_per_step,
        "initial_val_bpb": val_history[0],
        "final_val_bpb": val_bpb,
        "min_val_bpb": min(val_history),
        "final_smooth_loss": log.smooth_loss,
        "core_metric": core["core"] if core else "n/a",
        "mfu_percent_last_step": log.mfu if log.mfu is not None else "n/a",
        "training_time_min": log.state["total_time"] / 60,
    }
    finish_run(results, device, STAGES["base"].section, args, device_type, wandb_run, log.state["evals"],
               notes=("Samples:\n\n" + "\n".join(f"- {s!r}" for s in samples),))
    return results


if __name__ == "__main__":
    main()
