#!/usr/bin/env bash
# The GPU figures of benchmarks/RESULTS.md in one run: training throughput (local backend against a
# plain padded transformers loop) and evaluation throughput (the local greedy sampler against
# model.generate), bf16, then the sampler in float32 against generate for identical outputs.
#
#   bash benchmarks/gpu_run.sh [OUT_DIR]          # on a machine with one CUDA GPU, from the repo root
#   PRESET=tiny bash benchmarks/gpu_run.sh /tmp/o # the same steps on CPU with a tiny model (dry run)
#   ONLY="train eval_bf16" bash benchmarks/gpu_run.sh # some of the steps
#
# With WHEELS=DIR, the wheels there are installed into /tmp/site first, and the repository itself is put
# on the path (a GPU machine of this workplace has torch but neither pydantic nor this transformers).
#
# Each step has its own time limit and writes one JSON line to OUT_DIR; a failed step does not stop
# the ones after it. Needs evsys importable (an install, or PYTHONPATH) and its `local` extra.
set -u
out=${1:-${OUT:-/tmp/evsys-gpu}}
preset=${PRESET:-0.5b}
py=${PYTHON:-python3}
mkdir -p "$out"
if [ -n "${WHEELS:-}" ]; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
    mkdir -p /tmp/src
    for pkg in evsys_build evsys_sdk; do ln -sfn "$PWD/$pkg" /tmp/src/$pkg; done
    ln -sfn "$PWD/rules" /tmp/src/evsys_rules
    export PYTHONPATH=/tmp/site:/tmp/src${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

step() {  # step NAME SECONDS ARGS...: run one benchmark, keep its JSON line and its log
    local name=$1 limit=$2
    shift 2
    if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
    echo "== $name: $*"
    local started=$SECONDS
    timeout "$limit" "$py" "$@" --json >"$out/$name.log" 2>&1
    local rc=$?
    grep '^{' "$out/$name.log" | tail -1 >"$out/$name.json"
    echo "   rc=$rc in $((SECONDS - started)) s: $(cat "$out/$name.json")"
    [ $rc -eq 0 ] || tail -5 "$out/$name.log"
}

"$py" - <<'EOF'
import torch, transformers
name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
print(f"torch {torch.__version__}  transformers {transformers.__version__}  device {name}")
EOF
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null

if [ "$preset" = tiny ]; then
    step train 300 benchmarks/train_throughput.py --preset tiny --steps 2 --warmup 1 --batch-size 4 --compile both --profile 1
    step eval_bf16 300 benchmarks/eval_throughput.py --preset tiny --prompts 70 --max-tokens 24 --decode static
    step eval_fp32 300 benchmarks/eval_throughput.py --preset tiny --prompts 70 --max-tokens 24 --decode static --dtype float32
else
    TORCH_LOGS="recompiles,graph_breaks" step train 300 benchmarks/train_throughput.py --preset 0.5b --device cuda --steps 12 --warmup 3 --batch-size 16 --min-len 50 --max-len 1000 --compile both --profile 2
    step eval_bf16 200 benchmarks/eval_throughput.py --preset 0.5b --device cuda --prompts 128 --max-tokens 128 --repeat 3 --diagnose
    step eval_fp32 150 benchmarks/eval_throughput.py --preset 0.5b --device cuda --prompts 64 --max-tokens 64 --dtype float32
    # the decode step in torch's own CUDA graph trees (reduce-overhead), for comparison with our capture
    step eval_trees 200 benchmarks/eval_throughput.py --preset 0.5b --device cuda --prompts 128 --max-tokens 128 --decode static-trees --diagnose
fi
echo "== done in $SECONDS s"
