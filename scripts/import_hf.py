"""
Import a transformers `nanochat` model (a folder or a hub repo) as one of our checkpoints.

    python -m scripts.import_hf --model nanochat-d20 --to sft
    python -m scripts.import_hf --model karpathy/nanochat-d32 --to mid --model_tag d32

The weights become step 0 of `<stage>_checkpoints/<tag>/` under $NANOCHAT_BASE_DIR and the
tokenizer becomes tokenizer/tokenizer.pkl + token_bytes.pt, so the later stages (chat_sft,
chat_rl, chat_eval, chat_web) run from it. Other architectures are refused.
"""

from __future__ import annotations

import sys

from nanochat.checkpoint_manager import CheckpointError
from nanochat.common import command_here, run_main
from nanochat.hf import HFInteropError, import_folder, resolve_model_dir
from nanochat.stages import starting_points
from scripts.flags import ArgumentParser


def main(argv: list[str] | None = None) -> str:
    p = ArgumentParser(description="Convert a transformers nanochat model into our checkpoint layout.")
    p.add_argument("--model", required=True, help="a local folder or a hub repo id (owner/name)")
    p.add_argument("--to", required=True, choices=starting_points(),
                   help="the stage whose checkpoint it becomes (one a later stage trains from)")
    p.add_argument("--model_tag", default=None, help="model tag to save under (default: d<layers>)")
    args = p.parse_args(argv)

    try:
        checkpoint_dir = import_folder(resolve_model_dir(args.model), args.to, args.model_tag)
    except (HFInteropError, CheckpointError, OSError) as e:
        sys.exit(f"error: {e}")
    print(f"imported {args.model} into {checkpoint_dir} (step 0) and its tokenizer; "
          f"continue with e.g. `{command_here(f'python -m scripts.chat_eval -i {args.to}')}`")
    return checkpoint_dir


if __name__ == "__main__":
    run_main(main)
