#!/usr/bin/env python3
"""Writes GGUF versions of the demo model (Demo/kimi-demo/int4) exactly as llama.cpp's own tools write them, so that
the engine's perplexity can be measured on GGUF files of a model that has learned something.

The demo is a tiny Kimi K2 (model_type kimi_k2, DeepseekV3ForCausalLM, 5 layers, 64 routed experts, vocabulary 4096
ranks + 256 specials) stored as Kimi K2 Thinking is: routed experts compressed-tensors INT4 pack-quantized
(symmetric, group 32, BF16 scales), everything else BF16 (router bias F32).

Pipeline (all with unmodified llama.cpp code of the version pinned by llama-cpp-python 0.3.36; the steps shared with
Tools/make_gguf_fixtures.py are its functions, imported):
  1. The release's safetensors, experts dequantized to fp32 by the documented formula (make_fixtures.int4_dequantize:
     (nibble − 8) · scale, which is compressed-tensors' own decompression when asked for fp32; checked here). fp32
     because q · scale of a BF16 scale needs up to 11 significant bits: about a quarter of the demo's expert values
     are not BF16 numbers, and a BF16 GGUF would round them. Saved as a plain fp32 checkpoint
     (model.layers.L.mlp.experts.E.{gate,up,down}_proj.weight, 3 shards) with the release's config.json less its
     quantization_config, plus make_gguf_fixtures' configuration_deepseek.py / tokenization_kimi.py auto_maps over
     the demo's own tiktoken.model and tokenizer_config.json (checked against the ids the training run recorded).
  2. llama.cpp's convert_hf_to_gguf.py --outtype f32, in make_gguf_fixtures' wrapper (its one replacement:
     TextModel.get_vocab_base_pre answers "kimi-k2" for our TikTokenTokenizer, whose 4096-rank vocabulary cannot
     give Kimi K2's hash though it uses Kimi K2's pattern). (The converter could also dequantize pack-quantized
     tensors itself; doing it here keeps the fp32 values checkable and the converter's path the one the fixtures use.)
  3. llama.cpp's quantizer, `llama_cpp.llama_model_quantize` (llama-cpp-python 0.3.36, run by --bench-python), from
     the f32 GGUF to each requested type (no imatrix, default parameters, 2 threads). Expert down_proj rows are
     moe_intermediate_size = 128 wide, not a multiple of 256, so llama.cpp gives those tensors its fallback types
     for K-quants (as it does for the MLA tensors); that is expected.
  4. Checks: every tensor of the f32 GGUF, dequantized by the vendored gguf-py and mapped back to checkpoint names
     (make_gguf_fixtures.checkpoint_from_gguf: experts un-merged, kv_b_proj rebuilt), equals the release's value
     bit for bit (INT4 experts: the dequantized values); the vocabulary is the kimi-k2 one.

Writes to --out (default /tmp/demo-gguf): kimi-demo-<type>.gguf for each of --types (default q4_k_m,q2_k; any
LLAMA_FTYPE_MOSTLY_* name in lower case, e.g. q8_0, q6_k, q5_k_m, q3_k_m, q4_0, bf16, and f32 for the converter's
output itself; IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS and IQ2_S need an importance matrix: --imatrix uniform gives one of
all ones, files kimi-demo-<type>-imatrix.gguf). Prints each file's size, sha256 and
tensor count per ggml type. The f32 GGUF is always made (in the temp dir when not asked for). Output is
byte-for-byte reproducible.

Usage:
  .venv/bin/python Tools/make_demo_gguf.py --llama-src DIR [--out /tmp/demo-gguf] [--types q4_k_m,q2_k]
    DIR: llama_cpp_python-0.3.36/vendor/llama.cpp (convert_hf_to_gguf.py, conversion/, gguf-py/); or --sdist
    llama_cpp_python-0.3.36.tar.gz, or neither (downloaded from PyPI, sha256 checked), as for make_gguf_fixtures.py.
  --bench-python: a Python with llama-cpp-python==0.3.36 (default .venv-bench/bin/python, Tools/bench-requirements.txt).
  --demo: the release directory (default Demo/kimi-demo/int4).
  This script's Python (.venv) needs Tools/requirements.txt (torch, transformers 5.23, numpy, tiktoken, safetensors,
  compressed-tensors 0.20) and gguf-py's dependencies (tqdm, pyyaml, requests).
"""
import argparse
import collections
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

TOOLS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TOOLS)
sys.path.insert(0, TOOLS)
import make_gguf_fixtures as mgf  # noqa: E402

DEMO_DIR = os.path.join(REPO, "Demo", "kimi-demo", "int4")
DEFAULT_TYPES = ["q4_k_m", "q2_k"]
BASE = "f32"


def quantizer_ftypes(bench_python):
    """The LLAMA_FTYPE_MOSTLY_* suffixes that llama-cpp-python knows."""
    code = "import llama_cpp; print(' '.join(n[19:] for n in dir(llama_cpp) if n.startswith('LLAMA_FTYPE_MOSTLY_')))"
    r = subprocess.run([bench_python, "-c", code], stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{bench_python}: cannot import llama_cpp:\n{r.stderr[-2000:]}")
    return set(r.stdout.split())


# --- 1. the fp32 checkpoint --------------------------------------------------------------------------------------

def check_int4_against_compressed_tensors(values, dense, torch, every=37):
    """Our formula against compressed-tensors' own unpacking and dequantization (fp32 output), for every
    `every`-th INT4 matrix; returns how many were compared."""
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import dequantize
    args = QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group", group_size=32)
    bases = sorted(n[: -len("_packed")] for n in values if n.endswith(".weight_packed"))
    for b in bases[::every]:
        shape = torch.Size(values[b + "_shape"].tolist())
        q = unpack_from_int32(values[b + "_packed"], 4, shape)
        theirs = dequantize(q, values[b + "_scale"].float(), None, args, dtype=torch.float32)
        assert torch.equal(theirs, dense[b]), b
    return len(bases[::every])


def write_checkpoint(demo, hf_dir, torch, mf):
    """The release as a plain fp32 checkpoint; returns (config, the fp32 values by checkpoint name)."""
    with open(os.path.join(demo, "config.json")) as f:
        cfg = json.load(f)
    qc = cfg.pop("quantization_config")
    weights = qc["config_groups"]["group_0"]["weights"]
    assert (qc["format"], weights["num_bits"], weights["group_size"], weights["symmetric"]) == \
        ("pack-quantized", 4, 32, True), qc
    values = mf.release_values(demo)
    dense = mf.dense_values(values)
    experts = [n for n in values if n.endswith(".weight_packed")]
    compared = check_int4_against_compressed_tensors(values, dense, torch)
    not_bf16 = sum(int((dense[n[: -len("_packed")]].to(torch.bfloat16).float() != dense[n[: -len("_packed")]]).sum())
                   for n in experts)
    n_expert_values = sum(dense[n[: -len("_packed")]].numel() for n in experts)
    print(f"release: {len(experts)} INT4 expert matrices dequantized ({compared} checked against compressed-tensors), "
          f"{not_bf16} of {n_expert_values} values ({100 * not_bf16 / n_expert_values:.1f}%) not BF16 numbers")

    os.makedirs(hf_dir)
    mf.save_sharded(dense, hf_dir, shards=3)
    cfg["torch_dtype"] = "float32"
    with open(os.path.join(hf_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    shutil.copy(os.path.join(demo, "generation_config.json"), hf_dir)
    mgf.write_config_code(hf_dir)
    mgf.write_tokenizer(hf_dir, demo)
    check_tokenizer(hf_dir, demo)
    return cfg, dense


def check_tokenizer(hf_dir, demo):
    """AutoTokenizer(trust_remote_code=True) loads our TikTokenTokenizer over the demo's files and gives the ids
    that the training run recorded for its sample prompts (perplexity.json)."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(hf_dir, trust_remote_code=True)
    assert type(tok).__name__ == "TikTokenTokenizer", type(tok)
    with open(os.path.join(demo, "perplexity.json")) as f:
        samples = json.load(f)["greedy"]
    for s in samples.values():
        assert tok.encode(s["text"]) == s["prompt"], (s["text"], tok.encode(s["text"]), s["prompt"])
        assert tok.decode(s["prompt"]) == s["text"], s["text"]
    assert tok.special_tokens["[BOS]"] == len(tok.model._mergeable_ranks) == 4096


# --- 4. checks and summary ---------------------------------------------------------------------------------------

def check_base(path, cfg, dense, gguf, np, torch):
    """Every tensor of the f32 GGUF, mapped back to checkpoint names, equals the fp32 release value exactly."""
    mgf.check_names_against_gguf_py(gguf, cfg["num_hidden_layers"])
    reader, tensors = mgf.dequantized_tensors(path, gguf, np)
    values = mgf.checkpoint_from_gguf(tensors, cfg, torch)
    assert set(values) == set(dense), set(values) ^ set(dense)
    for n, v in values.items():
        assert v.dtype == torch.float32 and torch.equal(v, dense[n]), n
    meta = mgf.metadata(reader, np)
    assert meta["tokenizer.ggml.pre"]["value"] == "kimi-k2" and meta["tokenizer.ggml.tokens"]["length"] == 4352
    assert meta["tokenizer.ggml.bos_token_id"]["value"] == 4096 and meta["tokenizer.ggml.eos_token_id"]["value"] == 4097
    experts = sum(1 for n in values if ".mlp.experts." in n)
    print(f"check: the f32 GGUF gives back all {len(values)} checkpoint tensors bit for bit "
          f"({experts} INT4 expert matrices among them); tokenizer.ggml.pre kimi-k2")


def summary(path, gguf):
    """(size, sha256, tensor count per ggml type, {tensor role (blk.N. dropped): {ggml type: count}})."""
    reader = gguf.GGUFReader(path)
    per_type = collections.Counter(t.tensor_type.name for t in reader.tensors)
    roles = collections.defaultdict(collections.Counter)
    for t in reader.tensors:
        parts = t.name.split(".")
        role = ".".join(parts[2:]) if parts[0] == "blk" else t.name
        roles[role][t.tensor_type.name] += 1
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    return os.path.getsize(path), digest, dict(sorted(per_type.items())), roles


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llama-src",
                    help="llama_cpp_python-0.3.36/vendor/llama.cpp (convert_hf_to_gguf.py, conversion/, gguf-py/)")
    ap.add_argument("--sdist", help="llama_cpp_python-0.3.36.tar.gz to extract instead of --llama-src")
    ap.add_argument("--bench-python", default=os.path.join(REPO, ".venv-bench", "bin", "python"),
                    help="Python with llama-cpp-python==0.3.36 (llama_model_quantize)")
    ap.add_argument("--demo", default=DEMO_DIR, help="the INT4 release directory")
    ap.add_argument("--out", default="/tmp/demo-gguf")
    ap.add_argument("--types", default=",".join(DEFAULT_TYPES),
                    help="comma-separated: f32 (the converter's output) or LLAMA_FTYPE_MOSTLY_* names in lower case")
    ap.add_argument("--imatrix", choices=["none", "uniform"], default="none",
                    help="uniform: quantize with an importance matrix of ones for every matrix but token_embd (what "
                         "llama-imatrix would cover), which IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS and IQ2_S require; its "
                         "files are named kimi-demo-<type>-imatrix.gguf")
    ap.add_argument("--roles", action="store_true", help="also print the ggml types of each tensor role")
    ap.add_argument("--keep-temp", action="store_true", help="keep the fp32 checkpoint and logs (path printed)")
    args = ap.parse_args()
    types = [t.strip().lower() for t in args.types.split(",") if t.strip()]
    known = quantizer_ftypes(args.bench_python)
    for t in types:
        if t != BASE and t.upper() not in known:
            ap.error(f"unknown type {t}; known: {BASE}, {', '.join(sorted(k.lower() for k in known))}")

    start = time.time()
    mgf.run_in_temp(build, args, types, "demo-gguf-")
    print(f"done in {time.time() - start:.0f} s")


def build(args, types, tmp):
    import numpy as np
    import torch
    import make_fixtures as mf

    src = mgf.llama_source(args, tmp)
    sys.path[0:0] = [os.path.join(src, "gguf-py")]
    import gguf
    assert os.path.dirname(gguf.__file__).startswith(os.path.join(src, "gguf-py")), gguf.__file__

    hf_dir = os.path.join(tmp, "kimi-demo")
    cfg, dense = write_checkpoint(os.path.abspath(args.demo), hf_dir, torch, mf)

    os.makedirs(args.out, exist_ok=True)
    paths, logs = {}, {}
    base = os.path.join(args.out if BASE in types else tmp, f"kimi-demo-{BASE}.gguf")
    logs[BASE] = mgf.convert(src, hf_dir, BASE, base)
    paths[BASE] = base
    check_base(base, cfg, dense, gguf, np, torch)
    del dense
    imatrix = None
    if args.imatrix == "uniform":
        imatrix = os.path.join(tmp, "imatrix.json")
        mgf.write_uniform_imatrix(base, imatrix, gguf)
    for t in types:
        if t == BASE:
            continue
        paths[t] = os.path.join(args.out, f"kimi-demo-{t}{'-imatrix' if imatrix else ''}.gguf")
        logs[t] = mgf.quantize(args.bench_python, base, paths[t], t.upper(), imatrix)
    for t, log in logs.items():
        with open(os.path.join(tmp, f"{t}.log"), "w") as f:
            f.write(log)

    for t in types:
        size, digest, per_type, roles = summary(paths[t], gguf)
        print(f"{paths[t]}  {size} bytes ({size / 2**20:.1f} MiB)  sha256 {digest}")
        print(f"  tensors per type: {per_type}")
        if args.roles:
            for role, counts in sorted(roles.items()):
                print(f"    {role:28s} {dict(sorted(counts.items()))}")


if __name__ == "__main__":
    main()
