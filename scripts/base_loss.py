"""
Bits per byte of a base model on the train and val splits, plus a few greedy samples.

    python -m scripts.base_loss
    torchrun --standalone --nproc_per_node=8 -m scripts.base_loss -- --model_tag=d20
"""

from __future__ import annotations

import time

from nanochat.checkpoint_manager import load_model
from nanochat.common import autodetect_device_type, compute_cleanup, compute_init, print0, script_main
from nanochat.dataloader import tokenizing_distributed_data_loader
from nanochat.loss_eval import SAMPLE_PROMPTS, evaluate_bpb, sample_completions
from nanochat.precision import autocast_context, resolve_dtype
from nanochat.report import get_report
from nanochat.tokenizer import get_token_bytes
from scripts.flags import ArgumentParser, add_device_args, positive_int


@script_main
def main(argv: list[str] | None = None) -> dict[str, float]:
    p = ArgumentParser(description="Evaluate a base model's bits per byte on train and val.")
    add_device_args(p)
    p.add_argument("--device_batch_size", type=positive_int, default=32, help="rows per forward pass")
    p.add_argument("--split_tokens", type=positive_int, default=20 * 524288, help="tokens evaluated per split")
    p.add_argument("--model_tag", default=None, help="model tag, e.g. d20 (default: the deepest one)")
    p.add_argument("--model_step", "--step", dest="model_step", type=int, default=None,
                   help="checkpoint step (default: the last)")
    args = p.parse_args(argv)

    device_type = args.device_type or autodetect_device_type()
    _, rank, _, world_size, device = compute_init(device_type)
    autocast = autocast_context(device_type, resolve_dtype(device_type, args.dtype))
    model, tokenizer, meta = load_model("base", device, phase="eval", model_tag=args.model_tag, step=args.model_step)
    token_bytes = get_token_bytes(device)
    B, T = args.device_batch_size, model.config.sequence_len
    steps = max(1, args.split_tokens // (B * T * world_size))

    results: dict[str, float] = {}
    for split in ("train", "val"):
        print0(f"{split}: bits per byte over {steps * B * T * world_size:,} tokens ({steps} batches of {B}×{T} "
               f"on each of {world_size} ranks)...", flush=True)
        t0 = time.perf_counter()
        batches = tokenizing_distributed_data_loader(B, T, split, tokenizer=tokenizer, device=device)
        results[f"{split}_bpb"] = evaluate_bpb(model, batches, steps, token_bytes, autocast)
        print0(f"{split} bpb: {results[split + '_bpb']:.4f} ({time.perf_counter() - t0:.1f}s)")
    print0(f"sampling greedy completions of {len(SAMPLE_PROMPTS)} prompts...", flush=True)
    samples = sample_completions(model, tokenizer) if rank == 0 else []
    for s in samples:
        print0(f"  sample: {s!r}")
    get_report().log(section="Base model loss", data=[
        {"model_step": meta["step"], **vars(args), "device_type": device_type, **results},
        "Samples:\n\n" + "\n".join(f"- {s!r}" for s in samples),
    ])
    compute_cleanup()
    return results


if __name__ == "__main__":
    main()
