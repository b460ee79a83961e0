"""
Export a trained model to a transformers `nanochat` checkpoint, optionally pushing it to the hub.

    python -m scripts.export_hf -i sft --out nanochat-d20
    python -m scripts.export_hf -i base --model_tag d20 --step 21400 --out d20-base --push_to_hub you/nanochat-d20-base

The folder holds config.json, model.safetensors, generation_config.json, the tokenizer
(tokenizer.json, tokenizer_config.json, chat_template.jinja) and a model card README.md, and
loads with `AutoModelForCausalLM.from_pretrained(out)` / `AutoTokenizer.from_pretrained(out)`.
"""

from __future__ import annotations

import os
import sys

from nanochat.checkpoint_manager import CheckpointError, load_model
from nanochat.common import get_base_dir, run_main
from nanochat.hf import HFInteropError, export_folder, model_card, push_folder, report_summary
from nanochat.stages import STAGES
from nanochat.tokenizer import TokenizerNotFoundError
from scripts.flags import ArgumentParser


def main(argv: list[str] | None = None) -> str:
    p = ArgumentParser(description="Export a checkpoint to a transformers nanochat folder.")
    p.add_argument("-i", "--source", required=True, choices=sorted(STAGES), help="which stage's model to export")
    p.add_argument("--model_tag", default=None, help="model tag, e.g. d20 (default: the deepest one)")
    p.add_argument("--step", "--model_step", dest="step", type=int, default=None, help="checkpoint step (default: the last)")
    p.add_argument("--out", required=True, help="folder to write (created if missing)")
    p.add_argument("--push_to_hub", default=None, metavar="REPO", help="also upload the folder to this hub repo (owner/name)")
    p.add_argument("--private", action="store_true", help="create the hub repo private")
    args = p.parse_args(argv)

    try:
        model, tokenizer, meta = load_model(args.source, "cpu", phase="eval", model_tag=args.model_tag, step=args.step)
        summary = report_summary(os.path.join(get_base_dir(), "report", "report.md"))
        files = export_folder(model, tokenizer, args.out, model_card(model, args.source, meta, summary))
        print(f"wrote {', '.join(files)} to {args.out}")
        if args.push_to_hub:
            print(f"uploaded to {push_folder(args.out, args.push_to_hub, private=args.private)}")
    except (CheckpointError, TokenizerNotFoundError, HFInteropError, OSError) as e:
        sys.exit(f"error: {e}")
    return args.out


if __name__ == "__main__":
    run_main(main)
