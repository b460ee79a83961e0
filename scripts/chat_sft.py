"""
Supervised fine-tuning: each conversation on its own row, the loss only on what the
assistant writes, normalized per target token across micro-batches and ranks.

    python -m scripts.chat_sft
    python -m scripts.chat_sft --custom_json=my_chats.jsonl     # your own conversations too (see the README)
    torchrun --standalone --nproc_per_node=8 -m scripts.chat_sft -- --run=sft

Starts from mid_checkpoints/ (or --source), saves to chatsft_checkpoints/<model_tag>/.
"""

from __future__ import annotations

import argparse
import sys
import time

from nanochat.checkpoint_manager import checkpoint_dir_for
from nanochat.common import script_main
from nanochat.dataloader import sft_loader
from nanochat.loss_eval import evaluate_loss
from nanochat.precision import compile_model, training_precision
from nanochat.preflight import plan_run
from nanochat.schedules import apply_schedule
from nanochat.stages import STAGES
from nanochat.task_eval import evaluate_categorical
from nanochat.training import (StepBatches, StepLog, TrainingLoop, build_optimizers, finish_run, start_stage,
                               train_step_token_normalized)
from scripts.flags import ArgumentParser, add_stage_args, positive_int
from tasks.arc import ARC
from tasks.common import TaskMixture
from tasks.customjson import CustomJSON, get_identity_conversations
from tasks.gsm8k import GSM8K
from tasks.mmlu import MMLU
from tasks.smoltalk import SmolTalk
from tasks.spellingbee import SimpleSpelling, SpellingBee


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(description="Supervised fine-tuning on conversations.")
    add_stage_args(p, source="mid", init_lr_frac=0.02)
    p.add_argument("--device_batch_size", type=positive_int, default=4, help="conversations per forward pass")
    p.add_argument("--target_examples_per_step", type=positive_int, default=32, help="conversations per step, all ranks")
    p.add_argument("--num_epochs", type=int, default=1, help="passes over the mixture (when --num_iterations is -1)")
    p.add_argument("--num_iterations", type=int, default=-1, help="optimizer steps (-1: from --num_epochs)")
    p.add_argument("--max_seq_len", type=int, default=0, help="truncate conversations (0: the model's length)")
    p.add_argument("--smoltalk_size", type=int, default=10_000, help="SmolTalk conversations in the mixture")
    p.add_argument("--spelling_size", type=int, default=300, help="SimpleSpelling and SpellingBee examples each")
    p.add_argument("--max_conversations", type=int, default=0,
                   help="train on only the first N conversations of the shuffled mixture (0: all; for quick trials)")
    p.add_argument("--eval_every", type=int, default=100, help="validation loss every N steps (-1: only at the end)")
    p.add_argument("--eval_steps", type=int, default=100, help="validation batches per evaluation")
    p.add_argument("--eval_metrics_every", type=int, default=200,
                   help="MMLU and ARC-Easy accuracy every N steps (-1: only at the end)")
    p.add_argument("--eval_metrics_max_problems", type=int, default=1024, help="examples per task for those accuracies")
    p.add_argument("--save_every", type=int, default=-1, help="checkpoint every N steps (-1: only at the end)")
    p.add_argument("--custom_json", action="append", default=None, metavar="PATH",
                   help="a JSONL file of your own conversations (one a line: a list of messages, or an object with "
                        "'messages') added to the mixture; repeat the flag for more files, or the same file to see it "
                        "more often (default: none)")
    return p.parse_args(argv)


def build_datasets(smoltalk_size: int, spelling_size: int, max_conversations: int = 0,
                   custom_json: list[str] | None = None) -> tuple[TaskMixture, SmolTalk]:
    identity = get_identity_conversations()
    train = TaskMixture([
        *[CustomJSON(path) for path in custom_json or []],  # first, so a file's mistakes show before the rest loads
        ARC(subset="ARC-Easy", split="train"),
        ARC(subset="ARC-Challenge", split="train"),
        GSM8K(subset="main", split="train"),
        SmolTalk(split="train", stop=smoltalk_size),
        CustomJSON(identity),
        SimpleSpelling(size=spelling_size, split="train"),
        SpellingBee(size=spelling_size, split="train"),
    ], stop=max_conversations or None)
    return train, SmolTalk(split="test")


@script_main
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    stage = start_stage(args, "nanochat-sft")
    model, tokenizer, device, world_size = stage.model, stage.tokenizer, stage.device, stage.world_size
    checkpoint_dir = checkpoint_dir_for("sft", stage.model_tag)
    max_len = args.max_seq_len or model.config.sequence_len
    B = args.device_batch_size
    examples_per_micro_step = B * world_size
    if args.target_examples_per_step % examples_per_micro_step:
        sys.exit(f"error: --target_examples_per_step={args.target_examples_per_step} is not a multiple of "
                 f"device_batch_size × world_size = {examples_per_micro_step}")
    grad_accum_steps = args.target_examples_per_step // examples_per_micro_step

    train_set, val_set = build_datasets(args.smoltalk_size, args.spelling_size, args.max_conversations, args.custom_json)
    num_iterations = args.num_iterations
    if num_iterations <= 0:
        num_iterations = len(train_set) // args.target_examples_per_step * args.num_epochs
    # rows are padded per batch: never compiled by default, so the run's length does not matter
    dtype, use_compile, autocast = training_precision(stage.device_type, args.dtype, args.compile, fixed_shapes=False,
                                                      train_tokens=None)
    plan_run(model.config, B, max_len, world_size, dtype, use_compile, device, args, {
        "model": f"{stage.model_tag} from {args.source}: {model.num_params():,} parameters",
        "data": f"{len(train_set):,} conversations, each on its own row of at most {max_len} tokens",
        "steps": f"{num_iterations:,} of {args.target_examples_per_step} conversations",
        "batch": f"{grad_accum_steps} micro-batches of {B} on each of {world_size} ranks",
    })
    train_model = compile_model(model, use_compile, fixed_shapes=False)
    optimizers = build_optimizers(model, args)

    run_meta = {"model_config": vars(model.config), "num_iterations": num_iterations}
    log = StepLog(0, world_size=world_size)  # tok/s from each step's count of target tokens
    loop = TrainingLoop.begin(args, checkpoint_dir, model, optimizers, device, run_meta, log)
    data_state = loop.start.data_state

    batches = StepBatches(sft_loader(train_set, tokenizer, B, max_len, device, loop=True, resume_state=data_state),
                          grad_accum_steps)
    metric_tasks = {"MMLU": MMLU(subset="all", split="test"), "ARC-Easy": ARC(subset="ARC-Easy", split="test")}

    step, val_loss, metrics = loop.start.step, None, {}
    while True:
        # the loader loops over the data, but the last step is still decided the same way on every rank
        last = step == num_iterations or not batches.have_next_step()
        if loop.eval_due(step, args.eval_every, last):
            model.eval()
            val_batches = sft_loader(val_set, tokenizer, B, max_len, device, loop=True)
            val_loss = evaluate_loss(model, val_batches, args.eval_steps, autocast)
            model.train()
            stage.wandb_run.log(log.eval(step, "val_loss", val_loss))
        if loop.eval_due(step, args.eval_metrics_every, last):
            model.eval()
            with autocast:
                for name, task in metric_tasks.items():
                    metrics[name] = evaluate_categorical(task, model, tokenizer, batch_size=B * 2,
                                                         max_problems=args.eval_metrics_max_problems)
                    stage.wandb_run.log(log.eval(step, f"{name}_acc", metrics[name]))
            model.train()
        if loop.save_due(step, last):
            loop.save(step, model, optimizers, data_state, val_loss=val_loss)
        if last:
            break

        lrm = 1.0 - step / num_iterations  # linear to zero
        apply_schedule(optimizers, lrm)
        t0 = time.perf_counter()
        loss, num_tokens, (data_state,) = train_step_token_normalized(train_model, optimizers, batches, autocast)
        loss_value = loss.item()
        dt = time.perf_counter() - t0
        # tok/s counts target tokens; a NaN loss ends the run here
        stage.wandb_run.log(log.step(step, num_iterations, loss_value, dt, lrm, tokens=num_tokens))
        step += 1

    results = {"steps": num_iterations, "final_val_loss": val_loss, **{f"{k}_acc": v for k, v in metrics.items()},
               "final_smooth_loss": log.smooth_loss, "training_time_min": log.state["total_time"] / 60}
    finish_run(results, device, STAGES["sft"].section, args, stage.device_type, stage.wandb_run, log.state["evals"])
    return results


if __name__ == "__main__":
    main()
