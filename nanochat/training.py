"""
The training pieces the stage scripts share (base_train, mid_train, chat_sft, chat_rl, and
the stages to come):

- StepBatches, train_step, train_step_token_normalized: one optimizer step over
  grad_accum_steps micro-batches read one step ahead, the loss a mean over micro-batches
  (pretraining, mid-training) or over every target token of the step (SFT, RL);
- StepLog: one log line per step, and the loop state a resumed run carries on;
- TrainingLoop: where a stage's loop starts (fresh or resumed), when an evaluation or a save
  is due, what a resumed run skips, and the save itself;
- start_stage, build_optimizers: what every stage after pretraining sets up alike (the ranks,
  the wandb run, the checkpoint it starts from, its optimizers at --init_lr_frac).

Each script keeps its flags, data, learning-rate schedule, evaluations and results, so its
main reads top to bottom: parse the flags, set up, loop, report. Elsewhere: nanochat.precision
(dtype, compile, peak FLOP/s), nanochat.schedules (LR and momentum), nanochat.resume (saving
and resuming a run exactly), nanochat.preflight (the plan and its memory estimate).
"""

from __future__ import annotations

import argparse
import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from nanochat.checkpoint_manager import load_model
from nanochat.common import autodetect_device_type, compute_cleanup, compute_init, get_dist_info, init_wandb, print0
from nanochat.errors import NonFiniteLossError
from nanochat.gpt import GPT
from nanochat.precision import peak_memory_mib
from nanochat.report import get_report
from nanochat.resume import ResumeState, resume_if_asked, save_training_checkpoint
from nanochat.schedules import scale_learning_rates


def grad_accum_steps_for(total_batch_size: int, device_batch_size: int, seq_len: int, world_size: int) -> int:
    """How many micro-batches each rank runs per step so the global batch is total_batch_size tokens."""
    tokens_per_micro_step = device_batch_size * seq_len * world_size
    if total_batch_size % tokens_per_micro_step:
        raise ValueError(
            f"--total_batch_size={total_batch_size} is not a multiple of device_batch_size × seq_len × world_size "
            f"= {device_batch_size} × {seq_len} × {world_size} = {tokens_per_micro_step}"
        )
    return total_batch_size // tokens_per_micro_step


# ---- starting a stage from a checkpoint ----


@dataclass
class StageStart:
    """What a stage that trains from a checkpoint has before its own data: its rank, device, wandb run, and model."""

    device_type: str
    rank: int
    world_size: int
    device: torch.device
    wandb_run: Any
    model: GPT
    tokenizer: Any
    source_meta: dict[str, Any]

    @property
    def model_tag(self) -> str:
        """The source's tag, also when load_model chose it: the stage saves under the same one."""
        return self.source_meta["model_tag"]

    def frozen_source(self, args: argparse.Namespace) -> GPT:
        """A second, frozen copy of the source checkpoint: the reference of a KL penalty or of DPO."""
        reference, _, _ = load_model(args.source, self.device, "eval", self.model_tag, args.model_step)
        return reference.requires_grad_(False)


def start_stage(args: argparse.Namespace, wandb_project: str) -> StageStart:
    """Join the ranks (torchrun) or run alone, open the wandb run, and load --source for training."""
    device_type = args.device_type or autodetect_device_type()
    _, rank, _, world_size, device = compute_init(device_type)
    wandb_run = init_wandb(args.run, wandb_project, vars(args), rank == 0)
    model, tokenizer, source_meta = load_model(args.source, device, "train", args.model_tag, args.model_step)
    return StageStart(device_type, rank, world_size, device, wandb_run, model, tokenizer, source_meta)


def build_optimizers(model: GPT, args: argparse.Namespace) -> list[torch.optim.Optimizer]:
    """The model's optimizers from the stage's learning-rate flags, started at --init_lr_frac of them."""
    optimizers = model.setup_optimizers(args.unembedding_lr, args.embedding_lr, args.matrix_lr, args.weight_decay)
    scale_learning_rates(optimizers, args.init_lr_frac)
    return optimizers


# ---- the training step ----


class StepBatches:
    """
    A micro-batch stream grouped into optimizer steps and read one step ahead. The training
    step takes this step's micro-batches, then fetches micro-batch i of the next step right
    after launching micro-batch i's backward, so on a GPU the data loading overlaps the device's
    work instead of waiting behind the step's final sync. A rank whose data runs out holds a
    short next step; `have_next_step` tells every rank, the same way, whether all of them can
    run another full step, so no rank leaves the loop while the others still call collectives.
    """

    def __init__(self, batches: Iterator[tuple], grad_accum_steps: int) -> None:
        self.batches, self.grad_accum_steps = batches, grad_accum_steps
        self.ahead: list[tuple] = []
        self.exhausted = False
        for _ in range(grad_accum_steps):
            self.fetch_one()

    def fetch_one(self) -> None:
        """Read one more micro-batch of the next step (nothing once it is full or the data ended)."""
        if self.exhausted or len(self.ahead) == self.grad_accum_steps:
            return
        try:
            self.ahead.append(next(self.batches))
        except StopIteration:
            self.exhausted = True

    def have_next_step(self) -> bool:
        """Whether every rank holds a full next step: one tiny collective, the same answer on all ranks."""
        return all_ranks(len(self.ahead) == self.grad_accum_steps)

    def take(self) -> list[tuple]:
        """This step's micro-batches; the next step's are read by fetch_one as the step runs."""
        if len(self.ahead) < self.grad_accum_steps:
            raise RuntimeError("the data ran out: check have_next_step() before every step")
        step, self.ahead = self.ahead, []
        return step


def all_ranks(flag: bool) -> bool:
    """True on every rank when flag is true on every rank (the logical AND across ranks)."""
    if not get_dist_info()[0]:
        return flag
    # gloo cannot all_reduce on a CUDA tensor and NCCL only can: put it where the backend works
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor(int(flag), device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean over ranks (for logging a loss every rank agrees on)."""
    if get_dist_info()[0]:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.AVG)
    return value


def train_step(
    model: torch.nn.Module,
    optimizers: list[torch.optim.Optimizer],
    batches: StepBatches,
    autocast: contextlib.AbstractContextManager,
) -> tuple[torch.Tensor, tuple]:
    """
    One optimizer step over the next grad_accum_steps micro-batches. Each batch is (inputs,
    targets, *extra); returns the mean loss (a detached tensor, not synced) and the last batch's
    extras (e.g. the loader state). Gradients are averaged across ranks inside the distributed
    optimizers' step, so there is no DDP wrapper and no no_sync trick.
    """
    micro_batches = batches.take()
    total = torch.zeros((), device=next(model.parameters()).device)
    extra: tuple = ()
    for inputs, targets, *extra in micro_batches:
        with autocast:
            loss = model(inputs, targets)  # the mean over this micro-batch's tokens
        total += loss.detach()  # for logging only: no graph kept
        # backward sums gradients over micro-batches; dividing each loss by their number makes
        # that sum the gradient of the mean, as one big batch of every micro-batch would give
        (loss / len(micro_batches)).backward()
        batches.fetch_one()  # the GPU is still busy with this backward: read the next step's data now
    # each optimizer averages the gradients over ranks in its step, then updates its own shard
    for opt in optimizers:
        opt.step()
    model.zero_grad(set_to_none=True)  # None, not zeros: the next backward writes instead of adding
    return total / len(micro_batches), tuple(extra)


def train_step_token_normalized(
    model: torch.nn.Module,
    optimizers: list[torch.optim.Optimizer],
    batches: StepBatches,
    autocast: contextlib.AbstractContextManager,
    loss_fn: Callable[..., torch.Tensor] | None = None,
) -> tuple[torch.Tensor, int, tuple]:
    """
    One optimizer step whose loss is the sum over every target token of the step (all
    micro-batches, all ranks) divided by their count: micro-batches with more targets weigh
    more, and one with none contributes nothing (never NaN). Targets of -1 are ignored.
    `loss_fn(model, inputs, targets, *extra)` gives a summed loss (default: cross-entropy).
    Returns the mean loss per target token, the token count, and the last batch's extras.
    """
    micro_batches = batches.take()
    device = next(model.parameters()).device
    # the normalizer must be known before the first backward, so count every rank's targets first
    num_tokens = torch.tensor(sum(int((b[1] >= 0).sum()) for b in micro_batches), device=device)
    ddp, _, _, world_size = get_dist_info()
    if ddp:
        dist.all_reduce(num_tokens, op=dist.ReduceOp.SUM)
    # the loss is Σ loss_sum / num_tokens over all ranks; the distributed optimizers average the
    # ranks' gradients (divide by world_size), so each rank scales by world_size to undo that.
    # max(.., 1): a step with no targets at all gives zero gradients, not a division by zero
    scale = world_size / max(int(num_tokens), 1)
    total = torch.zeros((), device=device)
    extra: tuple = ()
    for inputs, targets, *extra in micro_batches:
        with autocast:
            if loss_fn is None:
                loss_sum = model(inputs, targets, loss_reduction="sum")
            else:
                loss_sum = loss_fn(model, inputs, targets, *extra)
        total += loss_sum.detach()
        # a sum, not a mean, per micro-batch: a micro-batch's weight is its number of targets
        (loss_sum * scale).backward()
        batches.fetch_one()  # overlap the next step's data loading with this backward
    for opt in optimizers:
        opt.step()
    model.zero_grad(set_to_none=True)
    if ddp:
        dist.all_reduce(total, op=dist.ReduceOp.SUM)  # every rank logs the same loss: all ranks' targets
    return total / max(int(num_tokens), 1), int(num_tokens), tuple(extra)


# ---- the step log ----


class StepLog:
    """
    The loop state a resumed run must continue (smoothed loss, training time, eval history)
    and the one log line per step: loss, LR multiplier, step time, tok/s, MFU, total time, and
    the time left (from the mean step time after this process's first 10, which compile and warm up).
    """

    def __init__(self, tokens_per_step: int, flops_per_token: float = 0.0, peak: float | None = None,
                 world_size: int = 1, state: dict | None = None, beta: float = 0.9) -> None:
        self.tokens_per_step, self.flops_per_token, self.peak, self.world_size = tokens_per_step, flops_per_token, peak, world_size
        self.state = state or {"ema": 0.0, "count": 0, "total_time": 0.0, "evals": {}}
        self.beta = beta
        self.steps_this_process = 0
        self.steady_time, self.steady_steps = 0.0, 0
        self.mfu: float | None = None

    @property
    def smooth_loss(self) -> float:
        """The debiased exponential moving average of the training loss."""
        return self.state["ema"] / (1 - self.beta ** max(self.state["count"], 1))

    def step(self, step: int, num_iterations: int | None, loss: float, dt: float, lrm: float,
             tokens: int | None = None, **extra: float) -> dict:
        """
        Record and print one step; `tokens` overrides tokens_per_step when steps vary in size.
        A NaN or infinite loss raises NonFiniteLossError instead: the loop stops before the
        next save, so the last checkpoint on disk is the last good one.
        """
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"loss is {loss} at step {step}: training stopped and nothing was saved at this step; "
                "the last good checkpoint is intact (resume with --resume and, say, a lower learning rate)"
            )
        self.state["ema"] = self.beta * self.state["ema"] + (1 - self.beta) * loss
        self.state["count"] += 1
        self.track(step, "train_loss", self.smooth_loss)  # the report's loss curve
        self.steps_this_process += 1
        self.state["total_time"] += dt
        if self.steps_this_process > 10:  # the first steps include compilation and warm-up: not typical of the rest
            self.steady_time, self.steady_steps = self.steady_time + dt, self.steady_steps + 1
        tok_per_s = (self.tokens_per_step if tokens is None else tokens) / dt
        self.mfu = 100 * self.flops_per_token * tok_per_s / (self.peak * self.world_size) if self.peak else None
        where = f"{step:05d}/{num_iterations:05d} ({100 * step / num_iterations:.2f}%)" if num_iterations else f"{step:05d}"
        extras = "".join(f" | {k}: {v:.4g}" for k, v in extra.items())
        print0(f"step {where} | loss: {self.smooth_loss:.6f} | lrm: {lrm:.2f} | dt: {dt * 1000:.2f}ms | "
               f"tok/s: {tok_per_s:,.0f} | mfu: {f'{self.mfu:.2f}%' if self.mfu is not None else 'n/a'}"
               f"{extras} | total time: {self.state['total_time'] / 60:.2f}m{self._eta(step, num_iterations, dt)}")
        metrics = {"step": step, "train/loss": self.smooth_loss, "train/lrm": lrm, "train/dt": dt, "train/tok_per_s": tok_per_s}
        if self.mfu is not None:
            metrics["train/mfu"] = self.mfu
        return {**metrics, **{f"train/{k}": v for k, v in extra.items()}}

    def _eta(self, step: int, num_iterations: int | None, dt: float) -> str:
        """' | eta: 12.3m' when the run's length is known (evaluations and saves not included)."""
        if not num_iterations:
            return ""
        per_step = self.steady_time / self.steady_steps if self.steady_steps else dt
        return f" | eta: {max(num_iterations - step - 1, 0) * per_step / 60:.1f}m"

    def track(self, step: int, name: str, value: float) -> None:
        """Keep a metric's history (for the report's curves) without printing it."""
        self.state["evals"].setdefault(name, []).append([step, value])

    def eval(self, step: int, name: str, value: float) -> dict:
        """Keep and print an evaluation's result; returns it for wandb."""
        self.track(step, name, value)
        print0(f"step {step:05d} | {name}: {value:.4f}")
        return {"step": step, name: value}

    def history(self, name: str) -> list[list[float]]:
        """[[step, value], ...] of one metric, oldest first (this run's and, resumed, the saved run's)."""
        return self.state["evals"].get(name, [])


def finish_run(results: dict[str, Any], device: torch.device, section: str, args: argparse.Namespace,
               device_type: str, wandb_run: Any, curves: dict[str, list] | None, notes: tuple[str, ...] = ()) -> None:
    """
    How every training stage ends: the device's peak memory goes into the results, one closing
    line is printed, the report gets the stage's section (its flags with the device actually
    used, the results, any notes, the curves), then wandb and the process group are closed.
    """
    peak = peak_memory_mib(device)
    results["peak_memory_mib"] = peak if peak is not None else "n/a"
    print0(f"peak memory: {f'{peak:,.0f} MiB' if peak is not None else 'n/a (not tracked on this device)'} | "
           f"training time: {results.get('training_time_min', 0):.2f}m")
    get_report().log(section=section, data=[{**vars(args), "device_type": device_type}, results, *notes], curves=curves)
    wandb_run.finish()
    compute_cleanup()


# ---- the loop's bookkeeping ----


class TrainingLoop:
    """
    The bookkeeping of a stage's loop, apart from its math. `step` counts finished optimizer
    steps, and the pass at the last step only evaluates and saves, so every stage's loop reads:

        loop = TrainingLoop.begin(args, checkpoint_dir, model, optimizers, device, run_meta, log)
        step = loop.start.step
        while True:
            last = step == num_iterations  # or: the data ran out on some rank
            if loop.eval_due(step, args.eval_every, last): ...evaluate, log.eval(...)...
            if loop.save_due(step, last): loop.save(step, model, optimizers, data_state, val_loss=val_loss)
            if last: break
            ...one training step, log.step(...)...
            step += 1
    """

    def __init__(self, checkpoint_dir: str, args: argparse.Namespace, run_meta: dict[str, Any], log: StepLog,
                 start: ResumeState) -> None:
        self.checkpoint_dir, self.args, self.run_meta, self.log = checkpoint_dir, args, run_meta, log
        self.start = start  # step, data position and run id: step 0 and none for a fresh run
        if start.loop_state is not None:
            log.state = start.loop_state  # the smoothed loss, training time and eval history carry on

    @classmethod
    def begin(cls, args: argparse.Namespace, checkpoint_dir: str, model: torch.nn.Module,
              optimizers: list[torch.optim.Optimizer], device: torch.device, run_meta: dict[str, Any], log: StepLog,
              expect: dict[str, Any] | None = None) -> TrainingLoop:
        """
        A fresh run, or (--resume, --resume_from_step) the saved one continued: model, optimizers
        and RNG restored from its checkpoint. `run_meta` goes into every save's meta; a resumed
        run must match the saved one on `expect` (default: all of run_meta).
        """
        start = resume_if_asked(args, checkpoint_dir, model, optimizers, device, run_meta if expect is None else expect)
        return cls(checkpoint_dir, args, run_meta, log, start)

    @staticmethod
    def due(step: int, every: int, last: bool = False) -> bool:
        """Every `every` steps (never when every < 1), and at the last step when last is given."""
        return last or (every > 0 and step % every == 0)

    def eval_due(self, step: int, every: int, last: bool = False) -> bool:
        """An evaluation due at this step, unless the saved run already made it (see resumed_at)."""
        return self.due(step, every, last) and not self.resumed_at(step)

    def resumed_at(self, step: int) -> bool:
        """Whether a resumed run starts at this step: the saved run evaluated it before it saved, so it is logged."""
        return step == self.start.step > 0

    def save_due(self, step: int, last: bool) -> bool:
        """Every --save_every steps and at the end; never the step this run started from (it is on disk)."""
        return step > self.start.step and self.due(step, self.args.save_every, last)

    def save(self, step: int, model: torch.nn.Module, optimizers: list[torch.optim.Optimizer], data_state: Any,
             **results: Any) -> None:
        """A checkpoint an exact resume continues from: the run's meta, the latest results (val_bpb=...), the loop state."""
        meta = {**self.run_meta, "run_id": self.start.run_id, "user_config": vars(self.args), **results,
                "loop_state": self.log.state}
        save_training_checkpoint(self.checkpoint_dir, step, model, optimizers, meta, data_state, self.args.keep_last)
        print0(f"saved checkpoint at step {step} to {self.checkpoint_dir}")
