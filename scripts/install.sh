#!/usr/bin/env bash
# Create .venv and install lokal into it. `scripts/install.sh test` adds the test dependencies.
#
# llama-cpp-python is compiled from its PyPI source, patched by scripts/llama_cpp_patch.py so that
# batching never changes results while prompts get llama.cpp's fast kernels (docs/engine.md,
# "Results that do not depend on load"): the engine picks ggml's CPU kernels per llama_decode,
# prompt mode (llamafile sgemm, tiled matmul and tiled flash attention, for every row count) or
# decode mode (per-row kernels); the wheel's version gets a "+lokal.N" label, which is how lokal
# knows. The built wheel is kept in $LOKAL_WHEEL_CACHE (default ~/.cache/lokal/wheels) so the
# 10-20 minute compile happens once per machine.
#
# With an NVIDIA GPU (nvidia-smi) the build adds llama.cpp's CUDA backend for the GPUs' compute
# capabilities, in its own cache entry; LOKAL_GPU=cpu|cuda|auto overrides (scripts/gpu_build.sh,
# docs/gpu.md). `scripts/install.sh --print-build` prints the backend, flags and cache, and exits.
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMA_CPP_PYTHON=0.3.36
BUILD=lokal.2  # bump when FLAGS or the patch change
FLAGS="-DGGML_LLAMAFILE=ON"
CACHE="${LOKAL_WHEEL_CACHE:-$HOME/.cache/lokal/wheels}"
WHEELS="$CACHE/$BUILD"
EXTRAS="bench"  # `lokal bench run --html` works after the README's quick start
if [ "${1:-}" = "test" ]; then EXTRAS="test,bench,ray,speech,convert"; fi
if [ -n "${LOKAL_EXTRAS:-}" ]; then EXTRAS="$EXTRAS,$LOKAL_EXTRAS"; fi  # e.g. LOKAL_EXTRAS=convert
# llama.cpp's converters (convert_hf_to_gguf.py, convert_lora_to_gguf.py, with their conversion/ and gguf-py/)
# from the llama-cpp-python sdist, for the convert extra (lokal.workshop.converter finds them here).
CONVERTERS="${LOKAL_CONVERTER_CACHE:-$HOME/.cache/lokal/converters}/llama-cpp-python-$LLAMA_CPP_PYTHON"

source scripts/gpu_build.sh
gpu_backend  # BACKEND, CUDA_ARCHS, NVCC, CUDA_NOTE
if [ "$BACKEND" = cuda ]; then
  FLAGS="$FLAGS -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCHS"
  WHEELS="$CACHE/$BUILD-cuda-sm${CUDA_ARCHS//;/-sm}"
fi
if [ "${1:-}" = "--print-build" ]; then
  echo "backend: $BACKEND"
  echo "flags: $FLAGS"
  echo "wheels: $WHEELS"
  if [ "$BACKEND" = cuda ]; then echo "nvcc: ${NVCC:-CUDA $CUDA_PYPI from PyPI, into $CACHE/cuda-$CUDA_PYPI}"; fi
  if [ -n "$CUDA_NOTE" ]; then echo "note: $CUDA_NOTE"; fi
  exit 0
fi
if [ -n "$CUDA_NOTE" ]; then echo "NOTE: building for the CPU only: $CUDA_NOTE" >&2; fi

python3 -m venv .venv
shopt -s nullglob
wheel=("$WHEELS"/llama_cpp_python-"$LLAMA_CPP_PYTHON"*.whl)
if [ ${#wheel[@]} -eq 0 ]; then
  echo "building llama-cpp-python $LLAMA_CPP_PYTHON+$BUILD with $FLAGS (once per machine)..."
  mkdir -p "$WHEELS"
  src="$(mktemp -d)"
  trap 'rm -rf "$src"' EXIT
  sdist="$src/llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz"
  .venv/bin/pip download --quiet --no-deps --no-binary :all: -d "$src" "llama-cpp-python==$LLAMA_CPP_PYTHON"
  tar -xzf "$src"/llama_cpp_python-"$LLAMA_CPP_PYTHON".tar.gz -C "$src"
  python3 scripts/llama_cpp_patch.py "$src/llama_cpp_python-$LLAMA_CPP_PYTHON" "$BUILD"
  toolchain=""
  if [ "$BACKEND" = cuda ]; then toolchain="$(cuda_toolchain_args "$CACHE/cuda-$CUDA_PYPI" .venv/bin/pip)"; fi
  CMAKE_ARGS="$FLAGS $toolchain ${CMAKE_ARGS:-}" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    .venv/bin/pip wheel --no-cache-dir --no-deps -w "$WHEELS" "$src/llama_cpp_python-$LLAMA_CPP_PYTHON"
  wheel=("$WHEELS"/llama_cpp_python-"$LLAMA_CPP_PYTHON"*.whl)
fi
.venv/bin/pip install --force-reinstall --no-deps "${wheel[0]}"
.venv/bin/pip install -e ".[$EXTRAS]"

# The converters: from the sdist just built, else from pip's download (its cache makes that seconds).
if [[ ",$EXTRAS," == *,convert,* ]] && [ ! -f "$CONVERTERS/convert_hf_to_gguf.py" ]; then
  echo "extracting llama.cpp's converters into $CONVERTERS..."
  PYTHON=.venv/bin/python scripts/extract_converters.sh "$LLAMA_CPP_PYTHON" "$CONVERTERS" "${sdist:-}"
fi
# instructor 1.17 caps jiter below 0.15 while openai 3.x needs 0.16+; it runs fine on the newer one,
# so it comes without its pins (its other dependencies are in the test extra).
if [ "${1:-}" = "test" ]; then .venv/bin/pip install --no-deps "instructor==1.17.0"; fi

# The web UI tests drive the system's Chromium through Playwright (never `playwright install`).
if [ "${1:-}" = "test" ] && [ ! -x /usr/bin/chromium ]; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's chromium for the web UI tests..."
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium
  else
    echo "NOTE: /usr/bin/chromium is missing and apt-get is not available: install Chromium at" \
         "/usr/bin/chromium yourself, or the web UI tests (tests/integration/ui) will fail." >&2
  fi
fi
