#!/usr/bin/env bash
# The GPU path in ten minutes: every stage for a few steps with the real settings (d20, bf16,
# torch.compile, every visible GPU under torchrun) on the offline synthetic data, then the
# training step at the d20 speedrun's exact shape. Prints tok/s, MFU and peak memory (with the
# preflight's estimate beside it) per stage, and exits non-zero if any stage fails.
#
#   bash scripts/gpu_check.sh                 # on a machine with CUDA GPUs
#   NPROC_PER_NODE=1 bash scripts/gpu_check.sh
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_DEPTH=2 bash scripts/gpu_check.sh   # the same command lines, tiny, on CPU
#
# Everything goes to a fresh base dir (GPU_CHECK_DIR, default a new folder under /tmp), so a
# real run's checkpoints are never touched. Logs: $GPU_CHECK_DIR/logs/<stage>.log
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_venv.sh

DEVICE=${GPU_CHECK_DEVICE:-cuda}
DEPTH=${GPU_CHECK_DEPTH:-20}
if [ "$DEVICE" = "cuda" ]; then
    if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "error: torch sees no CUDA device; run on a GPU machine, or GPU_CHECK_DEVICE=cpu GPU_CHECK_DEPTH=2 to try the command lines" >&2
        exit 1
    fi
    NPROC=${NPROC_PER_NODE:-$(python -c "import torch; print(torch.cuda.device_count())")}
    SEQ=2048; B=${GPU_CHECK_BATCH:-32}; DTYPE=bfloat16; COMPILE=on; SFT_B=4; RL_B=8; NEW_TOKENS=128
else
    NPROC=${NPROC_PER_NODE:-2}
    SEQ=64; B=4; DTYPE=bfloat16; COMPILE=off; SFT_B=2; RL_B=2; NEW_TOKENS=8
fi
export NANOCHAT_BASE_DIR=${GPU_CHECK_DIR:-$(mktemp -d /tmp/nanochat-gpu-check.XXXXXX)}
export NANOCHAT_DATASET=synthetic OMP_NUM_THREADS=1
LOGS="$NANOCHAT_BASE_DIR/logs"
mkdir -p "$LOGS"
TOTAL=$((B * SEQ * NPROC))  # one micro-batch per rank per step
COMMON="--device_type=$DEVICE --dtype=$DTYPE --compile=$COMPILE --run=dummy"
echo "gpu_check: $NPROC × $DEVICE, d$DEPTH, seq $SEQ, batch $B, $DTYPE, compile $COMPILE; base dir $NANOCHAT_BASE_DIR"

FAILED=()
run() { torchrun --standalone --nproc_per_node="$NPROC" -m "$@"; }

# summarize LOG: the last training step's throughput, the peak memory and the preflight estimate
summarize() {
    local step peak estimate
    step=$(grep -E '^step [0-9]+/?[0-9]* .*tok/s' "$1" | tail -1 | grep -oE 'tok/s: [0-9,]+ \| mfu: [^|]+' || true)
    peak=$(grep -oE '^peak memory: [^|]+' "$1" | tail -1 || true)
    estimate=$(grep -oE 'memory: [0-9.]+ GiB estimated peak per device' "$1" | head -1 | grep -oE '[0-9.]+ GiB' || true)
    [ -n "$step$peak" ] && echo "   ${step}${peak:+ | $peak}${estimate:+ (estimate $estimate)}"
    return 0
}

# check NAME COMMAND...: run one stage, keep its log, report its numbers or its failure
check() {
    local name=$1
    shift
    local t0=$SECONDS
    if "$@" > "$LOGS/$name.log" 2>&1; then
        echo "ok   $name ($((SECONDS - t0)) s)"
        summarize "$LOGS/$name.log"
    else
        echo "FAIL $name ($((SECONDS - t0)) s), last lines of $LOGS/$name.log:"
        tail -15 "$LOGS/$name.log" | sed 's/^/   /'
        FAILED+=("$name")
    fi
}

check data python -m nanochat.dataset -n 4
check tok_train python -m scripts.tok_train --vocab_size=65536 --max_chars=20000000
check base_train run scripts.base_train -- $COMMON --depth="$DEPTH" --max_seq_len="$SEQ" --device_batch_size="$B" \
    --total_batch_size="$TOTAL" --num_iterations=30 --eval_every=15 --eval_tokens=$((TOTAL * 2)) \
    --core_metric_every=30 --core_metric_max_per_task=16 --sample_every=30 --save_every=15
check base_train_resume run scripts.base_train -- $COMMON --depth="$DEPTH" --max_seq_len="$SEQ" \
    --device_batch_size="$B" --total_batch_size="$TOTAL" --num_iterations=30 --eval_every=15 \
    --eval_tokens=$((TOTAL * 2)) --core_metric_every=30 --core_metric_max_per_task=16 --sample_every=30 \
    --save_every=15 --resume_from_step=15
check base_loss run scripts.base_loss -- --device_type="$DEVICE" --device_batch_size="$B" --split_tokens=$((TOTAL * 2))
check base_eval run scripts.base_eval -- --device_type="$DEVICE" --max_per_task=16
check mid_train run scripts.mid_train -- $COMMON --device_batch_size="$B" --max_seq_len="$SEQ" \
    --total_batch_size="$TOTAL" --num_iterations=20 --eval_every=10 --eval_tokens=$((TOTAL * 2)) --spelling_size=2000
check chat_eval_mid run scripts.chat_eval -- -i mid --device_type="$DEVICE" --max_problems=32 --max_new_tokens=64
check chat_sft run scripts.chat_sft -- $COMMON --device_batch_size="$SFT_B" \
    --target_examples_per_step=$((SFT_B * NPROC * 2)) --num_iterations=20 --eval_every=10 --eval_steps=4 \
    --eval_metrics_every=20 --eval_metrics_max_problems=64 --smoltalk_size=2000 --spelling_size=200
check chat_eval_sft run scripts.chat_eval -- -i sft --device_type="$DEVICE" --max_problems=32 --max_new_tokens=64
# preferences: a reward model and DPO on the twin's pairs, on-policy pairs, RL against the reward model
PAIRS="--device_batch_size=$SFT_B --target_pairs_per_step=$((SFT_B * NPROC * 2)) --num_iterations=10 --eval_every=10 --eval_pairs=64 --max_pairs=2000"
check chat_rm run scripts.chat_rm -- $COMMON $PAIRS
check chat_pref_data run scripts.chat_pref_data -- --device_type="$DEVICE" --dtype="$DTYPE" --max_problems=$((NPROC * 4)) \
    --eval_problems=$((NPROC * 2)) --num_samples="$RL_B" --device_batch_size=$((RL_B * 2)) --max_new_tokens="$NEW_TOKENS"
check chat_dpo run scripts.chat_dpo -- $COMMON $PAIRS
check chat_eval_dpo run scripts.chat_eval -- -i dpo -a GSM8K --device_type="$DEVICE" --max_problems=32 --max_new_tokens=64
# each rank's 2 problems decode together (rows at their own positions)
check chat_rl run scripts.chat_rl -- $COMMON --device_batch_size=$((RL_B * 2)) --num_samples="$RL_B" \
    --examples_per_step=$((NPROC * 2)) --max_new_tokens="$NEW_TOKENS" --num_iterations=4 --eval_every=4 \
    --eval_examples=$((NPROC * 4)) --save_every=2
check chat_eval_rl run scripts.chat_eval -- -i rl -a GSM8K --device_type="$DEVICE" --max_problems=32 --max_new_tokens=64
check chat_rl_reward_model run scripts.chat_rl -- $COMMON --device_batch_size="$RL_B" --num_samples="$RL_B" \
    --examples_per_step="$NPROC" --max_new_tokens="$NEW_TOKENS" --num_iterations=2 --eval_every=-1 \
    --eval_examples="$NPROC" --reward_model=d"$DEPTH" --overwrite

# the web server: one reply through the OpenAI-style endpoint, then shut down
web_check() {
    local port=$((20000 + RANDOM % 20000))
    python -m scripts.chat_web -i sft --device_type="$DEVICE" --port="$port" &
    local pid=$!
    local ok=1
    for _ in $(seq 1 120); do
        if python - "$port" <<'EOF' 2>/dev/null; then ok=0; break; fi
import json, sys, urllib.request
body = json.dumps({"messages": [{"role": "user", "content": "What is 2+3?"}], "max_tokens": 16}).encode()
req = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/v1/chat/completions", body, {"Content-Type": "application/json"})
reply = json.load(urllib.request.urlopen(req, timeout=60))
print("reply:", repr(reply["choices"][0]["message"]["content"]))
EOF
        sleep 1
    done
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    return $ok
}
check chat_web web_check

# the training step at the speedrun's exact shape (vocab 65,536; random tokens), one GPU
if [ "$DEVICE" = "cuda" ]; then
    check bench_d20 python -m scripts.bench train --depth=20 --vocab_size=65536 --seq_len=2048 --batch="$B" \
        --steps=2 --rounds=5 --warmup=5 --paths=bfloat16_compile --loss_steps=0 --out="$LOGS/bench_d20.json"
    grep -E '"(tok_per_s|mfu_percent|peak_memory_gib|estimated_peak_gib)"' "$LOGS/bench_d20.json" | sed 's/^ */   /'
fi

if [ ${#FAILED[@]} -gt 0 ]; then
    echo "gpu_check: FAILED: ${FAILED[*]} (logs in $LOGS)"
    exit 1
fi
echo "gpu_check: every stage passed (logs in $LOGS)"
