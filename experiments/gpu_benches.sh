#!/usr/bin/env bash
# The side-by-side benches on a lent GPU machine (the `device` tool: JAX 0.11 + CUDA and torch there, no
# internet), against the torch peers and google-tunix in the same call, on random weights of the real shapes.
#
#   bash experiments/gpu_benches.sh prepare        # here: fills .gpu/ (git-ignored; ~10 MB): peer wheels, the
#                                                  #   models' configs and tokenizers, the snippets, the peer scripts
#   bash experiments/gpu_benches.sh run [NAME...]  # there (carry .gpu): one JSON line per bench into $OUT;
#                                                  #   NAMEs: generate sft reward ppo tunix (default: all, in order)
#
# tunix (experiments/bench_jax_peers.py --peer tunix: sampling at 16 and 64, a DPO step, a GRPO iteration) runs
# on the machine's own jax, with its wheels and the few packages it imports that the machine lacks on a
# PYTHONPATH of its own; both processes share the GPU, so each may take 40% of its memory. EasyDeL is not
# here: `import easydel` (0.3.0) imports ray, whose wheel alone (73 MB) is over the 64 MiB a call carries.
set -uo pipefail
G=.gpu
case "${1:-}" in
prepare)
  mkdir -p $G/whl_rlhf $G/whl16 $G/whl12 $G/whl_tunix $G/like $G/cache/assets
  pip3 download -q --no-deps -d $G/whl_rlhf ml_collections==1.1.0  # the configs' (the machine lacks it)
  pip3 download -q --no-deps -d $G/whl16 trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
  pip3 download -q --no-deps -d $G/whl12 trl==1.12.0
  # tunix and what its sampler, llama3 model, DPOTrainer and GRPOLearner import that the machine lacks (all
  # pure Python; found by importing them on that machine's package set: jax 0.11.2, flax, Python 3.12)
  pip3 download -q --no-deps -d $G/whl_tunix google-tunix==0.1.7 google-metrax==0.2.4 clu==0.0.12 \
    tensorboardX==2.6.5 perfetto==0.59.1
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
  pip_target /tmp/site_rlhf $G/whl_rlhf/*.whl && pip_target /tmp/site_tunix $G/whl_tunix/*.whl || exit 1
  printf '#!/bin/sh\nPYTHONPATH=/tmp/site16 exec python3 "$@"\n' > /tmp/py16
  printf '#!/bin/sh\nPYTHONPATH=/tmp/site12:/tmp/site16 exec python3 "$@"\n' > /tmp/py12
  printf '#!/bin/sh\nPYTHONPATH=/tmp/site_tunix:${PYTHONPATH:-} exec python3 "$@"\n' > /tmp/py_tunix
  chmod +x /tmp/py16 /tmp/py12 /tmp/py_tunix
  A=/tmp/peer_assets_random; mkdir -p $A  # not /tmp/peer_assets: the real weights of setup.sh live there
  python3 experiments/random_weights.py --like $G/like/smollm2-135m-instruct --out $A/smollm2-135m ${LAYERS:+--layers $LAYERS}
  python3 experiments/random_weights.py --like $G/like/minilm-l6 --out $A/minilm ${LAYERS:+--layers $LAYERS}
  cp $G/cache/assets/rotten-tomatoes/*.csv.bz2 $A/
  export PYTHONPATH=$PWD:/tmp/site_rlhf PYTHONUNBUFFERED=1 RLHF_JAX_CACHE=$PWD/$G/cache RLHF_JAX_PEERS=$PWD/$G/peers PEER_ASSETS=$A
  export JAX_DEFAULT_MATMUL_PRECISION=highest  # float32 products in float32, as torch's default (no TF32)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/gpu.txt"
  python3 -c "import jax, flax, torch, transformers; print(jax.__version__, flax.__version__, torch.__version__, transformers.__version__, jax.devices())" | tee -a "$OUT/gpu.txt"
  cd experiments
  shift; names=" ${*:-generate sft reward ppo tunix} "
  run() { name=$1; limit=$2; shift 2; [[ $names == *" $name "* ]] || return 0
          timeout "$limit" python3 "$@" > "$OUT/$name.log" 2>&1;
          echo "$name rc=$?"; grep '^{' "$OUT/$name.log" | tail -1 > "$OUT/$name.json"; }
  run generate 100 bench_generate.py --model $A/smollm2-135m --batches 16 64 --repeats 5 ${NO_PEER:+--no-peer}
  run sft 130 bench_sft.py --model $A/smollm2-135m --peer-python /tmp/py16 --steps 20 --skip 5 --passes ${PASSES:-3}
  run reward 120 bench_reward.py --model $A/minilm --peer-python /tmp/py16 --passes ${PASSES:-3}
  run ppo 180 bench_ppo.py --policy $A/smollm2-135m --peer-python /tmp/py12 --passes ${PASSES:-3}
  XLA_PYTHON_CLIENT_MEM_FRACTION=.4 run tunix 240 bench_jax_peers.py --peer tunix --peer-python /tmp/py_tunix \
    --model $A/smollm2-135m --reward-model $A/minilm --passes ${PASSES:-3} ${TUNIX_ARGS:---pass-warmup 1}
  ;;
*) echo "usage: bash experiments/gpu_benches.sh prepare|run" >&2; exit 2 ;;
esac
