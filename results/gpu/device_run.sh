#!/usr/bin/env bash
# One prepared device call: train the paper's S-CoDA-SQ (T=1000) under a time budget and run the
# paper's protocol on it. results/gpu/README.md has the budget plan and the exact `run` command.
#
# Stages (STAGES, comma-separated; each logged with its seconds in $OUT/stages.csv):
#   install   carried wheels (.carry/wheels: captum, lime) into /tmp/site, the project --no-deps -e
#   smoke     tests/test_cuda.py (stops the call on failure: no device minutes on a broken path)
#   probe     benchmarks/train_probe.py picks the fastest exact-enough precision/layout flags
#   train     attrib-bench train --time-budget TRAIN_BUDGET (skipped if RESUME holds the weights)
#   eval      top-1 of the stored (float16) weights on the original test set
#   protocol  attrib-bench run at the paper's n: gradient methods first, then perturbation
#             methods, until PROTOCOL_BUDGET; resumable (RESUME/tables.tar.gz continues it)
# $OUT gets at most 8 files: log.txt, stages.csv, probe.json, NAME.safetensors, NAME.json,
# NAME.history.csv, tables.tar.gz. `results/gpu/unpack.py OUT` turns them into the zoo entry.
# Rehearse on the CPU: tests/test_device_run.py (DEVICE=cpu, MODEL=xs-coda, tiny data and n).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1

OUT=${OUT:-/tmp/attrib-bench-out}
WORK=${WORK:-/tmp/attrib-bench-work}
DEVICE=${DEVICE:-cuda}
MODEL=${MODEL:-s-coda}
T=${T:-1000}
NAME=${NAME:-$MODEL-sq-t$T}
DATA=${DATA:-.carry/cifar10}
WHEELS=${WHEELS:-.carry/wheels}
RESUME=${RESUME:-.carry/resume}
PY=${PY:-python3}
STAGES=${STAGES:-install,smoke,probe,train,eval,protocol}
TRAIN_BUDGET=${TRAIN_BUDGET:-240}
BATCH=${BATCH:-256}
LR=${LR:-2.5e-4}
WARMUP=${WARMUP:-1}
PROBE_SECONDS=${PROBE_SECONDS:-1.5}
PROBE_ARGS=${PROBE_ARGS:-}
PROTOCOL_BUDGET=${PROTOCOL_BUDGET:-120}
CALL_SECONDS=${CALL_SECONDS:-0}  # >0: the protocol stops this many seconds after the script began,
                                 # less 20 s for packing, so a slow stage never loses the weights
N_SAMPLES=${N_SAMPLES:-}
TEST_LIMIT=${TEST_LIMIT:-}  # train's final evaluation on the first N test images (rehearsals)
EPOCHS=${EPOCHS:-}  # at most this many epochs within TRAIN_BUDGET (rehearsals: a generous budget
                    # that a loaded machine cannot exhaust, without spending all of it)
RUN_BATCH=${RUN_BATCH:-64}
GRADIENT_METHODS=${GRADIENT_METHODS:-inherent,grad,ixg,deeplift,gradcam,intgrad}
PERTURBATION_METHODS=${PERTURBATION_METHODS:-occ5,occ9,rise,lime}
METRICS=${METRICS:-localisation,pixel-removal}
FLAGS=${FLAGS:-}

mkdir -p "$OUT" "$WORK/train" "$WORK/runs" "$WORK/zoo"
exec > >(tee -a "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
AB=("$PY" -m attrib_bench)
log() { echo "[$(date -u +%H:%M:%S)] $*"; }
has() { [[ ",$STAGES," == *",$1,"* ]]; }
stage() {  # stage NAME COMMAND...: run, time and record it
    local name=$1 start rc
    shift
    start=$(date +%s)
    log "stage $name: start"
    "$@"
    rc=$?
    log "stage $name: rc=$rc, $(($(date +%s) - start)) s"
    echo "$name,$rc,$(($(date +%s) - start))" >>"$OUT/stages.csv"
    return $rc
}
pack() {  # the files that come back; called on every exit
    cp -f "$WORK/train/$MODEL-sq-t$T.safetensors" "$OUT/$NAME.safetensors" 2>/dev/null
    cp -f "$WORK/train/$MODEL-sq-t$T.json" "$OUT/$NAME.json" 2>/dev/null
    cp -f "$WORK/train/history.csv" "$OUT/$NAME.history.csv" 2>/dev/null
    tar czf "$OUT/tables.tar.gz" -C "$WORK" --exclude=cache runs 2>/dev/null
    log "out: $(cd "$OUT" && ls | tr '\n' ' ')"
}
trap pack EXIT
echo "stage,rc,seconds" >"$OUT/stages.csv"
CALL_START=$(date +%s)
log "device run: DEVICE=$DEVICE MODEL=$MODEL T=$T NAME=$NAME TRAIN_BUDGET=$TRAIN_BUDGET" \
    "BATCH=$BATCH PROTOCOL_BUDGET=$PROTOCOL_BUDGET N_SAMPLES=${N_SAMPLES:-paper}"

install() {
    if compgen -G "$WHEELS/*.whl" >/dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site "$WHEELS"/*.whl || return 1
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir -e . ||
        return 1
    "$PY" -c "import attrib_bench, captum, lime, torch; print('torch', torch.__version__,
        'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if
        torch.cuda.is_available() else '')"
}
smoke() { timeout -k 5 150 "$PY" -m pytest -q -x -p no:cacheprovider tests/test_cuda.py; }
probe() {
    local flags
    flags=$(timeout -k 5 240 "$PY" benchmarks/train_probe.py --device "$DEVICE" --model "$MODEL" \
        --temperature "$T" --batch-size "$BATCH" --seconds "$PROBE_SECONDS" \
        --budget "$TRAIN_BUDGET" --json "$OUT/probe.json" --print-flags $PROBE_ARGS) || return 1
    FLAGS=$(echo "$flags" | tail -n 1)
    log "probe chose: $FLAGS"
}
train() {
    if [[ -f "$WORK/train/$MODEL-sq-t$T.json" ]]; then  # a warm machine kept the last call's
        log "train: $WORK/train holds the exported model, not training again"
        return
    fi
    if [[ -f "$RESUME/$NAME.safetensors" ]]; then
        log "train: $RESUME/$NAME.safetensors exists, not training again"
        cp "$RESUME/$NAME.safetensors" "$WORK/train/$MODEL-sq-t$T.safetensors" &&
            cp "$RESUME/$NAME.json" "$WORK/train/$MODEL-sq-t$T.json" &&
            cp "$RESUME/$NAME.history.csv" "$WORK/train/history.csv"
        return
    fi
    # shellcheck disable=SC2086  # FLAGS holds several options
    timeout -k 10 $((${TRAIN_BUDGET%.*} + 120)) "${AB[@]}" train --model "$MODEL" \
        --temperature "$T" --time-budget "$TRAIN_BUDGET" --batch-size "$BATCH" --lr "$LR" \
        --lr-scaling sqrt --schedule cosine --warmup-epochs "$WARMUP" --eval-every 0 $FLAGS \
        --device "$DEVICE" --data-root "$DATA" --out "$WORK/train" --quiet \
        ${TEST_LIMIT:+--test-limit "$TEST_LIMIT"} ${EPOCHS:+--epochs "$EPOCHS"}
}
zoo() {  # register NAME from the exported weights (accuracy: measured in `eval`)
    "$PY" -c "import sys; from attrib_bench.models.zoo import zoo_sidecar
zoo_sidecar(sys.argv[1], sys.argv[2], sys.argv[3], accuracy=None,
            provenance='device run (results/gpu/device_run.sh), not yet unpacked')" \
        "$WORK/train/$MODEL-sq-t$T.safetensors" "$NAME" "$WORK/zoo" >/dev/null
}
evaluate() { "${AB[@]}" eval --model "$NAME" --device "$DEVICE" --data-root "$DATA"; }
sweep() {  # sweep FOLDER METHODS: one run, stopped (resumably) at the protocol's deadline
    local left=$((PROTOCOL_END - $(date +%s)))
    if ((left < 10)); then
        log "protocol: no time left for $1"
        return 0
    fi
    # shellcheck disable=SC2086
    timeout -k 10 "$left" "${AB[@]}" run --model "$NAME" --method "$2" --metric "$METRICS" \
        --device "$DEVICE" --data-root "$DATA" --out "$WORK/runs/$1" --chunk-size "$RUN_BATCH" \
        --quiet ${N_SAMPLES:+--n-samples "$N_SAMPLES"} | tail -n 40
}
protocol() {
    if [[ -f "$RESUME/tables.tar.gz" ]]; then
        tar xzf "$RESUME/tables.tar.gz" -C "$WORK" && log "protocol: resuming the carried runs"
    fi
    PROTOCOL_END=$(($(date +%s) + PROTOCOL_BUDGET))
    if ((CALL_SECONDS > 0 && CALL_START + CALL_SECONDS - 20 < PROTOCOL_END)); then
        PROTOCOL_END=$((CALL_START + CALL_SECONDS - 20))
        log "protocol: capped at $((PROTOCOL_END - $(date +%s))) s by CALL_SECONDS=$CALL_SECONDS"
    fi
    local rc=0
    sweep gradient "$GRADIENT_METHODS" || rc=$?
    sweep perturbation "$PERTURBATION_METHODS" || rc=$?  # runs even if the first one failed
    return $rc
}

if has install; then stage install install || exit 1; fi
if has smoke; then stage smoke smoke || exit 1; fi
if has probe; then stage probe probe || log "probe failed: training with '${FLAGS:-defaults}'"; fi
export ATTRIB_BENCH_ZOO="$WORK/zoo"
if has train; then stage train train || exit 1; fi
stage zoo zoo || exit 1
pack  # the weights come back even if a later stage is killed
if has eval; then stage eval evaluate; fi
if has protocol; then stage protocol protocol; fi
log "device run done"
