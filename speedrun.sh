#!/usr/bin/env bash
# The whole pipeline, from a fresh machine: tokenizer → base → mid → SFT → RL → evaluations → report.md.
#
# With CUDA GPUs: the d20 speedrun on real data (FineWeb-Edu), NPROC_PER_NODE GPUs (default 8).
# With no GPU: a tiny profile on the offline synthetic twin that goes through every stage in
# about 15 minutes on 2 CPU cores, in its own base dir so it never touches a real run.
#
#   bash speedrun.sh                      # auto-detects GPU or CPU
#   NANOCHAT_PROFILE=cpu bash speedrun.sh # force the CPU profile
#   WANDB_RUN=myrun bash speedrun.sh      # log to wandb
#
# Re-running after an interruption resumes: finished stages are skipped (a marker per stage in
# $NANOCHAT_BASE_DIR/speedrun/), and a training stage with checkpoints continues from its last one.
# A stage that fails stops the script with its error. NANOCHAT_FRESH=1 starts over.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup_venv.sh

if [ -z "${NANOCHAT_PROFILE:-}" ]; then
    if python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        NANOCHAT_PROFILE=gpu
    else
        # a GPU machine where torch sees no CUDA (a driver too old for the wheel, a CPU-only
        # torch) must not fall silently into the tiny CPU profile
        gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
        if [ "${gpus:-0}" -gt 0 ]; then
            echo "error: nvidia-smi lists $gpus GPU(s) but torch $(python -c 'import torch; print(torch.__version__)') sees no CUDA device." >&2
            echo "Install a torch build that matches the driver (nvidia-smi shows its CUDA version), or force a profile:" >&2
            echo "NANOCHAT_PROFILE=cpu bash speedrun.sh   (the tiny offline run)" >&2
            exit 1
        fi
        NANOCHAT_PROFILE=cpu
    fi
fi
if [ "$NANOCHAT_PROFILE" = "gpu" ]; then
    export NANOCHAT_BASE_DIR=${NANOCHAT_BASE_DIR:-$HOME/.cache/nanochat}
    export NANOCHAT_DATASET=fineweb
else
    export NANOCHAT_BASE_DIR=${NANOCHAT_BASE_DIR:-$HOME/.cache/nanochat-cpu}
    export NANOCHAT_DATASET=synthetic
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$( [ "$NANOCHAT_PROFILE" = "gpu" ] && echo 1 || nproc )}
WANDB_RUN=${WANDB_RUN:-dummy}
MARKERS="$NANOCHAT_BASE_DIR/speedrun"
if [ "${NANOCHAT_FRESH:-0}" = "1" ]; then rm -rf "$MARKERS"; fi
mkdir -p "$MARKERS"
echo "speedrun profile: $NANOCHAT_PROFILE, base dir $NANOCHAT_BASE_DIR"

# chat_eval's HumanEval runs model-written code inside bubblewrap: install it (as root, with apt)
# and check the sandbox works now, rather than fail after the training stages
if ! command -v bwrap >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap; } || true
fi
python -c "
import sys
from nanochat.execution import SandboxUnavailable, check_sandbox
try:
    check_sandbox()
except SandboxUnavailable as e:
    sys.exit(f'error: {e}')
"

# stage NAME COMMAND...: run COMMAND unless NAME finished before; mark it finished when it succeeds
stage() {
    local name=$1
    shift
    if [ -f "$MARKERS/$name.done" ]; then
        echo "== $name: done in an earlier run, skipped"
        return
    fi
    local t0=$SECONDS
    echo "== $name ($(date '+%H:%M:%S'))"
    "$@"
    touch "$MARKERS/$name.done"
    echo "== $name done in $(( (SECONDS - t0) / 60 ))m $(( (SECONDS - t0) % 60 ))s"
}

# resume_flag DIR: when DIR (a stage's checkpoint folder) already holds a checkpoint, --resume it,
# or with NANOCHAT_FRESH=1 --overwrite it (a training script refuses to start over in an occupied folder)
resume_flag() {
    if compgen -G "$1/meta_*.json" > /dev/null; then
        if [ "${NANOCHAT_FRESH:-0}" = "1" ]; then echo "--overwrite"; else echo "--resume"; fi
    fi
}

if [ ! -f "$MARKERS/report-reset.done" ]; then
    python -m nanochat.report reset
    touch "$MARKERS/report-reset.done"
fi

if [ "$NANOCHAT_PROFILE" = "gpu" ]; then
    NPROC_PER_NODE=${NPROC_PER_NODE:-8}
    run() { torchrun --standalone --nproc_per_node="$NPROC_PER_NODE" -m "$@"; }
    # ~2B chars for the tokenizer come from the first 8 shards (~250M chars each); the rest of
    # what d20 needs (20 tokens per parameter) downloads in the background while it trains
    stage data-8 python -m nanochat.dataset -n 8
    python -m nanochat.dataset -n 240 > "$NANOCHAT_BASE_DIR/download.log" 2>&1 &
    DOWNLOAD_PID=$!
    stage tok_train python -m scripts.tok_train --max_chars=2000000000 --vocab_size=65536
    stage tok_eval python -m scripts.tok_eval
    echo "waiting for the pretraining shards (log: $NANOCHAT_BASE_DIR/download.log)"
    wait "$DOWNLOAD_PID"
    CK="$NANOCHAT_BASE_DIR"
    stage base_train run scripts.base_train -- --depth=20 --run="$WANDB_RUN" --save_every=1000 \
        $(resume_flag "$CK/base_checkpoints/d20")
    stage base_loss run scripts.base_loss
    stage base_eval run scripts.base_eval
    stage mid_train run scripts.mid_train -- --run="$WANDB_RUN" --save_every=200 $(resume_flag "$CK/mid_checkpoints/d20")
    stage chat_eval_mid run scripts.chat_eval -- -i mid
    stage chat_sft run scripts.chat_sft -- --run="$WANDB_RUN" --save_every=200 $(resume_flag "$CK/chatsft_checkpoints/d20")
    stage chat_eval_sft run scripts.chat_eval -- -i sft
    # learning from preferences on UltraFeedback (binarized, from the hub): a reward model, and DPO
    # from SFT. On-policy pairs instead: `run scripts.chat_pref_data -- --tasks=GSM8K`, then chat_dpo
    # with --data_files/--val_data_files on the two files it prints
    stage chat_rm run scripts.chat_rm -- --run="$WANDB_RUN" $(resume_flag "$CK/chatrm_checkpoints/d20")
    stage chat_dpo run scripts.chat_dpo -- --run="$WANDB_RUN" $(resume_flag "$CK/chatdpo_checkpoints/d20")
    stage chat_eval_dpo run scripts.chat_eval -- -i dpo
    # 32 rows a batch: each rank's 2 problems × 16 answers decode together (the rows are short, so
    # the training forward of 32 of them is far below base_train's 32 × 2048 tokens)
    stage chat_rl run scripts.chat_rl -- --run="$WANDB_RUN" --tasks=GSM8K:3,SpellingBee:1 --device_batch_size=32 \
        $(resume_flag "$CK/chatrl_checkpoints/d20")
    stage chat_eval_rl run scripts.chat_eval -- -i rl -a "GSM8K|SpellingBee"
else
    CK="$NANOCHAT_BASE_DIR"
    # the offline twin: 7 train shards + 1 val, ~4M chars of templated text
    stage data python -m nanochat.dataset -n 8
    stage tok_train python -m scripts.tok_train --vocab_size=4096 --max_chars=20000000
    stage tok_eval python -m scripts.tok_eval
    # a 4-layer model (~4M parameters) on ~0.5M tokens
    stage base_train python -m scripts.base_train --depth=4 --max_seq_len=256 --device_batch_size=16 \
        --total_batch_size=4096 --num_iterations=120 --eval_every=40 --eval_tokens=32768 --sample_every=-1 \
        --core_metric_every=-1 --save_every=40 $(resume_flag "$CK/base_checkpoints/d4")
    stage base_loss python -m scripts.base_loss --device_batch_size=16 --split_tokens=32768
    stage base_eval python -m scripts.base_eval --max_per_task=100
    stage mid_train python -m scripts.mid_train --device_batch_size=16 --total_batch_size=4096 --num_iterations=100 \
        --eval_every=50 --eval_tokens=16384 --spelling_size=250 --save_every=50 $(resume_flag "$CK/mid_checkpoints/d4")
    # 200 held-out problems a task (HumanEval's twin has 40), greedy
    EVAL="--max_problems=200 --max_new_tokens=160 --batch_size=16"
    stage chat_eval_mid python -m scripts.chat_eval -i mid $EVAL
    stage chat_sft python -m scripts.chat_sft --device_batch_size=8 --target_examples_per_step=32 \
        --num_iterations=60 --init_lr_frac=0.1 --smoltalk_size=2000 --spelling_size=1000 --eval_every=30 \
        --eval_steps=8 --eval_metrics_every=60 --eval_metrics_max_problems=128 --save_every=30 \
        $(resume_flag "$CK/chatsft_checkpoints/d4")
    stage chat_eval_sft python -m scripts.chat_eval -i sft $EVAL
    # learning from preferences: a reward model on the twin's pairs with one kind of flaw (refusals)
    # held out, to see whether it carries over; pairs of the SFT model's own right and wrong GSM8K
    # answers; DPO on those pairs, then the same evaluation as SFT's
    stage chat_rm python -m scripts.chat_rm --device_batch_size=8 --target_pairs_per_step=32 --num_iterations=100 \
        --eval_every=50 --eval_pairs=400 --init_lr_frac=1.0 --twin_kinds=wrong_answer,truncated,other_question,wrong_identity \
        --save_every=50 $(resume_flag "$CK/chatrm_checkpoints/d4")
    stage chat_pref_data python -m scripts.chat_pref_data --max_problems=400 --eval_problems=100 --num_samples=8 --device_batch_size=32 \
        --max_new_tokens=160
    stage chat_dpo python -m scripts.chat_dpo --data_files="$CK/preference_data/sft-d4-train.jsonl" \
        --val_data_files="$CK/preference_data/sft-d4-test.jsonl" --device_batch_size=8 --target_pairs_per_step=16 \
        --num_epochs=2 --eval_every=10 --eval_pairs=200 --init_lr_frac=0.02 --beta=0.1 $(resume_flag "$CK/chatdpo_checkpoints/d4")
    stage chat_eval_dpo python -m scripts.chat_eval -i dpo $EVAL
    # the step's 4 problems × 8 answers decode as one batch of 32 rows
    stage chat_rl python -m scripts.chat_rl --tasks=GSM8K:1,SpellingBee:1 --num_samples=8 --device_batch_size=32 --examples_per_step=4 \
        --max_new_tokens=128 --num_iterations=60 --init_lr_frac=0.05 --eval_every=-1 --eval_examples=32 \
        --save_every=30 $(resume_flag "$CK/chatrl_checkpoints/d4")
    stage chat_eval_rl python -m scripts.chat_eval -i rl -a "GSM8K|SpellingBee" $EVAL
fi

python -m nanochat.report generate
echo
# the commands below must reach this run from a fresh shell: its base dir and data, unless the defaults
RUN_ENV=""
if [ "$NANOCHAT_BASE_DIR" != "$HOME/.cache/nanochat" ]; then RUN_ENV="NANOCHAT_BASE_DIR=$NANOCHAT_BASE_DIR "; fi
if [ "$NANOCHAT_DATASET" = "synthetic" ]; then RUN_ENV="${RUN_ENV}NANOCHAT_DATASET=synthetic "; fi
echo "Done. report.md (here and in $NANOCHAT_BASE_DIR/report/) has every stage's numbers."
echo "This run lives in $NANOCHAT_BASE_DIR. From this folder, in a new shell:"
echo "  source .venv/bin/activate"
echo "  ${RUN_ENV}python -m scripts.chat_cli -i sft                       # chat in the terminal"
echo "  ${RUN_ENV}python -m scripts.chat_web -i sft                       # chat in the browser: http://127.0.0.1:8000/"
echo "  ${RUN_ENV}python -m scripts.chat_eval -i sft -a ARC-Easy --max_problems=20   # evaluate again (a report section of its own)"
