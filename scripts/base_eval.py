"""
The CORE metric (DCLM) of a base model: 22 in-context-learning tasks, or offline
(NANOCHAT_DATASET=synthetic or --offline) the six tasks of the synthetic twin bundle.

    python -m scripts.base_eval
    python -m scripts.base_eval --model_tag=d20 --max_per_task=500
    torchrun --standalone --nproc_per_node=8 -m scripts.base_eval -- --model_tag=d20

Prints a table, writes <base_dir>/base_eval/<tag>_<step>.csv (step zero-padded to 6 digits)
and logs the "Base model evaluation" report section.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from nanochat.checkpoint_manager import (
    CheckpointError,
    checkpoint_dir_for,
    find_largest_model,
    find_last_step,
    load_model,
)
from nanochat.common import (
    atomic_write,
    autodetect_device_type,
    compute_cleanup,
    compute_init,
    get_base_dir,
    print0,
    run_main,
)
from nanochat.core_eval import (
    EvalBundleError,
    evaluate_core,
    get_eval_bundle_dir,
    load_tasks,
)
from nanochat.precision import autocast_context, resolve_dtype
from nanochat.report import get_report
from nanochat.stages import STAGES
from nanochat.tokenizer import TokenizerNotFoundError
from scripts.flags import ArgumentParser, add_device_args


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(description="Evaluate a base model on the CORE metric.")
    p.add_argument("--model_tag", default=None, help="checkpoint folder (default: the deepest d<N>)")
    p.add_argument("--step", "--model_step", dest="model_step", type=int, default=None,
                   help="checkpoint step (default: the last)")
    p.add_argument("--max_per_task", type=int, default=-1, help="examples per task (-1: all)")
    add_device_args(p)
    p.add_argument("--offline", action="store_true", help="the synthetic twin bundle even if NANOCHAT_DATASET is fineweb")
    return p.parse_args(argv)


def format_table(results: dict[str, Any]) -> str:
    width = max(len("CORE"), *(len(label) for label in results["tasks"]))
    lines = [f"{'task':<{width}}  accuracy  centered"]
    for label, r in results["tasks"].items():
        lines.append(f"{label:<{width}}  {r['accuracy']:8.4f}  {r['centered']:8.4f}")
    lines.append(f"{'CORE':<{width}}  {'':8}  {results['core']:8.4f}")
    return "\n".join(lines)


def write_csv(results: dict[str, Any], path: str) -> None:
    lines = ["Task,Accuracy,Centered"]
    lines += [f"{label},{r['accuracy']:.6f},{r['centered']:.6f}" for label, r in results["tasks"].items()]
    lines.append(f"CORE,,{results['core']:.6f}")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write(path, lambda f: f.write(("\n".join(lines) + "\n").encode("utf-8")))


def _fail(error: Exception) -> None:
    message = " ".join(str(error).split())
    if isinstance(error, CheckpointError) and "base_train" not in message:
        message += "; train a base model first with `python -m scripts.base_train`"
    print(f"base_eval: error: {message}", file=sys.stderr)
    sys.exit(1)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device_type = args.device_type or autodetect_device_type()
    _, rank, _, _, device = compute_init(device_type)
    autocast = autocast_context(device_type, resolve_dtype(device_type, args.dtype))
    try:
        tag = args.model_tag or find_largest_model(STAGES["base"].checkpoints_dir())
        step = args.model_step if args.model_step is not None else find_last_step(checkpoint_dir_for("base", tag))
        model, tokenizer, _ = load_model("base", device, phase="eval", model_tag=tag, step=step)
        bundle_dir = get_eval_bundle_dir(offline=True if args.offline else None)
        tasks = load_tasks(bundle_dir)
    except (CheckpointError, TokenizerNotFoundError, EvalBundleError) as e:
        _fail(e)
    print0(f"CORE of base model {tag} step {step} on {bundle_dir} ({len(tasks)} tasks)")
    with autocast:
        results = evaluate_core(model, tokenizer, device, tasks=tasks, max_per_task=args.max_per_task)
    print0(format_table(results))
    if rank == 0:
        csv_path = os.path.join(get_base_dir(), "base_eval", f"{tag}_{step:06d}.csv")
        write_csv(results, csv_path)
        print0(f"wrote {csv_path}")
    get_report().log(section="Base model evaluation", data=[
        {"model_tag": tag, "model_step": step, "bundle": bundle_dir, "max_per_task": args.max_per_task,
         "CORE metric": results["core"]},
        "```\n" + format_table(results) + "\n```",
    ])
    compute_cleanup()
    return results


if __name__ == "__main__":
    run_main(main)
