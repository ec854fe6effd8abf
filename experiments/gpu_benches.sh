#!/usr/bin/env bash
# The four side-by-side benches on a lent GPU machine (the `device` tool: JAX 0.11 + CUDA and torch there, no
# internet), against the torch peers in the same call, on random weights of the real shapes.
#
#   bash experiments/gpu_benches.sh prepare     # here: fills .gpu/ (git-ignored; ~8 MB): peer wheels, the
#                                               #   models' configs and tokenizers, the snippets, the peer scripts
#   bash experiments/gpu_benches.sh run         # there (carry .gpu): one JSON line per bench into $OUT
set -uo pipefail
G=.gpu
case "${1:-}" in
prepare)
  mkdir -p $G/whl16 $G/whl12 $G/like $G/cache/assets
  pip3 download -q --no-deps -d $G/whl16 trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
  pip3 download -q --no-deps -d $G/whl12 trl==1.12.0
  for m in smollm2-135m-instruct minilm-l6; do
    mkdir -p $G/like/$m
    src=$(python3 -c "from rlhf_jax.models.pretrained import resolve_source; print(resolve_source('$m'))")
    find "$src" -maxdepth 1 -type f ! -name '*.safetensors' ! -name '*.gguf' -exec cp {} $G/like/$m/ \;
  done
  cp -a "$(dirname "$(python3 -c "from rlhf_jax import assets; print(assets.asset_path('rotten-tomatoes'))")")" \
    $G/cache/assets/
  cp -a ../shared/peers $G/peers
  du -sh $G ;;
run)
  OUT=${OUT:-/tmp/gpu_benches}; mkdir -p "$OUT"
  pip_target() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$1" "${@:2}"; }
  pip_target /tmp/site16 $G/whl16/*.whl && pip_target /tmp/site12 $G/whl12/*.whl || exit 1
  printf '#!/bin/sh\nPYTHONPATH=/tmp/site16 exec python3 "$@"\n' > /tmp/py16
  printf '#!/bin/sh\nPYTHONPATH=/tmp/site12:/tmp/site16 exec python3 "$@"\n' > /tmp/py12
  chmod +x /tmp/py16 /tmp/py12
  A=/tmp/peer_assets_random; mkdir -p $A  # not /tmp/peer_assets: the real weights of setup.sh live there
  python3 experiments/random_weights.py --like $G/like/smollm2-135m-instruct --out $A/smollm2-135m ${LAYERS:+--layers $LAYERS}
  python3 experiments/random_weights.py --like $G/like/minilm-l6 --out $A/minilm ${LAYERS:+--layers $LAYERS}
  cp $G/cache/assets/rotten-tomatoes/*.csv.bz2 $A/
  export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 RLHF_JAX_CACHE=$PWD/$G/cache RLHF_JAX_PEERS=$PWD/$G/peers PEER_ASSETS=$A
  export JAX_DEFAULT_MATMUL_PRECISION=highest  # float32 products in float32, as torch's default (no TF32)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/gpu.txt"
  python3 -c "import jax, flax, torch, transformers; print(jax.__version__, flax.__version__, torch.__version__, transformers.__version__, jax.devices())" | tee -a "$OUT/gpu.txt"
  cd experiments
  run() { name=$1; limit=$2; shift 2; timeout "$limit" python3 "$@" > "$OUT/$name.log" 2>&1;
          echo "$name rc=$?"; grep '^{' "$OUT/$name.log" | tail -1 > "$OUT/$name.json"; }
  run generate 100 bench_generate.py --model $A/smollm2-135m --batches 16 64 --repeats 5 ${NO_PEER:+--no-peer}
  run sft 130 bench_sft.py --model $A/smollm2-135m --peer-python /tmp/py16 --steps 20 --skip 5 --passes ${PASSES:-3}
  run reward 120 bench_reward.py --model $A/minilm --peer-python /tmp/py16 --passes ${PASSES:-3}
  run ppo 180 bench_ppo.py --policy $A/smollm2-135m --peer-python /tmp/py12 --passes ${PASSES:-3}
  ;;
*) echo "usage: bash experiments/gpu_benches.sh prepare|run" >&2; exit 2 ;;
esac
