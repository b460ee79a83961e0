#!/usr/bin/env bash
# The whole pipeline, from a fresh machine.
#
# With CUDA GPUs: the d20 speedrun on real data (FineWeb-Edu), NPROC_PER_NODE GPUs (default 8).
# With no GPU: a tiny profile on the offline synthetic twin that goes through every stage in
# minutes on a laptop CPU, in its own base dir so it never overwrites a real run.
#
#   bash speedrun.sh                      # auto-detects GPU or CPU
#   NANOCHAT_PROFILE=cpu bash speedrun.sh # force the CPU profile
#   WANDB_RUN=myrun bash speedrun.sh      # log to wandb (GPU profile)
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup_venv.sh

if [ -z "${NANOCHAT_PROFILE:-}" ]; then
    if python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        NANOCHAT_PROFILE=gpu
    else
        NANOCHAT_PROFILE=cpu
    fi
fi
echo "speedrun profile: $NANOCHAT_PROFILE"

if [ "$NANOCHAT_PROFILE" = "gpu" ]; then
    export NANOCHAT_BASE_DIR=${NANOCHAT_BASE_DIR:-$HOME/.cache/nanochat}
    export NANOCHAT_DATASET=fineweb
    export OMP_NUM_THREADS=1
    python -m nanochat.report reset
    # ~2B chars for the tokenizer come from the first 8 shards (~250M chars each); the rest
    # of what pretraining needs downloads in the background while the tokenizer trains
    python -m nanochat.dataset -n 8
    python -m nanochat.dataset -n 240 > "$NANOCHAT_BASE_DIR/download.log" 2>&1 &
    DATASET_DOWNLOAD_PID=$!
    python -m scripts.tok_train --max_chars=2000000000 --vocab_size=65536
    python -m scripts.tok_eval
    echo "waiting for the pretraining shards to finish downloading (log: $NANOCHAT_BASE_DIR/download.log)"
    wait "$DATASET_DOWNLOAD_PID"
    NPROC_PER_NODE=${NPROC_PER_NODE:-8}
    WANDB_RUN=${WANDB_RUN:-dummy}
    # d20: 561M parameters, 20 tokens per parameter (~11B tokens)
    torchrun --standalone --nproc_per_node="$NPROC_PER_NODE" -m scripts.base_train -- --depth=20 --run="$WANDB_RUN"
    torchrun --standalone --nproc_per_node="$NPROC_PER_NODE" -m scripts.base_loss
else
    export NANOCHAT_BASE_DIR=${NANOCHAT_BASE_DIR:-$HOME/.cache/nanochat-cpu}
    export NANOCHAT_DATASET=synthetic
    python -m nanochat.report reset
    python -m nanochat.dataset -n 8  # the offline twin: 7 train shards + 1 val, ~4M chars
    python -m scripts.tok_train --vocab_size=4096 --max_chars=20000000
    python -m scripts.tok_eval
    # a 4-layer model (~4M parameters) on ~0.6M tokens: a few minutes on 2 cores
    python -m scripts.base_train --depth=4 --max_seq_len=256 --device_batch_size=16 --total_batch_size=4096 \
        --num_iterations=150 --eval_every=50 --eval_tokens=65536 --sample_every=-1
    python -m scripts.base_loss --device_batch_size=16 --split_tokens=65536
fi

python -m nanochat.report generate
echo
echo "Tokenizer, data and base model are in $NANOCHAT_BASE_DIR; report.md has the numbers."
echo "Next stages (mid_train, chat_sft, chat_rl, chat_eval) are not in this repository yet."
