#!/usr/bin/env bash
# The GPU check of the `wgpu` build on a machine with an NVIDIA GPU, against PyTorch (CUDA) on the
# same machine and the same synthetic dataset (PyTorch in f32 and with --amp, the seed's
# precision=16: fp16 autocast and a GradScaler; geolife in f32 and with --precision f16): a
# seed-recipe epoch, training steps of the paper's backbones, and `predict` over 4,716 test
# surveys with convnext_base. Each step runs under a
# share of one overall deadline, in order of importance; a summary goes to $OUT/gpu-check.log and
# every step's whole output to $OUT/steps.txt ($OUT defaults to ./gpu-check).
#
#   cargo build --release -p geolife-cli --features wgpu
#   GEOLIFE=target/release/geolife crates/geolife-train/benches/gpu_check.sh [SECONDS]
#
# The machine needs the Vulkan loader (libvulkan1) and the NVIDIA driver's Vulkan ICD; PyTorch
# rows are skipped (and say so) when python3 has no CUDA torch.
set -u
G=${GEOLIFE:-target/release/geolife}
BENCH=$(cd "$(dirname "$0")" && pwd)/torch_seed_bench.py
OUT=${OUT:-gpu-check}
WORK=${WORK:-/tmp/gpu-check}
DEADLINE=$(($(date +%s) + ${1:-480}))
mkdir -p "$OUT" "$WORK"
LOG="$OUT/gpu-check.log"

# Runs "$@" with at most $cap seconds, and never past the deadline; logs what it printed.
# ONLY (an extended regex) keeps the steps whose names match it.
step() {
    local cap=$1 name=$2
    shift 2
    [[ "$name" =~ ${ONLY:-.} ]] || return 0
    local left=$((DEADLINE - $(date +%s)))
    [ "$left" -gt "$cap" ] && left=$cap
    if [ "$left" -lt 10 ]; then
        echo "== $name: skipped (deadline)" | tee -a "$LOG"
        return
    fi
    echo "== $name (at most ${left}s): $*" | tee -a "$LOG"
    local t0=$(date +%s%N)
    timeout "$left" "$@" >"$WORK/$name.txt" 2>&1
    local rc=$?
    { echo "== $name: $*"; cat "$WORK/$name.txt"; } >>"$OUT/steps.txt"
    grep -E "device|adapter|epoch [0-9]+/[0-9]+:|time over|per step|samples/s|surveys x|pytorch|error|Error|panick" \
        "$WORK/$name.txt" | tail -8 | tee -a "$LOG"
    echo "-- $name: exit $rc, $((($(date +%s%N) - t0) / 1000000)) ms" | tee -a "$LOG"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$LOG"
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())' \
    2>&1 | tee -a "$LOG"

cat >"$WORK/epoch.toml" <<'EOF'
# The issue-12 seed recipe: paper preset, smoke ConvNeXt Sentinel branch, batch 64, one epoch.
preset = "paper"
[model]
backbone = "smoke_convnext"
[train]
batch_size = 64
epochs = 1
EOF
cat >"$WORK/base.toml" <<'EOF'
# A convnext_base checkpoint for timing predict (one batch: the weights are not the point).
preset = "paper"
[model]
backbone = "convnext_base"
[train]
batch_size = 2
epochs = 1
max_batches_per_epoch = 1
[validation]
fraction = 0.02
EOF

D=$WORK/data C=$WORK/cache R=$WORK/runs
# The norm kernels against burn's layers at the paper's batch (their layout is chosen for a real
# GPU: llvmpipe, a CPU, favours fewer synchronisations and cannot judge it).
step 40 norms-wgpu "$G" bench norms --device wgpu --batch-size 256 --steps 5
step 60 synth "$G" synth --out "$D" --surveys "${SURVEYS:-3000}" --test-surveys "${TEST_SURVEYS:-4716}"
step 120 epoch-wgpu "$G" train --config "$WORK/epoch.toml" --data "$D" --cache "$C" --out "$R/epoch" --device wgpu
step 120 epoch-wgpu-f16 "$G" train --config "$WORK/epoch.toml" --data "$C" --out "$R/epoch-f16" --device wgpu --precision f16
N=$(grep -oE "[0-9]+ train / [0-9]+ validation" "$R/epoch/train.log" 2>/dev/null | head -1 | awk '{print $1}')
step 50 epoch-torch python3 "$BENCH" --root "$D" --epoch --train-count "${N:-2700}" --sentinel smoke_convnext --batch-size 64 --device cuda --workers 8
step 50 epoch-torch-amp python3 "$BENCH" --root "$D" --epoch --train-count "${N:-2700}" --sentinel smoke_convnext --batch-size 64 --device cuda --workers 8 --amp
step 50 tiny64-wgpu "$G" bench train --data "$C" --backbone convnext_tiny --batch-size 64 --steps 5 --device wgpu
step 50 tiny64-wgpu-f16 "$G" bench train --data "$C" --backbone convnext_tiny --batch-size 64 --steps 5 --device wgpu --precision f16
step 35 tiny64-torch python3 "$BENCH" --root "$D" --steps 6 --batch-size 64 --sentinel convnext_tiny --device cuda --workers 8
step 35 tiny64-torch-amp python3 "$BENCH" --root "$D" --steps 6 --batch-size 64 --sentinel convnext_tiny --device cuda --workers 8 --amp
for b in swin_v2_b maxvit_t; do
    step 40 "$b-wgpu" "$G" bench train --data "$C" --backbone "$b" --batch-size 16 --steps 3 --device wgpu
done
step 30 base-ckpt "$G" train --config "$WORK/base.toml" --data "$C" --out "$R/base" --device wgpu
step 80 predict-wgpu "$G" predict --run "$R/base" --data "$C" --out "$R/base/test.safetensors" --batch-size 64 --device wgpu
step 80 predict-wgpu-f16 "$G" predict --run "$R/base" --data "$C" --out "$R/base/test-f16.safetensors" --batch-size 64 --device wgpu --precision f16
step 50 predict-torch python3 "$BENCH" --root "$D" --predict --sentinel convnext_base --batch-size 64 --device cuda --workers 8
step 50 predict-torch-amp python3 "$BENCH" --root "$D" --predict --sentinel convnext_base --batch-size 64 --device cuda --workers 8 --amp
for b in convnext_base convnext_large; do
    step 40 "$b-wgpu" "$G" bench train --data "$C" --backbone "$b" --batch-size 16 --steps 3 --device wgpu
done
# GPU memory of the paper configs at the paper's batch of 256, in the configs' precision (f16
# products, as the seed): the most nvidia-smi saw in use while two training steps ran
# (sampled every 200 ms).
for c in convnext-base convnext-large swinv2-base maxvit-t; do
    [[ "mem-$c" =~ ${ONLY:-.} ]] || continue
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$WORK/mem-$c.csv" &
    smi=$!
    step 90 "mem-$c" "$G" bench train --data "$C" --config "configs/paper-$c.toml" --batch-size 256 --steps 2 --device wgpu
    kill "$smi" 2>/dev/null
    echo "mem-$c: peak $(sort -n "$WORK/mem-$c.csv" | tail -1) MiB in use (batch 256)" | tee -a "$LOG"
done
nvidia-smi --query-gpu=memory.used,memory.total --format=csv,noheader | tee -a "$LOG"
