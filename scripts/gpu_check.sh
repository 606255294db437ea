#!/usr/bin/env bash
# The GPU check, one command for a GPU machine without network (docs/gpu.md):
#
#     bash scripts/gpu_check.sh
#
# 1. stops at once, installing nothing, when torch sees no CUDA device (exit 2);
# 2. installs what was carried, offline: gpu_wheels/ (scripts/gpu_wheels.sh); grpo is imported
#    from this checkout (PYTHONPATH);
# 3. prints the GPU, driver, Python and library versions;
# 4. runs `pytest -m gpu tests/test_gpu.py` (about 3 minutes on an H200);
# 5. prints the throughput table of benchmarks/gpu_throughput.py (about 1 minute).
# Each part has its own time bound (below; 8 minutes together), a failed or timed-out part does
# not stop the next, and the exit status is 1 when any part failed. Everything lands in $OUT
# (the folder the device tool brings back) when it is set, else in outputs/gpu_check/:
# check.log (all output), pytest.log, junit.xml, measured.txt (each test's measured errors),
# throughput.md and summary.md.
#
# PYTHON: the interpreter (default python3, the GPU image's); GPU_WHEELS: the carried folder.
set -uo pipefail
cd "$(dirname "$0")/.."

export PY=${PYTHON:-python3}
export WHEELS=${GPU_WHEELS:-gpu_wheels}
export OUT_DIR=${OUT:-outputs/gpu_check}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore PIP_NO_INPUT=1
# grpo from this checkout
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
INSTALL_S=60 VERSIONS_S=30 PYTEST_S=270 THROUGHPUT_S=120

SUMMARY=()
FAILED=0

# part NAME SECONDS SCRIPT: runs SCRIPT in bash under its time bound and records the outcome.
part() {
    local name=$1 limit=$2 script=$3 start=$SECONDS rc status
    echo
    echo "=== $name (at most ${limit}s) ==="
    timeout -k 15 "$limit" bash -c "set -euo pipefail; $script"
    rc=$?
    case $rc in
        0) status=ok ;;
        124|137) status="timed out after ${limit}s"; FAILED=1 ;;
        *) status="failed (exit $rc)"; FAILED=1 ;;
    esac
    SUMMARY+=("| $name | $status | $((SECONDS - start)) |")
}

INSTALL='
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    ls "$WHEELS"
    # Resolved against what the image has: only what is missing (or too old) is installed, and
    # pip picks the pydantic-core built for this Python.
    names=$(ls "$WHEELS"/*.whl | xargs -n1 basename | sed "s/-.*//" | sort -u)
    "$PY" -m pip install --no-index --no-cache-dir --find-links "$WHEELS" $names
else
    echo "no wheels in $WHEELS/ (scripts/gpu_wheels.sh makes them): the DeepSpeed tests will skip"
fi
# grpo itself is not installed: it is on PYTHONPATH (an editable install runs setup.py develop,
# which asks the network for setuptools and fails offline). Check that it imports from here.
"$PY" -c "import grpo, sys; sys.exit(grpo.__file__.startswith(\"$PWD/\") is False)"
'

VERSIONS='
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
"$PY" - <<EOF
import importlib, platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| CUDA",
      torch.version.cuda, "| cuDNN", torch.backends.cudnn.version(), "| fp32 matmuls",
      torch.get_float32_matmul_precision())  # the fp32 tests assume "highest" (no TF32)
props = torch.cuda.get_device_properties(0)
print("device", props.name, "| capability", f"{props.major}.{props.minor}", "|",
      props.multi_processor_count, "SMs |", round(props.total_memory / 2**30, 1), "GiB")
for name in ("transformers", "safetensors", "accelerate", "deepspeed", "flash_attn", "grpo"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "?"))
    except Exception as err:
        print(name, "not importable:", type(err).__name__, err)
EOF
'

PYTEST='
timeout_opt=""
if "$PY" -c "import pytest_timeout" 2>/dev/null; then timeout_opt="--timeout=150"; fi
"$PY" -m pytest -m gpu tests/test_gpu.py -v -s -rs -p no:cacheprovider $timeout_opt \
    --junitxml="$OUT_DIR/junit.xml" 2>&1 | tee "$OUT_DIR/pytest.log"
'

THROUGHPUT='"$PY" benchmarks/gpu_throughput.py --out "$OUT_DIR/throughput.md"'

main() {
    echo "gpu_check: $(date -u +%Y-%m-%dT%H:%M:%SZ), $(hostname), output in $OUT_DIR"
    if ! timeout 120 "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"
    then
        echo "no CUDA device visible to $PY (torch.cuda.is_available() is False, or torch is"
        echo "missing): nothing was installed and nothing checked. This script is for the GPU"
        echo "machine; see docs/gpu.md. (pytest -m gpu skips every test here, with the reason.)"
        return 2
    fi
    part "install carried wheels and grpo" $INSTALL_S "$INSTALL"
    part "versions" $VERSIONS_S "$VERSIONS"
    part "pytest -m gpu" $PYTEST_S "$PYTEST"
    grep -o "measured .*" "$OUT_DIR/pytest.log" > "$OUT_DIR/measured.txt" 2>/dev/null || true
    part "throughput" $THROUGHPUT_S "$THROUGHPUT"
    {
        echo "| part | result | seconds |"
        echo "| --- | --- | ---: |"
        printf '%s\n' "${SUMMARY[@]}"
    } > "$OUT_DIR/summary.md"
    echo
    echo "=== summary ==="
    cat "$OUT_DIR/summary.md"
    echo
    echo "measured errors (tests/test_gpu.py):"
    cat "$OUT_DIR/measured.txt" 2>/dev/null || true
    return $FAILED
}

mkdir -p "$OUT_DIR"
main 2>&1 | tee "$OUT_DIR/check.log"
exit "${PIPESTATUS[0]}"
