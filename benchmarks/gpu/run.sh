#!/usr/bin/env bash
# Runs ON the GPU machine, in the repository root, with .gpu-kit/ from benchmarks/gpu/prepare.sh
# carried along (benchmarks/gpu/README.md gives the one device call). Stages, each timed, each with its
# own log and a time limit, so that a run cut short still returns what it got:
#
#   info    nvidia-smi, nvcc, python, disk -> summary
#   deps    the kit's wheels (offline), llama-cpp-python's Python package and lokal into $WORK/site, put
#           first on PYTHONPATH over the image's python3 (torch's venv: a venv of its own would not see
#           its numpy, pytest, nvidia-ml-py)
#   build   llama.cpp from the kit's patched source, with CUDA for this GPU's compute capability only:
#           one CMake build gives llama-server and the shared libraries, which go into
#           $WORK/site/llama_cpp/lib (llama-cpp-python installed without its own build: the same libraries)
#   model   benchmarks/gpu/make_model.py: a random Llama 3.1 8B (F16, written while the build runs),
#           quantized to Q4_K_M by llama.cpp's quantizer, imported into a lokal store
#   tests   pytest -m gpu tests/gpu (LOKAL_GPU_MODEL = the model)
#   bench   benchmarks/gpu/bench_peer.py: llama-server (CUDA) started on the model, `lokal bench run`
#           against it at BENCH_CONCURRENCY; lokal joins when its `serve` can offload (--gpu-layers),
#           else llama-server is measured alone and the bench log says so
#   catalog the same on LIKE (the largest catalog model: its real header from the kit, random weights;
#           benchmarks/gpu/like_model.py), when the budget has room left
#
# Results in $OUT (at most 8 files come back): summary.txt, tests.txt, bench.json, bench.txt,
# bench-catalog.json, bench-catalog.txt, logs.tar.gz (every stage's log, the servers' logs, the build
# log), refreshed after each stage.
#
# Env (defaults in brackets):
#   OUT [/tmp/gpu-out], KIT [.gpu-kit], WORK [/tmp/lokal-gpu: packages, build, models; a warm machine
#   keeps it between calls], PYTHON [python3], BUILD_DIR [$WORK/build], JOBS [nproc], BUDGET_S [540:
#   a stage with under 20 s of it left is not started; each stage is killed at its end]
#   SKIP_INFO, SKIP_DEPS, SKIP_BUILD, SKIP_MODEL, SKIP_TESTS, SKIP_BENCH, SKIP_CATALOG=1; DRY_RUN=1 prints each
#   stage's commands and runs nothing
#   CUDA_ARCH [nvidia-smi's compute capability], BUILD_TARGET [llama-server; e.g. ggml-base rehearses
#   the configure where there is no GPU], CUBLAS_LIB [a folder with libcublas.so.N when the toolkit
#   has none: found in pip's nvidia/], CUDA_DRIVER_LIB [libcuda.so.1 when there is no libcuda.so]
#   MODEL_DIMS [llama3-8b], QUANT [Q4_K_M], LIKE [qwen2.5-coder:0.5b: its header is in the kit]
#   BENCH_CONCURRENCY [1,16,64,128], BENCH_SLOTS [128], BENCH_CTX [1024 tokens per slot: the same KV
#   budget for both systems, and both fit on an 80 GB card at once], BENCH_MAX_TOKENS [128],
#   BENCH_KV_POOL [shared: lokal's shared pool against llama-server's unified KV, both of
#   BENCH_SLOTS x BENCH_CTX cells; per-slot: fixed slots on both]
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO="$PWD"

OUT="${OUT:-/tmp/gpu-out}"
KIT="$REPO/${KIT:-.gpu-kit}"
WORK="${WORK:-/tmp/lokal-gpu}"
DRY_RUN="${DRY_RUN:-0}"
JOBS="${JOBS:-$(nproc)}"
MODEL_DIMS="${MODEL_DIMS:-llama3-8b}"
QUANT="${QUANT:-Q4_K_M}"
BENCH_CONCURRENCY="${BENCH_CONCURRENCY:-1,16,64,128}"
BENCH_SLOTS="${BENCH_SLOTS:-128}"
BENCH_CTX="${BENCH_CTX:-1024}"
BENCH_MAX_TOKENS="${BENCH_MAX_TOKENS:-128}"
BENCH_KV_POOL="${BENCH_KV_POOL:-shared}"
if [ "$BENCH_KV_POOL" = shared ]; then  # the servers the bench starts read these
  export LOKAL_KV_POOL=shared LOKAL_KV_CELLS=$((BENCH_SLOTS * BENCH_CTX)) LLAMA_ARG_KV_UNIFIED=1
fi
LIKE="${LIKE:-qwen2.5-coder:0.5b}"
BUDGET_S="${BUDGET_S:-540}"
LLAMA_CPP_PYTHON="$(sed -n 's/^LLAMA_CPP_PYTHON=\([^ ]*\).*/\1/p' scripts/install.sh)"
SITE="$WORK/site"
PY="${PYTHON:-python3}"
BUILD_DIR="${BUILD_DIR:-$WORK/build}"
MODEL_NAME="random-${MODEL_DIMS}:$(echo "$QUANT" | tr '[:upper:]' '[:lower:]')"
MODEL="$WORK/models/random-${MODEL_DIMS}-${QUANT}.gguf"
F16="$WORK/models/random-${MODEL_DIMS}-${QUANT}.f16.gguf"
export LOKAL_HOME="$WORK/home" PYTHONUNBUFFERED=1 LOKAL_GPU_MODEL="$MODEL" LOKAL_GPU_MODEL_NAME="$MODEL_NAME"
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
LOGS="$WORK/logs"
START=$(date +%s)
mkdir -p "$OUT" "$LOGS" "$WORK/models"

note() { echo "$(date -u +%H:%M:%S) +$(($(date +%s) - START))s $*" | tee -a "$OUT/summary.txt"; }
pack() { tar -C "$WORK" -czf "$OUT/logs.tar.gz" logs 2>/dev/null || true; }

cuda_runtime_dir() {  # where the build linked libcudart from: the loader may not look there by itself
  sed -n 's|^CUDA_cudart_LIBRARY:FILEPATH=\(.*\)/[^/]*$|\1|p' "$BUILD_DIR/CMakeCache.txt" 2>/dev/null
}

# stage NAME FUNCTION: runs FUNCTION (errexit: its first failing command fails it) with its output in
# $LOGS/NAME.log, within what is left of the budget.
stage() {
  local name="$1" fn="$2" var left rc cudart
  var="SKIP_$(echo "$name" | tr '[:lower:]' '[:upper:]')"
  if [ "${!var:-0}" = 1 ]; then note "$name: skipped ($var=1)"; return 0; fi
  left=$((BUDGET_S - ($(date +%s) - START)))
  if [ "$left" -lt 20 ]; then note "$name: not started, ${left}s of the budget left"; return 1; fi
  note "$name: start (limit ${left}s)"
  cudart="$(cuda_runtime_dir)"
  if [ -n "$cudart" ] && [[ ":${LD_LIBRARY_PATH:-}:" != *":$cudart:"* ]]; then
    export LD_LIBRARY_PATH="$cudart${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
  if [ "$DRY_RUN" = 1 ]; then
    declare -f "$fn" | sed '1,2d;$d' | sed "s/^/  [$name] /"
    return 0
  fi
  ( export -f "$fn" run_bg_f16 pip_cublas cuda_driver cuda_runtime_dir bench_on; timeout --kill-after=10 "$left" bash -c "set -eo pipefail; $fn" ) \
    >"$LOGS/$name.log" 2>&1
  rc=$?
  if [ "$rc" = 0 ]; then note "$name: ok"; else note "$name: FAILED (exit $rc; logs.tar.gz: logs/$name.log)"; fi
  tail -n 5 "$LOGS/$name.log" | sed "s/^/    /" | tee -a "$OUT/summary.txt" >/dev/null
  pack
  return "$rc"
}

# ---- stages -------------------------------------------------------------------------------------
info() {  # the last lines land in summary.txt: the GPU's CSV row last (benchmarks/gpu/table.py reads it)
  nvidia-smi
  nvcc --version
  cmake --version | sed -n 1p
  df -h "$WORK"
  echo "python3 $("$PY" --version 2>&1), $(nproc) CPUs"
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv
}

deps() {
  local pip=("$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE")
  "${pip[@]}" --find-links "$KIT/wheels" -r "$KIT/wheels/requirements.txt"
  tar -xzf "$KIT/llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz" -C "$WORK"
  # The Python package only: its libraries come from the build stage (LLAMA_BUILD=OFF builds nothing).
  CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" "${pip[@]}" --no-build-isolation \
    "$WORK/llama_cpp_python-$LLAMA_CPP_PYTHON"
  "${pip[@]}" --no-build-isolation "$REPO"
  # lokal itself imports llama_cpp, whose libraries the build stage brings: here its dependencies only
  "$PY" -c "import fastapi, uvicorn, pydantic_settings, typer, gguf, jsonschema, llguidance, pynvml, httptools, \
sse_starlette, prometheus_client, importlib.metadata as m; print('lokal', m.version('lokal'), 'llama-cpp-python', \
m.version('llama_cpp_python'), 'fastapi', m.version('fastapi'), 'from', fastapi.__file__)"
}

run_bg_f16() {  # the F16 file is plain numpy and disk work: written while nvcc compiles
  "$PY" "$REPO/benchmarks/gpu/make_model.py" "$F16" --dims "$MODEL_DIMS"
}

pip_cublas() {  # the lib folder of cuBLAS from pip (nvidia-cublas, torch's) when the CUDA toolkit lacks it
  local found
  if ls /usr/local/cuda*/lib64/libcublas.so* /usr/local/cuda*/targets/*/lib/libcublas.so* >/dev/null 2>&1; then
    return 0
  fi
  found="$("$PY" -c 'import site; print(" ".join(site.getsitepackages()))' | xargs -n1 | sed 's|$|/nvidia|' \
    | xargs -I{} find {} -name 'libcublas.so.*' 2>/dev/null | sed -n 1p || true)"
  [ -z "$found" ] || dirname "$found"
}

cuda_driver() {  # libcuda.so.1 when neither the loader's cache nor the toolkit's stubs have libcuda.so
  if ldconfig -p | grep 'libcuda\.so ' >/dev/null; then return 0; fi
  if ls /usr/local/cuda*/lib64/stubs/libcuda.so /usr/local/cuda*/targets/*/lib/stubs/libcuda.so >/dev/null 2>&1; then
    return 0
  fi
  { ldconfig -p | sed -n 's/.*libcuda\.so\.1 .*=> //p'; find /usr/local/nvidia /usr/lib* -name 'libcuda.so.1' 2>/dev/null \
    || true; } | sed -n 1p
}

build() {
  local arch="${CUDA_ARCH:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | sed -n 1p | tr -d .)}"
  local cublas driver rpath='$ORIGIN' extra=()
  echo "CUDA architecture: $arch"
  cublas="${CUBLAS_LIB:-$(pip_cublas)}"
  if [ -n "$cublas" ]; then  # link it by path, its headers beside it, and find it at run time
    echo "cuBLAS from $cublas"
    extra=(-DCUDA_cublas_LIBRARY="$(ls "$cublas"/libcublas.so.* | sed -n 1p)"
           -DCUDA_cublasLt_LIBRARY="$(ls "$cublas"/libcublasLt.so.* | sed -n 1p)"
           -DCMAKE_CUDA_FLAGS="-I$cublas/../include" -DCMAKE_CXX_FLAGS="-I$cublas/../include")
    rpath="\$ORIGIN;$cublas"
  fi
  driver="${CUDA_DRIVER_LIB:-$(cuda_driver)}"
  if [ -n "$driver" ]; then echo "CUDA driver library $driver"; extra+=(-DCUDA_cuda_driver_LIBRARY="$driver"); fi
  if [ ! -s "$F16" ] && [ ! -s "$MODEL" ] && [ "${SKIP_MODEL:-0}" != 1 ]; then
    run_bg_f16 >"$LOGS/model-f16.log" 2>&1 &
  fi
  cmake -S "$WORK/llama_cpp_python-$LLAMA_CPP_PYTHON/vendor/llama.cpp" -B "$BUILD_DIR" -G Ninja \
    -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DGGML_CUDA=ON -DGGML_LLAMAFILE=ON \
    -DCMAKE_CUDA_ARCHITECTURES="$arch" -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF \
    -DCMAKE_INSTALL_RPATH="$rpath" -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON -DCMAKE_INSTALL_RPATH_USE_LINK_PATH=ON \
    "${extra[@]}"  # the RPATH: the libraries beside each other, and CUDA's wherever they were linked from
  cmake --build "$BUILD_DIR" --target "${BUILD_TARGET:-llama-server}" -j "$JOBS"
  export LD_LIBRARY_PATH="$(cuda_runtime_dir)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  local lib
  mkdir -p "$SITE/llama_cpp/lib"
  cp -a "$BUILD_DIR"/bin/*.so* "$SITE/llama_cpp/lib/"
  "$PY" -c "import llama_cpp as C; assert C.llama_supports_gpu_offload(), 'llama_cpp cannot offload'; print('llama_cpp', C.__version__, 'offloads to GPU')"
  wait  # the F16 model
}

model() {
  [ -s "$MODEL" ] || "$PY" "$REPO/benchmarks/gpu/make_model.py" "$MODEL" --dims "$MODEL_DIMS" --quantize "$QUANT" --f16 "$F16"
  ls -l "$MODEL"
  "$PY" -m lokal.cli.main show "$MODEL_NAME" >/dev/null 2>&1 || "$PY" -m lokal.cli.main import "$MODEL" --name "$MODEL_NAME"
  "$PY" -m lokal.cli.main list
}

tests() {
  "$PY" -m pytest -p no:cacheprovider -m gpu tests/gpu -v -rs --junitxml="$LOGS/tests.xml" 2>&1 | tee "$OUT/tests.txt"
}

bench_on() {  # bench_on GGUF NAME RESULT: llama-server and (when it can offload) lokal on one model
  local with_lokal=() help
  help="$(COLUMNS=200 "$PY" -m lokal.cli.main serve --help)"  # not piped into grep -q: pipefail, SIGPIPE
  if [[ "$help" == *--gpu-layers* ]]; then
    with_lokal=(--with-lokal)
  else
    echo "lokal serve has no --gpu-layers yet: lokal would run on the CPU, so llama-server is measured alone"
  fi
  COLUMNS=160 "$PY" "$REPO/benchmarks/gpu/bench_peer.py" --llama-server "$BUILD_DIR/bin/llama-server" --gguf "$1" \
    --model "$2" "${with_lokal[@]}" --slots "$BENCH_SLOTS" --ctx "$BENCH_CTX" --logs "$LOGS/servers-$3" -- \
    --scenario sweep --concurrency "$BENCH_CONCURRENCY" --max-tokens "$BENCH_MAX_TOKENS" --baseline llama-server \
    --json "$OUT/$3.json" 2>&1 | tee "$OUT/$3.txt"
}

bench() {
  bench_on "$MODEL" "$MODEL_NAME" bench
}

catalog() {  # the largest catalog model's own file (from its header in the kit) with random weights
  local gguf="$WORK/models/like-${LIKE//:/-}.gguf"
  [ -s "$gguf" ] || "$PY" "$REPO/benchmarks/gpu/like_model.py" fill "$KIT/models/${LIKE//:/-}.head.gz" "$gguf"
  "$PY" -m lokal.cli.main show "random-$LIKE" >/dev/null 2>&1 \
    || "$PY" -m lokal.cli.main import "$gguf" --name "random-$LIKE"
  bench_on "$gguf" "random-$LIKE" bench-catalog
}

export LIKE REPO KIT WORK SITE PY BUILD_DIR MODEL MODEL_NAME F16 MODEL_DIMS QUANT JOBS LOGS OUT LLAMA_CPP_PYTHON \
  BENCH_CONCURRENCY BENCH_SLOTS BENCH_CTX BENCH_MAX_TOKENS BENCH_KV_POOL

note "run.sh: budget ${BUDGET_S}s, work $WORK, out $OUT, dry run $DRY_RUN"
stage info info
stage deps deps || { pack; exit 1; }
stage build build || { pack; exit 1; }
stage model model || { pack; exit 1; }
stage tests tests
stage bench bench
stage catalog catalog
note "run.sh: done"
pack
