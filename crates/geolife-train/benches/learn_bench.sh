#!/usr/bin/env bash
# The seed-recipe learning benchmark: does geolife learn as well as PyTorch with the same recipe?
#
# The recipe is the seed's (the paper preset): `smoke_convnext` Sentinel branch, random 90/10
# split, seed transforms, BCE with mixup 0.4, AdamW 8e-4 constant, 15 epochs, batch 64, 11,255
# outputs. K is fitted on validation at the best validation epoch. It runs on a synthetic set
# in the official layout, 2,339 train and 661 test surveys (the size of the planted set where
# the regression was reported), with 3 seeds per tool. Test samples-F1 is reported per run and
# as mean +- sd per tool.
#
#   crates/geolife-train/benches/learn_bench.sh GEOLIFE_BINARY PYTHON WORKDIR [SEEDS...]
#
# LEARN_TOOLS=geolife (or pytorch) runs one side only; LEARN_SURVEYS, LEARN_TEST_SURVEYS and
# LEARN_EPOCHS shrink the benchmark (the CLI tests run the geolife side at a tiny size).
# Only the PyTorch side needs Python.
# GEOLIFE_BINARY is a release build (`cargo build --release -p geolife-cli`). PYTHON has torch,
# torchvision and PIL. WORKDIR gets the dataset, the runs and `results.jsonl`. On 2 cores one
# run takes 4-6 minutes per tool.
set -euo pipefail
geolife=$(realpath "$1")
python=$2
work=$3
shift 3
[ $# -gt 0 ] || set -- 1 2 3
seeds=("$@")
here=$(dirname "$(realpath "$0")")
mkdir -p "$work"
cd "$work"
epochs=${LEARN_EPOCHS:-15}
[ -d data ] || "$geolife" synth --surveys "${LEARN_SURVEYS:-2339}" \
  --test-surveys "${LEARN_TEST_SURVEYS:-661}" --out data
[ -d cache ] || "$geolife" prepare data --out cache
solution=data/GLC24_SOLUTION_FILE.csv
: >>results.jsonl

tools=${LEARN_TOOLS:-geolife pytorch}
for s in "${seeds[@]}"; do
  run=runs/geolife-$s
  if [[ $tools == *geolife* && ! -f "$run/done" ]]; then
    rm -rf "$run"
    mkdir -p runs
    cat >"runs/seed-$s.toml" <<EOF
preset = "paper"
[model]
backbone = "smoke_convnext"
[train]
batch_size = 64
epochs = $epochs
seed = $s
[validation]
split = "random"
seed = $s
EOF
    start=$(date +%s)
    "$geolife" train --config "runs/seed-$s.toml" --data cache --out "$run" >"runs/geolife-$s.log" 2>&1
    # The best validation epoch's K (metrics.csv: epoch,train_loss,val_loss,best_k,val_f1_at_best_k,...).
    read -r epoch k val_f1 < <(awk -F, 'NR > 1 && $5 > best { best = $5; line = $1 " " $4 " " $5 } END { print line }' "$run/metrics.csv")
    "$geolife" predict --run "$run" --data cache --split test --out "$run/test_scores.safetensors" \
      --submission "$run/test_submission.csv" --top-k "$k" >/dev/null
    test_f1=$("$geolife" evaluate --predictions "$run/test_submission.csv" --solution "$solution" --json |
      sed -n 's/^ *"samples_f1": *\([-0-9.eE+]*\),*$/\1/p')
    [ -n "$test_f1" ] || { echo "no samples_f1 in geolife evaluate's output" >&2; exit 1; }
    echo "{\"tool\": \"geolife\", \"seed\": $s, \"best_epoch\": $epoch, \"k\": $k, \"val_f1\": $val_f1, \"test_f1\": $test_f1, \"seconds\": $(($(date +%s) - start))}" >>results.jsonl
    touch "$run/done"
  fi
  if [[ $tools == *pytorch* ]] && ! grep -q "\"tool\": \"pytorch\", \"seed\": $s," results.jsonl; then
    "$python" "$here/learn_bench.py" --root data --solution "$solution" --seed "$s" \
      --epochs "$epochs" >"runs/pytorch-$s.log" 2>&1
    grep '^RESULT ' "runs/pytorch-$s.log" | sed 's/^RESULT //' >>results.jsonl
  fi
done

# Mean +- sample sd of test F1 per tool.
for tool in geolife pytorch; do
  { grep "\"tool\": \"$tool\"" results.jsonl || true; } |
    sed 's/.*"test_f1": *\([-0-9.eE+]*\).*/\1/' |
    awk -v tool="$tool" '{ v[NR] = $1; sum += $1; runs = runs (NR > 1 ? ", " : "") sprintf("%.4f", $1) }
      END {
        if (NR == 0) exit
        mean = sum / NR; ss = 0
        for (i = 1; i <= NR; i++) ss += (v[i] - mean) ^ 2
        sd = NR > 1 ? sprintf("%.4f", sqrt(ss / (NR - 1))) : "nan"
        printf "%s: test samples-F1 %.4f +- %s over %d seeds (%s)\n", tool, mean, sd, NR, runs
      }'
done
