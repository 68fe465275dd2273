# Which llama.cpp backend scripts/install.sh builds, and the CUDA toolkit it builds with (sourced).
#
# LOKAL_GPU=auto (default) builds for CUDA when `nvidia-smi` lists a GPU, for the compute
# capabilities it reports (only those compile); cpu and cuda force a backend. nvcc comes from PATH
# or $CUDA_HOME (default /usr/local/cuda); without one, NVIDIA's CUDA 13 wheels from PyPI are
# installed next to the wheel cache and made into a toolkit tree that CMake accepts. Either way the
# built libraries get the toolkit's lib/ in their RUNPATH, so that libcudart and libcublas load
# without LD_LIBRARY_PATH (docs/gpu.md, "Install").

CUDA_PYPI=13.0      # the CUDA release taken from PyPI when there is no nvcc
CUDA_PYPI_DRIVER=580  # the oldest NVIDIA driver that runs CUDA 13
CUDA_PYPI_MIN_ARCH=75  # CUDA 13 compiles for compute capability 7.5 (Turing) and newer
CUDA_PYPI_PACKAGES=(nvidia-cuda-nvcc nvidia-cuda-crt nvidia-nvvm nvidia-cuda-runtime nvidia-cuda-cccl nvidia-cublas)

gpu_fail() {
  echo "error: $*" >&2
  exit 1
}

# Sets BACKEND (cpu or cuda), CUDA_ARCHS ("90", "86;90"), NVCC (a path, or "" for CUDA from
# PyPI) and CUDA_NOTE (why auto chose the CPU, or "").
gpu_backend() {
  local mode="${LOKAL_GPU:-auto}" caps driver
  BACKEND=cpu CUDA_ARCHS="" NVCC="" CUDA_NOTE=""
  case "$mode" in
    cpu) return 0 ;;
    auto | cuda) ;;
    *) gpu_fail "LOKAL_GPU=$mode: expected auto, cpu or cuda" ;;
  esac
  if ! caps="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null)" \
      || ! printf '%s\n' "$caps" | grep -qxE '[0-9]+\.[0-9]+'; then
    [ "$mode" = cuda ] && gpu_fail "LOKAL_GPU=cuda, but nvidia-smi lists no GPU (no driver, or no NVIDIA GPU here)"
    return 0
  fi
  if printf '%s\n' "$caps" | grep -vqxE '[0-9]+\.[0-9]+'; then
    gpu_fail "nvidia-smi reported compute capabilities install.sh cannot read: $(printf '%s' "$caps" | tr '\n' ' ')"
  fi
  CUDA_ARCHS="$(printf '%s\n' "$caps" | tr -d '.' | sort -nu | paste -sd ';')"
  NVCC="$(command -v nvcc || true)"
  if [ -z "$NVCC" ] && [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ]; then
    NVCC="${CUDA_HOME:-/usr/local/cuda}/bin/nvcc"
  fi
  if [ -n "$NVCC" ] && ! cuda_has_cublas "$NVCC"; then  # nvcc alone (e.g. a pip-installed compiler)
    echo "note: $NVCC's toolkit has no cuBLAS (cublas_v2.h): CUDA $CUDA_PYPI comes from PyPI instead" >&2
    NVCC=""
  fi
  if [ -z "$NVCC" ]; then  # CUDA from PyPI: check that this driver and these GPUs can use it
    driver="$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n 1 || true)"
    if ! [[ "${driver%%.*}" =~ ^[0-9]+$ ]] || [ "${driver%%.*}" -lt "$CUDA_PYPI_DRIVER" ]; then
      CUDA_NOTE="no nvcc (PATH, \$CUDA_HOME or /usr/local/cuda) and the NVIDIA driver (${driver:-unknown}) is older than $CUDA_PYPI_DRIVER, which CUDA $CUDA_PYPI from PyPI needs: install a CUDA toolkit that matches the driver, or a newer driver"
    elif [ "${CUDA_ARCHS%%;*}" -lt "$CUDA_PYPI_MIN_ARCH" ]; then
      CUDA_NOTE="no nvcc (PATH, \$CUDA_HOME or /usr/local/cuda), and CUDA $CUDA_PYPI from PyPI does not compile for compute capability below 7.5 (found ${CUDA_ARCHS//;/, }): install a CUDA 12 toolkit"
    fi
  fi
  if [ -n "$CUDA_NOTE" ]; then
    [ "$mode" = cuda ] && gpu_fail "LOKAL_GPU=cuda: $CUDA_NOTE"
    BACKEND=cpu CUDA_ARCHS=""
    return 0
  fi
  BACKEND=cuda
}

# Whether nvcc $1's toolkit has cuBLAS's header, which ggml's CUDA backend needs (an unreadable
# toolkit root counts as yes: the build then says what is missing).
cuda_has_cublas() {
  local top
  top="$(cuda_top "$1")"
  [ -z "$top" ] || [ -e "$top/include/cublas_v2.h" ] || compgen -G "$top/targets/*/include/cublas_v2.h" >/dev/null
}

# The toolkit root nvcc $1 compiles with (its --dryrun's TOP), or "".
cuda_top() {
  "$1" --dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n 1
}

# Installs CUDA $CUDA_PYPI from PyPI into $1 (with pip $2) unless it is there, and makes $1/nvidia/cu13
# a toolkit tree that nvcc and CMake's FindCUDAToolkit accept; prints that tree's path.
cuda_toolkit_from_pypi() {
  local dir="$1" pip="$2" root lib libcuda name
  root="$dir/nvidia/cu${CUDA_PYPI%%.*}"
  if [ ! -x "$root/bin/nvcc" ]; then
    echo "installing CUDA $CUDA_PYPI (nvcc, cudart, cuBLAS) from PyPI into $dir..." >&2
    rm -rf "$dir"
    "$pip" install --quiet --target "$dir" "${CUDA_PYPI_PACKAGES[@]/%/==$CUDA_PYPI.*}" >&2 \
      || gpu_fail "pip could not install CUDA $CUDA_PYPI (${CUDA_PYPI_PACKAGES[*]}) into $dir"
  fi
  lib="$root/lib"
  # what a CUDA installer adds: lib64, targets/<arch>/ (nvcc.profile's include path), linker names
  ln -sfn lib "$root/lib64"
  mkdir -p "$root/targets/$(uname -m)-linux"
  ln -sfn ../../include "$root/targets/$(uname -m)-linux/include"
  ln -sfn ../../lib "$root/targets/$(uname -m)-linux/lib"
  for name in libcudart libcublas libcublasLt; do
    ln -sfn "$name.so.${CUDA_PYPI%%.*}" "$lib/$name.so"
  done
  # ggml links the driver (libcuda) for its virtual-memory pool: there is no stub on PyPI, so the
  # driver's own library stands in for it, as lib/stubs/libcuda.so does in a CUDA installation
  libcuda="$("$(command -v ldconfig || echo /sbin/ldconfig)" -p 2>/dev/null | awk '$1 == "libcuda.so.1" && $2 != "(libc6)" {print $NF; exit}')"
  if [ -n "$libcuda" ]; then
    mkdir -p "$lib/stubs"
    ln -sfn "$libcuda" "$lib/stubs/libcuda.so"
  fi
  echo "$root"
}

# Prints the CMake arguments that build with this machine's CUDA toolkit, $NVCC's or (without one)
# CUDA from PyPI installed into $1 with pip $2: its nvcc and root, and its lib/ in the RUNPATH of
# the built libraries (CMake leaves a toolkit's directories out of it), so that they find libcudart
# and libcublas without LD_LIBRARY_PATH or ld.so.conf.
cuda_toolchain_args() {
  local nvcc="$NVCC" top lib args=""
  if [ -z "$nvcc" ]; then
    top="$(cuda_toolkit_from_pypi "$1" "$2")" || exit 1
    nvcc="$top/bin/nvcc"
    # without the driver's libcuda to link, ggml uses its plain (cudaMalloc) memory pool
    [ -e "$(dirname "$nvcc")/../lib/stubs/libcuda.so" ] || args=" -DGGML_CUDA_NO_VMM=ON"
  fi
  top="$(cuda_top "$nvcc")"
  for lib in "$top/lib64" "$top/lib" "$top/targets/$(uname -m)-linux/lib"; do
    [ -e "$lib/libcudart.so" ] && break
  done
  [ -e "$lib/libcudart.so" ] || gpu_fail "$nvcc: no libcudart.so in its toolkit ($top)"
  top="$(cd "$top" && pwd -P)" lib="$(cd "$lib" && pwd -P)"
  echo "-DCMAKE_CUDA_COMPILER=$nvcc -DCUDAToolkit_ROOT=$top -DCMAKE_SHARED_LINKER_FLAGS=-Wl,-rpath,$lib$args"
}
