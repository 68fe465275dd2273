#!/usr/bin/env bash
# Extract llama.cpp's converters (convert_hf_to_gguf.py, convert_lora_to_gguf.py and the conversion/ and
# gguf-py/ they import) from the llama-cpp-python sdist into DEST, whole or not at all.
#
#   scripts/extract_converters.sh VERSION DEST [SDIST]
#
# Without SDIST, pip downloads it (pip's cache keeps it; $PYTHON, default .venv/bin/python, runs pip).
# scripts/install.sh runs this for the convert extra; lokal.workshop.converter finds the result.
set -euo pipefail
version="$1"
dest="$2"
sdist="${3:-}"
python="${PYTHON:-.venv/bin/python}"

work="$(mktemp -d)"
staged=""
trap 'rm -rf "$work" ${staged:+"$staged"}' EXIT
if [ -z "$sdist" ]; then
  "$python" -m pip download --quiet --no-deps --no-binary :all: -d "$work" "llama-cpp-python==$version"
  sdist="$work/llama_cpp_python-$version.tar.gz"
fi
mkdir -p "$(dirname "$dest")"
staged="$(mktemp -d "$dest.partial-XXXXXX")"
vendor="llama_cpp_python-$version/vendor/llama.cpp"
tar -xzf "$sdist" -C "$staged" --strip-components=3 "$vendor/convert_hf_to_gguf.py" \
  "$vendor/convert_lora_to_gguf.py" "$vendor/conversion" "$vendor/gguf-py"
rm -rf "$dest"
mv "$staged" "$dest"
staged=""
