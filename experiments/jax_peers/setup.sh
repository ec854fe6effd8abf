#!/usr/bin/env bash
# The JAX peers' venvs for experiments/bench_jax_peers.py (each its own: tunix wants safetensors < 0.8,
# EasyDeL pins jax 0.9.2). Idempotent. VENV_TUNIX (default /tmp/venv_tunix): google-tunix 0.1.7 on
# rlhf_jax's jax 0.10.2 and flax 0.12.8, and chex (its GRPO reward function scores with rlhf_jax's RewardModel,
# imported from the repository). VENV_EASYDEL (default /tmp/venv_easydel): EasyDeL 0.3.0, which pins jax 0.9.2
# and flax 0.12.3 and loads Hugging Face weights through torch.
set -euo pipefail
VENV_TUNIX=${VENV_TUNIX:-/tmp/venv_tunix}
VENV_EASYDEL=${VENV_EASYDEL:-/tmp/venv_easydel}
if [ ! -x "$VENV_TUNIX/bin/python" ]; then
  python3.11 -m venv "$VENV_TUNIX"
  "$VENV_TUNIX/bin/pip" install -q google-tunix==0.1.7 jax==0.10.2 jaxlib==0.10.2 flax==0.12.8
fi
"$VENV_TUNIX/bin/pip" install -q chex==0.1.92
"$VENV_TUNIX/bin/python" -c "import importlib.metadata as m; print('tunix venv:', *(p + ' ' + m.version(p) for p in ('google-tunix', 'jax', 'flax')))"
if [ ! -x "$VENV_EASYDEL/bin/python" ]; then
  python3.11 -m venv "$VENV_EASYDEL"
  "$VENV_EASYDEL/bin/pip" install -q easydel==0.3.0 torch==2.13.0 pillow  # pillow: imported, not declared
fi
"$VENV_EASYDEL/bin/python" -c "import importlib.metadata as m; print('EasyDeL venv:', *(p + ' ' + m.version(p) for p in ('easydel', 'jax', 'flax', 'torch')))"
