"""
The command-line pieces every script shares: a parser that shows each flag's default and takes
dashed spellings (`--device-batch-size`) beside nanochat's underscored ones
(`--device_batch_size`), argument types, and the flag sets the training scripts have in common.
"""

from __future__ import annotations

import argparse
from typing import Any

from nanochat.stages import STAGES


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """
    argparse's defaults formatter, except that a flag whose help already says its default in
    words keeps them instead of a second "(default: None)", and a required flag says so.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if action.required:
            return help_text if "required" in help_text else f"{help_text} (required)"
        if "default" in help_text:
            return help_text
        if action.default == "":  # "(default: )" reads like a missing word
            return f"{help_text} (default: '')"
        return super()._get_help_string(action)

    def _format_action_invocation(self, action: argparse.Action) -> str:
        # "--top_k, --top-k N" rather than "--top_k N, --top-k N": the value is named once
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        value = self._format_args(action, self._get_default_metavar_for_optional(action))
        return f"{', '.join(action.option_strings)} {value}"


class ArgumentParser(argparse.ArgumentParser):
    """
    An ArgumentParser whose help shows every flag's default and whose every `--long_name`
    also answers to `--long-name`. Subparsers (bench's `train`, `decode`, ...) are of this
    class too, because argparse builds them with the parent's class.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *names: str, **kwargs: Any) -> argparse.Action:
        dashed = [n.replace("_", "-") for n in names if n.startswith("--") and "_" in n]
        # dest stays the underscored name: argparse derives it from the first long option
        return super().add_argument(*names, *[d for d in dashed if d not in names], **kwargs)


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (a batch or a depth of 0 fails later, with a traceback)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_device_args(p: argparse.ArgumentParser) -> None:
    """Where a script runs and in what precision."""
    p.add_argument("--device_type", default="", choices=["", "cuda", "cpu", "mps"], help="device (empty: autodetect)")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"],
                   help="auto: bf16 on CUDA (and, to train, on CPUs with native bf16), fp32 elsewhere")


def add_run_args(p: argparse.ArgumentParser) -> None:
    """The flags every training script takes: logging, device and precision, resume, checkpoint keeping, the plan."""
    p.add_argument("--run", default="dummy", help="wandb run name ('dummy': no wandb)")
    add_device_args(p)
    p.add_argument("--compile", default="auto", choices=["auto", "on", "off"],
                   help="torch.compile the model (auto: where the batch shapes are fixed, on CUDA and for CPU runs of 1M+ tokens)")
    p.add_argument("--resume", action="store_true", help="continue from this stage's latest checkpoint")
    p.add_argument("--resume_from_step", type=int, default=-1, help="continue from this step's checkpoint (-1: not)")
    p.add_argument("--extend", action="store_true",
                   help="with --resume: continue a run to a larger --num_iterations than it was started with; the "
                        "LR schedule is recomputed for the new length (see the README)")
    p.add_argument("--overwrite", action="store_true",
                   help="start fresh in a model tag that already holds checkpoints, deleting them")
    p.add_argument("--keep_last", type=int, default=2,
                   help="keep only the newest N checkpoints of this run, the final one included (-1: keep all)")
    p.add_argument("--dry_run", action="store_true", help="print the plan (sizes, steps, memory estimate) and exit")
    p.add_argument("--skip_preflight", action="store_true", help="start even when the memory estimate exceeds the device")


def add_stage_args(p: argparse.ArgumentParser, source: str, init_lr_frac: float) -> None:
    """The flags mid_train, chat_sft and chat_rl share: the run flags, where to start from, learning rates."""
    add_run_args(p)
    p.add_argument("--source", default=source, choices=list(STAGES), help="the stage to start from")
    p.add_argument("--model_tag", default=None, help="source model tag (default: the largest); also the save tag")
    p.add_argument("--model_step", type=int, default=None, help="source checkpoint step (default: the last)")
    p.add_argument("--embedding_lr", type=float, default=0.2, help="AdamW learning rate of the token embedding")
    p.add_argument("--unembedding_lr", type=float, default=0.004, help="AdamW learning rate of the output head")
    p.add_argument("--matrix_lr", type=float, default=0.02, help="Muon learning rate of the blocks' matrices")
    p.add_argument("--weight_decay", type=float, default=0.0, help="AdamW weight decay")
    p.add_argument("--init_lr_frac", type=float, default=init_lr_frac,
                   help="start at this fraction of the learning rates above")


def add_chat_args(p: argparse.ArgumentParser) -> None:
    """chat_cli's and chat_web's flags: which checkpoint, on what device and in what dtype, the sampling defaults."""
    p.add_argument("-i", "--source", default="sft", choices=list(STAGES),
                   help="which stage's model to chat with (base only for debugging: it was never taught to chat)")
    p.add_argument("--model_tag", default=None, help="model tag, e.g. d20 (default: the deepest one)")
    p.add_argument("--step", "--model_step", dest="step", type=int, default=None, help="checkpoint step (default: the last)")
    p.add_argument("--device_type", default="", choices=["", "cuda", "cpu", "mps"], help="device (empty: autodetect)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="auto: bfloat16 on CUDA, float32 elsewhere. bfloat16 on CPU converts the weights "
                        "(decoding is memory-bound, so this is ~1.3x faster)")
    p.add_argument("--temperature", type=float, default=0.6, help="sampling temperature (0: greedy)")
    p.add_argument("--top_k", type=int, default=50, help="sample among the k likeliest tokens (0: no limit)")
    p.add_argument("--max_tokens", type=int, default=512, help="most tokens per reply")


def check_sampling_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit with a usage error when add_chat_args' sampling flags are out of range."""
    if args.temperature < 0:
        p.error(f"--temperature must be >= 0, got {args.temperature}")
    if args.top_k < 0:
        p.error(f"--top_k must be >= 0 (0: no limit), got {args.top_k}")
    if args.max_tokens < 1:
        p.error(f"--max_tokens must be >= 1, got {args.max_tokens}")


def optional_top_k(value: str) -> int | None:
    """--top_k: a positive int, or none/0 for the full distribution."""
    return None if value.lower() in ("none", "0") else positive_int(value)


def twin_kinds(text: str) -> tuple[str, ...]:
    """--twin_kinds: a comma-separated list of the preference twin's perturbation kinds."""
    from tasks.preferences import PERTURBATIONS  # here: the scripts that chat need not load the tasks

    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in PERTURBATIONS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"expected kinds among {','.join(PERTURBATIONS)}, got {text!r}")
    return kinds


def add_preference_args(p: argparse.ArgumentParser, eval_what: str) -> None:
    """chat_dpo's and chat_rm's data, batch and cadence flags: which pairs, how many per step, how often to evaluate."""
    from tasks.preferences import PERTURBATIONS

    p.add_argument("--dataset", default="ultrafeedback", choices=["ultrafeedback", "hh-rlhf"],
                   help="the pairs' hub format (offline: the preference twin either way)")
    p.add_argument("--data_files", action="append", default=None, metavar="PATH",
                   help="train pairs from local JSONL/parquet files with the hub's columns (default: the hub's train split)")
    p.add_argument("--val_data_files", action="append", default=None, metavar="PATH",
                   help="held-out pairs from local files (default: the hub's test split)")
    p.add_argument("--twin_kinds", type=twin_kinds, default=None, metavar="KIND,KIND",
                   help=f"train on the offline twin's pairs of only these kinds, of {','.join(PERTURBATIONS)}; "
                        "held-out pairs keep every kind, with accuracy per kind (default: the --dataset's pairs)")
    p.add_argument("--max_pairs", type=int, default=0, help="train on only the first N pairs (0: all)")
    p.add_argument("--device_batch_size", type=positive_int, default=4, help="pairs per forward pass (2 rows each)")
    p.add_argument("--target_pairs_per_step", type=positive_int, default=32, help="pairs per step, all ranks")
    p.add_argument("--num_epochs", type=int, default=1, help="passes over the pairs (when --num_iterations is -1)")
    p.add_argument("--num_iterations", type=int, default=-1, help="optimizer steps (-1: from --num_epochs)")
    p.add_argument("--max_seq_len", type=int, default=0, help="truncate conversations (0: the model's length)")
    p.add_argument("--eval_every", type=int, default=50, help=f"{eval_what} every N steps (-1: only at the end)")
    p.add_argument("--eval_pairs", type=positive_int, default=256, help="held-out pairs per evaluation")
    p.add_argument("--save_every", type=int, default=-1, help="checkpoint every N steps (-1: only at the end)")
