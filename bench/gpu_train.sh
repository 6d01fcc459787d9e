#!/usr/bin/env bash
# Training throughput on one CUDA GPU in at most ~9.5 minutes: the GPU test tier, then `python -m bench train` for one
# stage (portrait_diffusion, paper scale, bf16) in four settings, each bare loop against framework run:
#   eager      single device (trainer.strategy=auto)        compiled   the same with trainer.compile=true
#   ddp        trainer=ddp on one GPU                       zero2      trainer=deepspeed_zero2 on one GPU (pure overhead)
# Run from the repository root on the GPU machine: `bash bench/gpu_train.sh`. Packages the machine lacks travel in
# .whl/ (made here by bench/gpu_wheels.sh) and are installed first. Logs and JSON go to $OUT (else bench/out).
# Knobs: STAGE, SCALE, PAIRS, STEPS, WARMUP, READER_S (the reader timing's budget), SETTINGS (a subset of the four),
# SKIP_TESTS, TESTS_LIMIT, LIMIT and COMPILED_LIMIT (seconds per setting), COMPILED_WARMUP; GENERATE_LIMIT (seconds) runs
# `python -m bench generate_paper` on GENERATE_SECONDS of speech first, in the same call.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 SEESPEAKER_PLAIN_LOGS=1 WANDB_MODE=disabled TORCH_EXTENSIONS_DIR=/tmp/torch_extensions
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  for sdist in .whl/*.tar.gz; do  # DeepSpeed publishes no wheel: its pure-Python install builds no op
    [ -e "$sdist" ] && DS_BUILD_OPS=0 python3 -m pip install -q --no-index --no-deps --no-build-isolation \
      --target /tmp/site "$sdist"
  done
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUTDIR=${OUT:-bench/out}
mkdir -p "$OUTDIR" bench/out
STAGE=${STAGE:-portrait_diffusion} SCALE=${SCALE:-paper}
WORK=$(mktemp -d)
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | tee "$OUTDIR/gpu.txt"

if [ -n "${GENERATE_LIMIT:-}" ]; then  # each row is written as it is measured: a stopped run keeps the rows before
  timeout "$GENERATE_LIMIT" python3 -m bench generate_paper --seconds="${GENERATE_SECONDS:-30}" 2>&1 \
    | grep --line-buffered -v -i warn | tee "$OUTDIR/generate-paper.log" | tail -8
  cp bench/out/generate-paper.json "$OUTDIR/" 2>/dev/null || true
fi
python3 -m bench train --stage="$STAGE" --scale="$SCALE" --pairs=0 --workdir="$WORK" 2>&1 | grep -v -i warn | tail -5  # earlier stages
[ -n "${SKIP_TESTS:-}" ] || timeout "${TESTS_LIMIT:-110}" python3 -m pytest tests/gpu -q -p no:cacheprovider \
  -p no:warnings --tb=short -rf 2>&1 | tee "$OUTDIR/gpu-tests.log" | tail -60

setting() {  # name, seconds, extra flags
  local name=$1 limit=$2; shift 2
  timeout "$limit" python3 -m bench train --stage="$STAGE" --scale="$SCALE" --pairs="${PAIRS:-3}" \
    --steps="${STEPS:-20}" --warmup="${WARMUP:-5}" --reader-seconds="${READER_S:-5}" --workdir="$WORK" \
    --set=trainer=ddp --set=trainer.devices=1 "$@" 2>&1 | grep --line-buffered -v -i warn | tee "$OUTDIR/train-$name.log" \
    | tail -16  # the log is written line by line, so a run stopped by an outer limit keeps what it printed
  cp "bench/out/train-$SCALE.json" "$OUTDIR/train-$SCALE-$name.json" 2>/dev/null || true
}
for name in ${SETTINGS:-eager compiled ddp zero2}; do
  case $name in
    eager) setting eager "${LIMIT:-100}" --set=trainer.strategy=auto ;;
    compiled) setting compiled "${COMPILED_LIMIT:-160}" --set=trainer.strategy=auto --set=trainer.compile=true \
      --warmup="${COMPILED_WARMUP:-30}" ;;  # 10 warm-up steps left a recompilation in the first timed window
    ddp) setting ddp "${LIMIT:-100}" ;;
    zero2) setting zero2 "${LIMIT:-100}" --set=trainer=deepspeed_zero2 ;;
  esac
done
rm -rf "$WORK"
