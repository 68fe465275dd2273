#!/usr/bin/env bash
# Fill .gpu-kit/ (git-ignored) with what the GPU machine needs and cannot download: it has no package
# registry. Run here, where PyPI answers; the kit travels to the device as one carried path
# (benchmarks/gpu/README.md). Prints the kit's size: the whole working tree that travels must stay
# under 64 MiB.
#
#   .gpu-kit/llama_cpp_python-<version>.tar.gz   the sdist, patched by scripts/llama_cpp_patch.py, without
#                                                models, docs, tests, examples and unused ggml backends
#   .gpu-kit/wheels/*.whl, requirements.txt      lokal's runtime dependencies (pinned to this .venv's
#                                                versions), binary ones for each KIT_PYTHONS version
#   .gpu-kit/models/NAME.head.gz                 the GGUF header of each KIT_LIKE catalog model
#                                                (benchmarks/gpu/like_model.py: random weights there)
#
# Env: KIT (default .gpu-kit), KIT_PYTHONS (default "3.12": the device's python3, /work/.library/device/KINDS.md),
# KIT_LIKE (default "qwen2.5-coder:0.5b", the largest catalog model; "" for none), KIT_STORE (the lokal
# home they are pulled into if missing; default $LOKAL_TEST_HOME or .test-home).
set -euo pipefail
cd "$(dirname "$0")/../.."

KIT="${KIT:-.gpu-kit}"
KIT_PYTHONS="${KIT_PYTHONS:-3.12}"
KIT_LIKE="${KIT_LIKE-qwen2.5-coder:0.5b}"
KIT_STORE="${KIT_STORE:-${LOKAL_TEST_HOME:-.test-home}}"
PIP="${PIP:-.venv/bin/pip}"
PYTHON="${PYTHON:-.venv/bin/python}"
# The version and build label come from scripts/install.sh, the one place they are set.
LLAMA_CPP_PYTHON="$(sed -n 's/^LLAMA_CPP_PYTHON=\([^ ]*\).*/\1/p' scripts/install.sh)"
BUILD="$(sed -n 's/^BUILD=\([^ ]*\).*/\1/p' scripts/install.sh)"
: "${LLAMA_CPP_PYTHON:?not found in scripts/install.sh}" "${BUILD:?not found in scripts/install.sh}"

# What lokal imports at run time (pyproject.toml's dependencies), the peers' servers (llama_cpp.server
# for the bench's llama-cpp-python target) and the test runner's plugins. Pure Python unless listed in
# BINARY. numpy, PyYAML, MarkupSafe, psutil, uvloop, tqdm, huggingface_hub (1.x: 2.x needs httpx2) and
# torch's stack are on the device already (/work/.library/device/KINDS.md).
PURE=(fastapi starlette uvicorn pydantic pydantic-settings python-dotenv typing-inspection annotated-types
      typing_extensions typer click rich shellingham httpx httpcore h11 anyio sniffio idna certifi jinja2
      gguf jsonschema jsonschema-specifications referencing attrs prometheus_client nvidia-ml-py
      annotated-doc opentelemetry-api diskcache sse-starlette starlette-context
      pytest-asyncio pytest-timeout)
BINARY=(pydantic_core rpds-py httptools llguidance)

pinned() {  # NAME -> NAME==VERSION as installed in this .venv
  local version
  version="$("$PYTHON" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$1")"
  echo "$1==$version"
}

rm -rf "$KIT"
mkdir -p "$KIT/wheels"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "== llama-cpp-python $LLAMA_CPP_PYTHON sdist, patched ($BUILD) and trimmed"
"$PIP" download --quiet --no-deps --no-binary :all: -d "$work" "llama-cpp-python==$LLAMA_CPP_PYTHON"
tar -xzf "$work/llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz" -C "$work"
src="$work/llama_cpp_python-$LLAMA_CPP_PYTHON"
"$PYTHON" scripts/llama_cpp_patch.py "$src" "$BUILD"
vendored="$src/vendor/llama.cpp"
# Nothing below is read by a build with LLAMA_BUILD_TESTS/EXAMPLES off and GGML_CUDA (run.sh).
rm -rf "$src"/{.git,docs,examples,tests,docker} "$vendored"/.git \
       "$vendored"/{models,docs,media,.github,.devops,benches,tests,examples,pocs,conversion,gguf-py,skills,ci} \
       "$vendored"/tools/ui/{src,tests,static,package-lock.json} "$vendored"/tools/server/tests \
       "$vendored"/ggml/src/ggml-{sycl,vulkan,opencl,metal,hexagon,cann,webgpu,openvino,et,virtgpu,zdnn,zendnn}
tar -C "$work" -czf "$KIT/llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz" "llama_cpp_python-$LLAMA_CPP_PYTHON"

echo "== wheels for python ${KIT_PYTHONS}"
reqs=()
for name in "${PURE[@]}" "${BINARY[@]}"; do reqs+=("$(pinned "$name")"); done
printf '%s\n' "${reqs[@]}" >"$KIT/wheels/requirements.txt"
pure_reqs=("${reqs[@]:0:${#PURE[@]}}")
binary_reqs=("${reqs[@]:${#PURE[@]}}")
"$PIP" download --quiet --no-deps --only-binary :all: -d "$KIT/wheels" "${pure_reqs[@]}"
platforms=(--platform manylinux2014_x86_64)  # pip matches manylinux_2_N exactly: offer each N the device's glibc runs
for n in $(seq 17 39); do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
for py in $KIT_PYTHONS; do
  "$PIP" download --quiet --no-deps --only-binary :all: -d "$KIT/wheels" --python-version "$py" \
    --implementation cp "${platforms[@]}" "${binary_reqs[@]}"
done

echo "== headers of ${KIT_LIKE:-no catalog model}"
mkdir -p "$KIT/models"
for name in $KIT_LIKE; do
  LOKAL_HOME="$KIT_STORE" "$PYTHON" -m lokal.cli.main pull "$name" >/dev/null
  gguf="$("$PYTHON" -c 'import sys; from pathlib import Path; from lokal.store.model_store import ModelStore
print(ModelStore(Path(sys.argv[1])).gguf_path(sys.argv[2]))' "$KIT_STORE" "$name")"
  "$PYTHON" benchmarks/gpu/like_model.py head "$gguf" "$KIT/models/${name//:/-}.head.gz"
done

echo "== kit"
du -ah "$KIT" | sort -h | tail -8
kib="$(du -sk "$KIT" | cut -f1)"
echo "kit: $((kib / 1024)) MiB in $KIT (with the rest of the working tree it must stay under 64 MiB)"
