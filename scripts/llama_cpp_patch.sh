#!/usr/bin/env bash
# Patch an unpacked llama-cpp-python source tree for lokal: scripts/llama_cpp_patch.sh DIR LABEL
#
# 1. ggml's CPU flash attention picks its kernel by batch shape: a tiled kernel for 64+ query rows
#    per sequence and a split-KV kernel for one row of one sequence over 512+ cells; each rounds
#    differently from the per-row kernel used otherwise, so a prompt read in other chunks, or a
#    request decoded alone instead of in a batch, would give different answers. The patch makes
#    ggml take the per-row kernel always (what ggml does when asked for its reference path).
# 2. The package version gets the "+LABEL" local label; lokal turns flash attention on only for a
#    llama_cpp whose version carries "+lokal".
# Fails loudly when the source no longer has the lines it patches.
set -euo pipefail
dir="$1"
label="$2"
ops="$dir/vendor/llama.cpp/ggml/src/ggml-cpu/ops.cpp"
init="$dir/llama_cpp/__init__.py"

before='    const bool use_ref = params->use_ref;'
after='    const bool use_ref = true; // lokal: per-row kernel for every batch shape (batch-invariant)'
if [ "$(grep -cF "$before" "$ops")" != 1 ]; then
  echo "llama_cpp_patch: expected exactly one '$before' in $ops" >&2
  exit 1
fi
grep -q 'ggml_compute_forward_flash_attn_ext_f16' "$ops"
python3 - "$ops" "$before" "$after" <<'PY'
import sys
path, before, after = sys.argv[1:]
text = open(path).read()
open(path, "w").write(text.replace(before, after))
PY

version="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$init")"
if [ -z "$version" ]; then
  echo "llama_cpp_patch: no __version__ line in $init" >&2
  exit 1
fi
sed -i "s/^__version__ = \".*\"$/__version__ = \"$version+$label\"/" "$init"
echo "patched llama-cpp-python $version -> $version+$label"
