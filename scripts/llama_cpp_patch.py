"""Patch an unpacked llama-cpp-python source tree for lokal: python3 scripts/llama_cpp_patch.py DIR LABEL

lokal runs every llama_decode in one of two kernel modes, chosen per call by the engine thread with
``lokal_ggml_set_prompt_mode`` (a thread-local read when the graph is planned), so that a token's
numbers never depend on what else was in the batch (docs/engine.md, "Results that do not depend on
load"):

- prompt mode (prompt chunks, embeddings): the fast kernels, each made independent of the number of
  rows in the call -- llamafile's sgemm for every row count (its ``n < 2`` guard removed), ggml's
  tiled K-quant matmul for every row count (not only 8+), and the tiled flash-attention kernel for
  every query-row count (not the per-row or split-KV ones it picks for short chunks);
- decode mode (generated tokens, speculative drafts): the per-row kernels -- ggml's vec-dot matmul
  and per-row flash attention, whatever the number of rows.

In both modes ggml's repacked-weight kernels (Q4_0, Q4_K, IQ4_NL on x86) take every row through their
one-row kernel (gemv): their 4-row gemm rounds differently, so a row's result would depend on its
place in the batch. The package version gets the "+LABEL" local label, which is how lokal knows it
has this build. Fails loudly when the source no longer has the lines it patches."""

from __future__ import annotations

import re
import sys
from pathlib import Path


def patch(path: Path, edits: list[tuple[str, str]]) -> None:
    text = path.read_text()
    for before, after in edits:
        n = text.count(before)
        if n != 1:
            raise SystemExit(f"llama_cpp_patch: expected exactly one {before!r} in {path}, found {n}")
        text = text.replace(before, after)
    path.write_text(text)


def main() -> None:
    src, label = Path(sys.argv[1]), sys.argv[2]
    ggml = src / "vendor/llama.cpp/ggml"
    cpu = ggml / "src/ggml-cpu"

    # The mode: a field of the plan and of each compute thread's params, set from a thread-local.
    patch(ggml / "include/ggml-cpu.h", [
        ("        // use only reference implementations\n        bool use_ref;\n    };",
         "        // use only reference implementations\n        bool use_ref;\n\n"
         "        // lokal: prompt-mode kernels (see lokal_ggml_set_prompt_mode)\n        bool lokal_prompt;\n    };"),
        ("    GGML_BACKEND_API void ggml_backend_cpu_set_use_ref(ggml_backend_t backend_cpu, bool use_ref);",
         "    GGML_BACKEND_API void ggml_backend_cpu_set_use_ref(ggml_backend_t backend_cpu, bool use_ref);\n"
         "    // lokal: kernels for the graphs this thread computes next: prompt (true) or decode (false)\n"
         "    GGML_BACKEND_API void lokal_ggml_set_prompt_mode(bool prompt);"),
    ])
    patch(cpu / "ggml-cpu-impl.h", [
        ("    // use reference implementation\n    bool use_ref;\n};",
         "    // use reference implementation\n    bool use_ref;\n\n    // lokal: prompt-mode kernels\n"
         "    bool lokal_prompt;\n};"),
    ])
    patch(cpu / "ggml-cpu.c", [
        ("        /*.use_ref    =*/ cplan->use_ref,\n    };",
         "        /*.use_ref    =*/ cplan->use_ref,\n        /*.lokal_prompt =*/ cplan->lokal_prompt,\n    };"),
        # sgemm only in prompt mode
        ("    const bool src1_cont = ggml_is_contiguous(src1);\n\n    if (src1_cont) {",
         "    const bool src1_cont = ggml_is_contiguous(src1);\n\n    if (src1_cont && params->lokal_prompt) {"),
        ("#if GGML_USE_LLAMAFILE\n    if (src1->type != vec_dot_type) {",
         "#if GGML_USE_LLAMAFILE\n    if (src1->type != vec_dot_type && params->lokal_prompt) {"),
    ])
    patch(cpu / "ggml-cpu.cpp", [
        ("// CPU backend - backend (stream)\n\nstruct ggml_backend_cpu_context {",
         "// CPU backend - backend (stream)\n\nstatic thread_local bool lokal_prompt_mode = false;\n\n"
         "void lokal_ggml_set_prompt_mode(bool prompt) {\n    lokal_prompt_mode = prompt;\n}\n\n"
         "struct ggml_backend_cpu_context {"),
        ("    cpu_plan->cplan.use_ref             = cpu_ctx->use_ref;\n",
         "    cpu_plan->cplan.use_ref             = cpu_ctx->use_ref;\n"
         "    cpu_plan->cplan.lokal_prompt        = lokal_prompt_mode;\n"),
        ("    cplan.use_ref             = cpu_ctx->use_ref;\n",
         "    cplan.use_ref             = cpu_ctx->use_ref;\n    cplan.lokal_prompt        = lokal_prompt_mode;\n"),
    ])
    # llamafile sgemm takes single rows too (in prompt mode, its only caller)
    patch(cpu / "llamafile/sgemm.cpp", [
        ("    // only enable sgemm for prompt processing\n"
         "#if !defined(__MMA__)\n    if (n < 2)\n        return false;\n#endif\n",
         "    // lokal: any row count (called in prompt mode only), so a prompt's chunking never changes results\n"),
    ])
    # tiled K-quant matmul: every row count in prompt mode, never in decode mode
    patch(cpu / "tiled/tiled.cpp", [
        ("    if (!ggml_tiled_min_batch(dst->src[1]->ne[1])) {\n        return false;\n    }\n"
         "    return ggml_tiled_matmul_type_dispatch(params, dst);",
         "    if (!params->lokal_prompt) {  // lokal: every row count in prompt mode, never in decode mode\n"
         "        return false;\n    }\n    return ggml_tiled_matmul_type_dispatch(params, dst);"),
        ("    if (!ggml_tiled_min_batch(cne1)) {\n        return false;\n    }",
         "    if (!params->lokal_prompt) {  // lokal: as for dense matmuls\n        return false;\n    }\n"
         "    (void) ggml_tiled_min_batch;"),
    ])
    # flash attention: tiled kernel for any query-row count in prompt mode, per-row in decode mode
    patch(cpu / "ops.cpp", [
        ("    const bool use_ref = params->use_ref;\n\n    const bool kv_is_f32_or_f16",
         "    const bool use_ref = !params->lokal_prompt; // lokal: decode mode takes the per-row kernel\n\n"
         "    const bool kv_is_f32_or_f16"),
        ("    const bool use_split_kv_path = !use_ref && (neq1 == 1",
         "    const bool use_split_kv_path = false && (neq1 == 1"),
        ("                                k->type == v->type &&\n                                neq1 >= Q_TILE_SZ);",
         "                                k->type == v->type);  // lokal: any row count (rows never share arithmetic)"),
    ])
    # repacked weights: the one-row kernel for every row
    patch(cpu / "repack.cpp", [
        ("            for (int64_t i11 = ith * 4; i11 < ne11 - ne11 % 4; i11 += nth * 4) {",
         "            for (int64_t i11 = ith * 4; false && i11 < ne11 - ne11 % 4; i11 += nth * 4) {"
         "  // lokal: no 4-row packs"),
        ("            const int64_t i11_processed = ne11 - ne11 % 4;",
         "            const int64_t i11_processed = 0;  // lokal: every row quantized on its own, for gemv"),
        ("        if (nrows > 3) {\n            gemm<BLOC_TYPE, INTER_SIZE, NB_COLS, PARAM_TYPE>(",
         "        if (false && nrows > 3) {  // lokal: gemv per row, whatever the batch\n"
         "            gemm<BLOC_TYPE, INTER_SIZE, NB_COLS, PARAM_TYPE>("),
        ("        for (int iter = nrows - (nrows % 4); iter < nrows; iter++) {\n            gemv<",
         "        for (int iter = 0; iter < nrows; iter++) {\n            gemv<"),
    ])

    init = src / "llama_cpp/__init__.py"
    text = init.read_text()
    m = re.search(r'^__version__ = "(.*)"$', text, re.M)
    if m is None:
        raise SystemExit(f"llama_cpp_patch: no __version__ line in {init}")
    init.write_text(text.replace(m.group(0), f'__version__ = "{m.group(1)}+{label}"'))
    print(f"patched llama-cpp-python {m.group(1)} -> {m.group(1)}+{label}")


if __name__ == "__main__":
    main()
