"""scripts/install.sh picks the llama.cpp backend from nvidia-smi: the real script, run with
`--print-build`, on a PATH that holds only the tools it uses and stand-ins for nvidia-smi and nvcc."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "scripts" / "install.sh"
TOOLS = ("env", "bash", "dirname", "grep", "tr", "sort", "paste", "head", "uname", "sed", "awk")

DRIVERLESS = "echo 'NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver.'; exit 9"


def nvidia_smi(caps: str, driver: str = "580.65.06") -> str:
    """A stand-in answering install.sh's two queries like a machine with these GPUs."""
    return (
        'case "$*" in\n'
        f"  *compute_cap*) printf '{caps}' ;;\n"
        f"  *driver_version*) printf '{driver}\\n' ;;\n"
        "  *) exit 2 ;;\n"
        "esac"
    )


def print_build(tmp_path: Path, smi: str | None, nvcc: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
    """install.sh --print-build with ``smi`` as nvidia-smi's body (None: no nvidia-smi) and a
    stand-in nvcc on PATH when ``nvcc``; no other CUDA (CUDA_HOME points nowhere)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    for name, body in (("nvidia-smi", smi), ("nvcc", "exit 0" if nvcc else None)):
        if body is not None:
            (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
            (bin_dir / name).chmod(0o755)
    run_env = {"PATH": str(bin_dir), "HOME": str(tmp_path), "CUDA_HOME": str(tmp_path / "no-cuda"),
               "LOKAL_WHEEL_CACHE": str(tmp_path / "wheels"), **env}
    return subprocess.run([str(INSTALL), "--print-build"], env=run_env, capture_output=True, text=True, timeout=30)


def fields(run: subprocess.CompletedProcess[str]) -> dict[str, str]:
    assert run.returncode == 0, run.stderr
    return dict(line.split(": ", 1) for line in run.stdout.splitlines())


def test_an_h100_builds_cuda_for_compute_capability_90_only(tmp_path: Path) -> None:
    build = fields(print_build(tmp_path, nvidia_smi("9.0\\n")))
    assert build["backend"] == "cuda"
    assert build["flags"] == "-DGGML_LLAMAFILE=ON -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90"
    assert build["wheels"] == f"{tmp_path}/wheels/lokal.2-cuda-sm90"
    assert build["nvcc"] == f"{tmp_path}/bin/nvcc"


def test_several_gpus_build_each_architecture_once(tmp_path: Path) -> None:
    same = fields(print_build(tmp_path / "a", nvidia_smi("8.9\\n8.9\\n")))
    assert same["flags"].endswith(" -DCMAKE_CUDA_ARCHITECTURES=89")
    assert same["wheels"].endswith("/lokal.2-cuda-sm89")
    mixed = fields(print_build(tmp_path / "b", nvidia_smi("9.0\\n12.0\\n8.6\\n")))
    assert mixed["flags"].endswith(" -DCMAKE_CUDA_ARCHITECTURES=86;90;120")
    assert mixed["wheels"].endswith("/lokal.2-cuda-sm86-sm90-sm120")


@pytest.mark.parametrize("smi", [DRIVERLESS, None], ids=["driverless-nvidia-smi", "no-nvidia-smi"])
def test_without_a_gpu_the_cpu_build_is_unchanged(tmp_path: Path, smi: str | None) -> None:
    build = fields(print_build(tmp_path, smi))
    assert build == {"backend": "cpu", "flags": "-DGGML_LLAMAFILE=ON", "wheels": f"{tmp_path}/wheels/lokal.2"}


def test_lokal_gpu_cpu_builds_for_the_cpu_with_a_gpu_present(tmp_path: Path) -> None:
    build = fields(print_build(tmp_path, nvidia_smi("9.0\\n"), LOKAL_GPU="cpu"))
    assert build == {"backend": "cpu", "flags": "-DGGML_LLAMAFILE=ON", "wheels": f"{tmp_path}/wheels/lokal.2"}


@pytest.mark.parametrize("smi", [DRIVERLESS, None], ids=["driverless-nvidia-smi", "no-nvidia-smi"])
def test_lokal_gpu_cuda_without_a_gpu_is_an_error(tmp_path: Path, smi: str | None) -> None:
    run = print_build(tmp_path, smi, LOKAL_GPU="cuda")
    assert run.returncode == 1
    assert "LOKAL_GPU=cuda, but nvidia-smi lists no GPU" in run.stderr
    assert run.stdout == ""


def test_an_unknown_lokal_gpu_is_an_error(tmp_path: Path) -> None:
    run = print_build(tmp_path, None, LOKAL_GPU="rocm")
    assert run.returncode == 1 and "LOKAL_GPU=rocm: expected auto, cpu or cuda" in run.stderr


def test_without_nvcc_cuda_comes_from_pypi(tmp_path: Path) -> None:
    build = fields(print_build(tmp_path, nvidia_smi("9.0\\n"), nvcc=False))
    assert build["backend"] == "cuda"
    assert build["wheels"] == f"{tmp_path}/wheels/lokal.2-cuda-sm90"
    assert build["nvcc"] == f"CUDA 13.0 from PyPI, into {tmp_path}/wheels/cuda-13.0"


def test_nvcc_under_cuda_home_is_used(tmp_path: Path) -> None:
    nvcc = tmp_path / "cuda" / "bin" / "nvcc"
    nvcc.parent.mkdir(parents=True)
    nvcc.write_text("#!/bin/sh\nexit 0\n")
    nvcc.chmod(0o755)
    build = fields(print_build(tmp_path, nvidia_smi("9.0\\n"), nvcc=False, CUDA_HOME=str(tmp_path / "cuda")))
    assert build["nvcc"] == str(nvcc)


def test_an_old_driver_without_nvcc_builds_for_the_cpu_or_fails_when_cuda_is_asked(tmp_path: Path) -> None:
    smi = nvidia_smi("9.0\\n", driver="535.104.05")
    build = fields(print_build(tmp_path / "auto", smi, nvcc=False))
    assert build["backend"] == "cpu" and build["wheels"].endswith("/lokal.2")
    assert "NVIDIA driver (535.104.05) is older than 580" in build["note"]
    run = print_build(tmp_path / "cuda", smi, nvcc=False, LOKAL_GPU="cuda")
    assert run.returncode == 1 and "LOKAL_GPU=cuda: no nvcc" in run.stderr and "535.104.05" in run.stderr


def test_a_gpu_older_than_cuda_13_without_nvcc_builds_for_the_cpu(tmp_path: Path) -> None:
    build = fields(print_build(tmp_path, nvidia_smi("7.0\\n"), nvcc=False))  # V100
    assert build["backend"] == "cpu"
    assert "compute capability below 7.5 (found 70)" in build["note"]


@pytest.mark.skipif(not (os.path.exists("/usr/local/cuda/bin/nvcc") or shutil.which("nvcc")),
                    reason="needs a CUDA toolkit (nvcc)")
def test_the_toolchain_puts_the_toolkits_libcudart_in_the_runpath(tmp_path: Path) -> None:
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    script = f'set -euo pipefail; source {ROOT}/scripts/gpu_build.sh; NVCC={nvcc}; cuda_toolchain_args'
    run = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    args = dict(arg[2:].split("=", 1) for arg in run.stdout.split())
    assert args["CMAKE_CUDA_COMPILER"] == nvcc
    lib = Path(args["CMAKE_SHARED_LINKER_FLAGS"].removeprefix("-Wl,-rpath,"))
    assert (lib / "libcudart.so").exists()
    assert Path(args["CUDAToolkit_ROOT"]) in lib.parents


@pytest.mark.parametrize("with_cublas", [True, False], ids=["full-toolkit", "nvcc-only"])
def test_an_nvcc_whose_toolkit_lacks_cublas_gives_way_to_cuda_from_pypi(tmp_path: Path, with_cublas: bool) -> None:
    top = tmp_path / "toolkit"
    (top / "include").mkdir(parents=True)
    if with_cublas:
        (top / "include" / "cublas_v2.h").write_text("")
    nvcc = tmp_path / "toolkit" / "bin" / "nvcc"
    nvcc.parent.mkdir()
    nvcc.write_text(f"#!/bin/sh\necho '#$ TOP={top}' >&2\n")  # what nvcc --dryrun says first
    nvcc.chmod(0o755)
    run = print_build(tmp_path, nvidia_smi("9.0\\n"), nvcc=False, CUDA_HOME=str(top))
    build = fields(run)
    if with_cublas:
        assert build["nvcc"] == str(nvcc)
    else:
        assert build["nvcc"].startswith("CUDA 13.0 from PyPI")
        assert "has no cuBLAS" in run.stderr
