#!/usr/bin/env bash
# The GPU benchmark suite of issue 18 as one script: one lent H200 for a few minutes, so every
# measurement runs here, each part under a hard timeout inside one overall budget, in order of
# value (training step, encode, caption; the loader rides on the training step's process).
#
#   bash benchmarks/gpu_suite.sh [--smoke] [RESULT_JSON]
#
# Writes RESULT_JSON (default $OUT/gpu_suite.json) and the log $OUT/gpu_suite.log; OUT defaults
# to /tmp/mb-gpu-suite. --smoke (or MB_SUITE_SMOKE=1) runs every same step on the CPU with tiny
# models in a minute or two: the rehearsal. On the GPU machine the wheels in .whl/ (diffusers,
# transformers 5.23 and the rest that the image lacks) are installed into /tmp/site first.
# The reference training step needs third_party/micro_diffusion (docs/benchmarks.md).
# Knobs: MB_SUITE_BUDGET_S (330: seconds for the parts before the ablation hook),
# MB_SUITE_CAPTION_FLAGS (extra flags for benchmarks.caption, e.g. "--static --compile").
set -uo pipefail
cd "$(dirname "$0")/.."

SMOKE=${MB_SUITE_SMOKE:-0}
RESULT=""
for arg in "$@"; do
  case "$arg" in
    --smoke) SMOKE=1 ;;
    *) RESULT=$arg ;;
  esac
done
OUT=${OUT:-/tmp/mb-gpu-suite}
mkdir -p "$OUT"
RESULT=${RESULT:-$OUT/gpu_suite.json}
LOG=$OUT/gpu_suite.log
WORK=$(mktemp -d /tmp/mb-suite.XXXXXX)
exec > >(tee -a "$LOG") 2>&1
export PYTHONUNBUFFERED=1
SUITE_START=$(date +%s)
BUDGET=${MB_SUITE_BUDGET_S:-330}

if [[ $SMOKE == 1 ]]; then
  PY=${MB_PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}
else
  PY=${MB_PYTHON:-python3}
  if compgen -G ".whl/*.whl" >/dev/null; then
    # The README's line: the image has no network, and these shadow its older copies.
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  # All compile caches in one place, shared by the concurrent training cases.
  export TORCHINDUCTOR_CACHE_DIR=$WORK/inductor
  # Four training cases compile at once on 16 cores.
  export TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-4}
fi

echo "== gpu_suite: smoke=$SMOKE budget=${BUDGET}s work=$WORK $(date -u +%FT%TZ)"
nvidia-smi || echo "nvidia-smi: not available"
$PY - <<'EOF' >"$WORK/env.json"
import json, platform, sys
import torch
env = {"python": sys.version.split()[0], "torch": torch.__version__, "machine": platform.node(),
       "cuda": torch.version.cuda, "cpus": __import__("os").cpu_count()}
for name in ("transformers", "diffusers", "timm", "tokenizers", "huggingface_hub"):
    try:
        env[name] = __import__(name).__version__
    except Exception as err:  # recorded, not fatal: the part that needs it fails on its own
        env[name] = f"missing ({type(err).__name__})"
if torch.cuda.is_available():
    env["gpu"] = torch.cuda.get_device_name()
    env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
print(json.dumps(env))
EOF
cat "$WORK/env.json"

remaining() { echo $((BUDGET - ($(date +%s) - SUITE_START))); }

# part NAME CAP_SECONDS COMMAND...: runs under min(CAP, what is left of the budget), logs to
# $WORK/NAME.log and records rc and seconds in $WORK/parts.tsv.
part() {
  local name=$1 cap=$2; shift 2
  local left; left=$(remaining)
  local limit=$(( cap < left ? cap : left ))
  if (( limit < 20 )); then
    echo "== $name: skipped, ${left}s of the budget left"
    printf '%s\t%s\t%s\t%s\n' "$name" skipped 0 "$limit" >>"$WORK/parts.tsv"
    return
  fi
  echo "== $name: timeout ${limit}s: $*"
  local t0; t0=$(date +%s)
  timeout -k 10 "$limit" "$@" 2>&1 | tee "$WORK/$name.log"
  local rc=${PIPESTATUS[0]}
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" $(( $(date +%s) - t0 )) "$limit" >>"$WORK/parts.tsv"
  echo "== $name: rc=$rc in $(( $(date +%s) - t0 ))s"
}

if [[ $SMOKE == 1 ]]; then
  SHARDS=(--shards 2 --per-shard 8)
  TRAIN_COMMON=(--preset demo --device cpu --steps 1 --warmup 1 --no-compile --dtype fp32 --smoke)
  BIG=2; SMALL=2; LOADER_STEPS=2; PROFILE_STEPS=1
  ENCODE=(--arch tiny --images 8 --batch 8 --device cpu)
  CAPTION=(--arch tiny --images 8 --batch 4 --new-tokens 8 --device cpu --skip-batch1)
  ABLATION=(--device cpu --smoke)
else
  SHARDS=(--shards 8 --per-shard 500)
  TRAIN_COMMON=(--preset XL_2 --device cuda --steps 15 --warmup 3)
  BIG=256; SMALL=128; LOADER_STEPS=10; PROFILE_STEPS=2
  ENCODE=(--arch sdxl --images 256 --batch 64)
  # Production settings (params.yaml: batch 64, dynamic KV cache); static + compile via the knob.
  # shellcheck disable=SC2206
  CAPTION=(--arch llava-7b --images 128 --batch 64 --skip-batch1 ${MB_SUITE_CAPTION_FLAGS:-})
  ABLATION=(--device cuda --workers 15)  # one process per run: 15 runs, 16 cores
fi

# Latent shards for the loader part, written on the CPU while the training cases compile.
(timeout 150 $PY -m benchmarks.local_shards "$WORK/shards" "${SHARDS[@]}" \
  >"$WORK/shards.log" 2>&1; echo "shards rc=$?" >>"$WORK/shards.log") &
SHARDS_PID=$!

# 1 (and 4). Training step: four cases compile concurrently, then are timed one at a time
# (benchmarks/gpu_train.py); ours at 75 % masking also times the loop on the loader. Each case
# runs under the part's timeout; its output goes to the log with its name in front.
train_case() {
  local name=$1 limit=$2; shift 2
  ( timeout -k 10 "$limit" $PY -m benchmarks.gpu_train "${TRAIN_COMMON[@]}" \
      --group-dir "$WORK/group" --group-size 4 --group-deadline "$GROUP_DEADLINE" \
      --name "$name" --json "$WORK/train-$name.json" "$@"; echo $? >"$WORK/rc-$name" ) 2>&1 \
    | sed -u "s/^/[$name] /"
}
TRAIN_CAP=240
TRAIN_LIMIT=$(( TRAIN_CAP < $(remaining) ? TRAIN_CAP : $(remaining) ))
echo "== train: 4 cases, timeout ${TRAIN_LIMIT}s each"
T0=$(date +%s)
# Past this, a compiled case is timed without waiting for slower peers: the timing must fit.
GROUP_DEADLINE=$(( T0 + TRAIN_LIMIT - 45 ))
train_case ours-m75 "$TRAIN_LIMIT" --impl ours --mask-ratio 0.75 --batch $BIG \
  --profile-steps $PROFILE_STEPS --loader-shards "$WORK/shards" --loader-steps $LOADER_STEPS &
TRAIN_PIDS=($!)
train_case reference-m75 "$TRAIN_LIMIT" --impl reference --mask-ratio 0.75 --batch $BIG &
TRAIN_PIDS+=($!)
train_case ours-m0 "$TRAIN_LIMIT" --impl ours --mask-ratio 0 --batch $SMALL \
  --profile-steps $PROFILE_STEPS &
TRAIN_PIDS+=($!)
train_case reference-m0 "$TRAIN_LIMIT" --impl reference --mask-ratio 0 --batch $SMALL &
TRAIN_PIDS+=($!)
wait "${TRAIN_PIDS[@]}"
printf '%s\t%s\t%s\t%s\n' train "$(cat "$WORK"/rc-* 2>/dev/null | sort -n | tail -1)" \
  $(( $(date +%s) - T0 )) "$TRAIN_LIMIT" >>"$WORK/parts.tsv"
echo "== train: rc=$(cat "$WORK"/rc-* 2>/dev/null | tr '\n' ' ')in $(( $(date +%s) - T0 ))s"

# 2. Encode: SDXL VAE (512 + 256 px) + ViT-H/14 text tower, ours vs the reference settings.
part encode 75 $PY -m benchmarks.encode "${ENCODE[@]}"

# 3. Caption: LLaVA-1.5-7B architecture, 64 new tokens, ours vs plain batch-32 generate.
part caption 150 $PY -m benchmarks.caption "${CAPTION[@]}"

wait "$SHARDS_PID"  # not a bare `wait`: that would also wait for the log's tee
cat "$WORK/shards.log"
SUITE_S=$(( $(date +%s) - SUITE_START ))
$PY -m benchmarks.gpu_suite_merge "$WORK" "$RESULT" --smoke "$SMOKE" --seconds "$SUITE_S" \
  --command "bash benchmarks/gpu_suite.sh $*"
echo "== gpu_suite: ${SUITE_S}s, results in $RESULT"

# Optional hook, outside the budget above: the masking ablation (written separately).
if [[ -f benchmarks/masking_ablation.py ]]; then
  timeout "${MB_SUITE_ABLATION_S:-240}" $PY -m benchmarks.masking_ablation "${ABLATION[@]}" --out "$OUT/ablation.json"
  echo "== masking_ablation: rc=$?"
fi
