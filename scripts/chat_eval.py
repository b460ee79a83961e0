"""
Evaluate a chat model (mid, sft or rl) on held-out tasks and compute ChatCORE.

    python -m scripts.chat_eval -i sft
    python -m scripts.chat_eval -i sft -a "ARC-Easy|GSM8K" --max_problems=200
    torchrun --standalone --nproc_per_node=8 -m scripts.chat_eval -- -i rl -a GSM8K

ChatCORE is the mean over every task of accuracy centered on chance (0.25 for four-way
multiple choice, 0 for generative tasks): 0 is chance, 1 is perfect. A run over some of the
tasks (`-a GSM8K`) reports their accuracies and no ChatCORE, which would not be comparable.
"""

from __future__ import annotations

from nanochat.checkpoint_manager import load_model
from nanochat.common import autodetect_device_type, compute_cleanup, compute_init, print0, run_main
from nanochat.precision import autocast_context, resolve_dtype
from nanochat.report import get_report
from nanochat.stages import STAGES
from nanochat.task_eval import centered_accuracy, evaluate_task
from scripts.flags import ArgumentParser, add_device_args, positive_int
from tasks import EVAL_TASK_NAMES, build_eval_task


def main(argv: list[str] | None = None) -> dict:
    p = ArgumentParser(description="Evaluate a chat model on held-out tasks (ChatCORE).")
    p.add_argument("-i", "--source", required=True, choices=list(STAGES), help="which stage's model")
    p.add_argument("-a", "--task_name", default="|".join(EVAL_TASK_NAMES),
                   help=f"task names joined by '|', from: {', '.join(EVAL_TASK_NAMES)} (default: all of them)")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature of generative tasks (0: greedy)")
    p.add_argument("--max_new_tokens", type=int, default=512, help="most tokens per generated answer")
    p.add_argument("--num_samples", type=positive_int, default=1, help="answers sampled per generative problem")
    p.add_argument("--top_k", type=int, default=50, help="sample among the k likeliest tokens")
    p.add_argument("--batch_size", type=positive_int, default=8,
                   help="examples per forward pass (categorical), answers decoded together (generative)")
    p.add_argument("--max_problems", type=int, default=None,
                   help="evaluate at most this many examples per task (default: every one)")
    p.add_argument("--model_tag", default=None, help="model tag, e.g. d20 (default: the deepest one)")
    p.add_argument("--step", "--model_step", dest="step", type=int, default=None,
                   help="checkpoint step (default: the last)")
    add_device_args(p)
    args = p.parse_args(argv)
    names = [n for n in args.task_name.split("|") if n]
    unknown = [n for n in names if n not in EVAL_TASK_NAMES]
    if unknown:
        p.error(f"unknown task(s) {unknown}; choose from {EVAL_TASK_NAMES}")

    device_type = args.device_type or autodetect_device_type()
    _, _, _, _, device = compute_init(device_type)
    autocast = autocast_context(device_type, resolve_dtype(device_type, args.dtype))
    model, tokenizer, meta = load_model(args.source, device, "eval", model_tag=args.model_tag, step=args.step)

    accuracies: dict[str, float] = {}
    centered: dict[str, float] = {}
    for name in names:
        task = build_eval_task(name)
        with autocast:
            accuracies[name] = evaluate_task(task, model, tokenizer, batch_size=args.batch_size,
                                             num_samples=args.num_samples, max_new_tokens=args.max_new_tokens,
                                             temperature=args.temperature, top_k=args.top_k,
                                             max_problems=args.max_problems)
        centered[name] = centered_accuracy(accuracies[name], task.eval_type)
        print0(f"{name}: accuracy {100 * accuracies[name]:.2f}% (centered {centered[name]:.4f})")
    chatcore = None
    if set(EVAL_TASK_NAMES) <= set(centered):
        chatcore = sum(centered.values()) / len(centered)
        print0(f"ChatCORE: {chatcore:.4f}")
    else:
        print0(f"ChatCORE: not computed (it needs every task: {', '.join(EVAL_TASK_NAMES)})")

    get_report().log(section=STAGES[args.source].eval_section, data=[
        {"source": args.source, "model_step": meta["step"], **{k: v for k, v in vars(args).items() if k != "source"},
         "device_type": device_type},
        {**accuracies, **({"ChatCORE": chatcore} if chatcore is not None else {})},
    ])
    compute_cleanup()
    return {"accuracy": accuracies, "centered": centered, "ChatCORE": chatcore}


if __name__ == "__main__":
    run_main(main)
