#!/usr/bin/env bash
# Prepares gpu_wheels/ (git-ignored): the packages scripts/gpu_check.sh installs, offline, on the
# GPU machine, whose image lacks them (docs/gpu.md). Run here, where pip reaches PyPI:
#
#     bash scripts/gpu_wheels.sh [DEST]        # DEST defaults to gpu_wheels
#
# The GPU image's Python version is not pinned anywhere we control (it was 3.12 when last read),
# so every wheel must be pure Python (py3-none-any) and install on any Python 3. One exception,
# pydantic-core (compiled; DeepSpeed needs pydantic), is carried for CPython 3.11-3.13 and pip
# picks the one that matches; on another Python, DeepSpeed does not import and its test skips.
#
# What grpo's tested paths import beyond the image: nothing (torch, transformers, safetensors;
# grpo imports datasets, gguf, math-verify, vllm only in modules those tests never load). What
# DeepSpeed 0.19.8 needs beyond the image: hjson, pydantic (annotated-types, typing-inspection,
# typing-extensions >= 4.16). flash-attn is not carried: a CUDA build of it is far over 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-gpu_wheels}
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
LIMIT_MIB=48  # the working tree and everything carried travel together, at most 64 MiB

PURE=(deepspeed==0.19.8 hjson==3.1.0 pydantic==2.14.4 annotated-types==0.8.0
      typing-inspection==0.4.5 typing-extensions==4.16.0)
COMPILED=pydantic-core==2.50.5  # pydantic 2.14.4 pins exactly this version

rm -rf "$DEST"
mkdir -p "$DEST"
# DeepSpeed publishes only a source archive: build it into a wheel, ops not compiled (we use
# torch's AdamW; DeepSpeed compiles an op just in time only when one is asked for).
DS_BUILD_OPS=0 "$PY" -m pip wheel --no-deps --quiet -w "$DEST" "${PURE[0]}"
"$PY" -m pip download --no-deps --only-binary=:all: --quiet -d "$DEST" "${PURE[@]:1}"
for v in 3.11 3.12 3.13; do
    "$PY" -m pip download --no-deps --only-binary=:all: --quiet -d "$DEST" \
        --python-version "$v" --implementation cp --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 "$COMPILED"
done

status=0
for wheel in "$DEST"/*.whl; do
    name=$(basename "$wheel")
    case "$name" in
        *-py3-none-any.whl) ;;
        pydantic_core-*-manylinux*_x86_64.whl) ;;
        *) echo "error: $name is neither pure Python nor the carried pydantic-core"; status=1 ;;
    esac
done
size_kib=$(du -sk "$DEST" | cut -f1)
ls -l "$DEST"
echo "$DEST: $((size_kib / 1024)) MiB in $(ls "$DEST"/*.whl | wc -l) wheels (limit $LIMIT_MIB MiB)"
if [ "$size_kib" -gt $((LIMIT_MIB * 1024)) ]; then
    echo "error: $DEST is over $LIMIT_MIB MiB"; status=1
fi
exit $status
