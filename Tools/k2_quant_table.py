#!/usr/bin/env python3
"""What each standard llama.cpp quantisation of Kimi K2 weighs, and what `moestream plan` forecasts for it.

For each ftype (default: Q8_0 Q6_K Q5_K_M Q4_K_M Q3_K_M Q2_K IQ4_XS IQ3_XXS IQ2_XXS IQ1_S IQ1_M TQ1_0) this prints
markdown tables of
  - total GGUF tensor bytes, resident bytes (everything but `blk.*.ffn_{gate,up,down}_exps.weight`), routed-expert
    bytes, and one expert's bytes in our store (gate + up + down, each matrix sized for the widest type it has in
    any MoE layer, as `convert` lays extents out: `ExpertLayout(ggml:)`, 64-byte inner alignment, 4096-byte extent);
  - every tensor role's type (and, where a role's type varies by layer, which layers get which);
  - for `--ram 128G` and `--ram 256G`: the share of experts the cache holds and the drive-bound decode rate at
    7 GB/s and 3 GB/s, computed as Sources/moestream/PlanCommand.swift does for a .gguf (see `forecast`),
and writes all of it, with every tensor's type per ftype, to --out/table.json (default /tmp/k2q/table.json).

Method: the types come from llama.cpp's own quantiser, not from a re-implementation of its rules.
  1. A small deepseek2 GGUF is written with gguf-py's GGUFWriter: Kimi K2's exact tensor names and layer structure
     (61 blocks, block 0 dense, blocks 1-60 MoE with a shared expert, split attn_k_b/attn_v_b, no MTP), the metadata
     keys convert_hf_to_gguf.py writes for deepseek2 (conversion/deepseek.py; compare Tools/make_gguf_fixtures.py's
     fixtures), BF16 weights (norms, router and correction bias F32, as convert writes them), small dimensions.
  2. llama_cpp.llama_model_quantize makes each ftype from it (each in its own process, so an abort cannot take the
     table down); gguf.GGUFReader reads every tensor's type back.
  3. Tensors map 1:1 onto Kimi K2's (same names); K2 bytes = K2's element count / block size x type size
     (gguf.GGML_QUANT_SIZES). The script asserts that every K2 row length is a whole number of blocks of its type.
Why small dimensions give K2's types (llama.cpp src/llama-quant.cpp of the version pinned below):
  - the rules read tensor names, the layer index parsed from the name (`blk.N.`, because n_expert > 1) against
    n_layer = block_count (61), counters over tensor names in the loader's order (layer, then name), the ftype,
    has_imatrix, and hparams n_expert (tests: == 8, >= 4, > 1) and n_gqa = head_count / head_count_kv (>= 4);
  - shapes enter only as ne[0] (the row length) modulo the block size (fallbacks, and output/token_embd's
    `nx % qk_k`), and ne[2] only for MXFP4_MOE. Vocabulary size and the number of rows never enter.
  So the small model keeps n_layer 61, n_expert 16 (K2: 384; same answers to == 8, >= 4, > 1), head_count 4 with
  head_count_kv 1 (n_gqa 4; K2: 64 with 1, both >= 4), and every row length in K2's class modulo 32, 64, 128 and
  256 (asserted): hidden 7168 -> 256, intermediate 18432 -> 512, moe_intermediate 2048 -> 256, q_lora 1536 -> 256,
  kv_lora 512 -> 256, heads x v_head 8192 -> 512; qk_nope 128 (attn_k_b's row length, the one K2 row that is not
  a multiple of 256), qk_rope 64 and v_head 128 kept as K2's.
i-quants: IQ1_S/IQ1_M/IQ2_XXS/IQ3_XXS refuse to run without an importance matrix (llama.cpp's
tensor_requires_imatrix). Every IQ/TQ ftype is tried without one and then with a uniform one (all ones for every
quantisable tensor but token_embd, as llama-imatrix would cover); an imatrix changes the types only through
has_imatrix (IQ3_XXS and IQ4_XS ffn_down, IQ3_XXS attn_v), never through its values. K-quant types do not depend on
it. Published i-quants are made with an imatrix, so the "imatrix" rows are the representative ones.

Run (9-11 minutes on 2 shared cores, most of it the IQ3_XXS/IQ2_XXS/IQ1_* quantisers; the twin GGUF is 0.5 GB;
nothing is written outside --out):
  .venv-bench/bin/python Tools/k2_quant_table.py [--out /tmp/k2q] [--ftypes Q4_K_M,IQ2_XXS] [--threads 2] [--keep]
  .venv-bench/bin/python Tools/k2_quant_table.py --render /tmp/k2q/table.json   (reprint an earlier run's tables)
Pinned (Tools/bench-requirements.txt): llama-cpp-python==0.3.36 (its vendored llama.cpp's llama_model_quantize),
gguf==0.19.0, numpy==2.4.6. The script checks the versions.
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from collections import Counter, OrderedDict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_gguf_fixtures import QUANTIZE, bytes_to_unicode  # noqa: E402  (stdlib-only at import: runs in .venv-bench too)

import numpy as np

# --- the two models --------------------------------------------------------------------------------------------------

K2 = dict(hidden=7168, intermediate=18432, moe_intermediate=2048, layers=61, dense=1, experts=384, shared=1,
          used=8, heads=64, q_lora=1536, kv_lora=512, nope=128, rope=64, v=128, vocab=163840)
# Small twin: same layer structure and names, every row length in K2's divisibility class (see the docstring).
TINY = dict(K2, hidden=256, intermediate=512, moe_intermediate=256, experts=16, heads=4, q_lora=256, kv_lora=256,
            vocab=512)
K2_PARAMETERS = 1_026_408_209_408  # /work/shared/kimi-k2-reference.md §1 (HF checkpoint, kv_b = attn_k_b + attn_v_b)

DEFAULT_FTYPES = ["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K", "IQ4_XS", "IQ3_XXS", "IQ2_XXS", "IQ1_S",
                  "IQ1_M", "TQ1_0"]
EXPERT_ROLES = ("ffn_gate_exps.weight", "ffn_up_exps.weight", "ffn_down_exps.weight")

# What `moestream plan` assumes (PlanCommand.swift, KVCache.bytesPerToken, CacheOptions.defaultKV = f16).
CONTEXT = 8192
KV_BYTES = 2  # f16
DRIVE_BW = [7e9, 3e9]
RAMS = [("128G", 128 << 30), ("256G", 256 << 30)]  # `--ram 128G` → parseSize → 128 × 2^30 bytes
EXTENT_ALIGN, INNER_ALIGN = 4096, 64


def tensors(c):
    """(name, ne in GGUF order, source dtype) for every tensor convert_hf_to_gguf.py writes for a deepseek2 model."""
    H, heads = c["hidden"], c["heads"]
    out = [("output.weight", [H, c["vocab"]], "BF16"), ("token_embd.weight", [H, c["vocab"]], "BF16")]
    for i in range(c["layers"]):
        b = f"blk.{i}."
        out.append((b + "attn_norm.weight", [H], "F32"))
        if i < c["dense"]:
            out += [(b + "ffn_down.weight", [c["intermediate"], H], "BF16"),
                    (b + "ffn_gate.weight", [H, c["intermediate"]], "BF16"),
                    (b + "ffn_up.weight", [H, c["intermediate"]], "BF16")]
        else:
            E, F = c["experts"], c["moe_intermediate"]
            out += [(b + "ffn_down_exps.weight", [F, H, E], "BF16"),
                    (b + "ffn_gate_exps.weight", [H, F, E], "BF16"),
                    (b + "ffn_up_exps.weight", [H, F, E], "BF16"),
                    (b + "exp_probs_b.bias", [E], "F32"),
                    (b + "ffn_gate_inp.weight", [H, E], "F32"),
                    (b + "ffn_down_shexp.weight", [F * c["shared"], H], "BF16"),
                    (b + "ffn_gate_shexp.weight", [H, F * c["shared"]], "BF16"),
                    (b + "ffn_up_shexp.weight", [H, F * c["shared"]], "BF16")]
        out += [(b + "ffn_norm.weight", [H], "F32"),
                (b + "attn_kv_a_norm.weight", [c["kv_lora"]], "F32"),
                (b + "attn_kv_a_mqa.weight", [H, c["kv_lora"] + c["rope"]], "BF16"),
                (b + "attn_k_b.weight", [c["nope"], c["kv_lora"], heads], "BF16"),
                (b + "attn_v_b.weight", [c["kv_lora"], c["v"], heads], "BF16"),
                (b + "attn_output.weight", [heads * c["v"], H], "BF16"),
                (b + "attn_q_a_norm.weight", [c["q_lora"]], "F32"),
                (b + "attn_q_a.weight", [H, c["q_lora"]], "BF16"),
                (b + "attn_q_b.weight", [c["q_lora"], heads * (c["nope"] + c["rope"])], "BF16")]
    out.append(("output_norm.weight", [H], "F32"))
    return out


def role(name):
    m = re.match(r"blk\.(\d+)\.(.*)", name)
    return (m.group(2), int(m.group(1))) if m else (name, None)


def check_twin():
    k2, tiny = tensors(K2), tensors(TINY)
    assert [t[0] for t in k2] == [t[0] for t in tiny]
    for (name, ne_k, dtype), (_, ne_t, _) in zip(k2, tiny):
        assert len(ne_k) == len(ne_t), name
        if dtype == "F32":
            continue  # norms, router, correction bias: never quantised
        for b in (32, 64, 128, 256):
            assert (ne_k[0] % b == 0) == (ne_t[0] % b == 0), (name, ne_k, ne_t, b)
    total = sum(math.prod(ne) for _, ne, _ in k2)
    # the reference's count leaves out the 60 × 384 router correction biases (exp_probs_b)
    assert total == K2_PARAMETERS + (K2["layers"] - K2["dense"]) * K2["experts"], total
    return {n: ne for n, ne, _ in k2}


# --- step 1: the small GGUF ------------------------------------------------------------------------------------------

def write_twin(gguf, path, seed=7):
    """The small deepseek2 GGUF: convert_hf_to_gguf.py's metadata keys for Kimi K2 with the twin's dimensions."""
    c = TINY
    w = gguf.GGUFWriter(path, "deepseek2")
    w.add_type("model")
    w.add_name("Kimi K2 quantisation-rule twin")
    w.add_size_label(f"{c['experts']}x{c['moe_intermediate']}")
    w.add_block_count(c["layers"])
    w.add_context_length(131072)
    w.add_embedding_length(c["hidden"])
    w.add_feed_forward_length(c["intermediate"])
    w.add_head_count(c["heads"])
    w.add_head_count_kv(1)  # MLA written as MQA, as convert does
    w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    w.add_rope_scaling_factor(32.0)
    w.add_rope_scaling_orig_ctx_len(4096)
    w.add_rope_scaling_yarn_beta_fast(1.0)
    w.add_rope_scaling_yarn_beta_slow(1.0)
    w.add_rope_freq_base(50000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_expert_count(c["experts"])
    w.add_expert_used_count(c["used"])
    w.add_expert_group_count(1)
    w.add_expert_group_used_count(1)
    w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_BF16)
    w.add_leading_dense_block_count(c["dense"])
    w.add_vocab_size(c["vocab"])
    w.add_q_lora_rank(c["q_lora"])
    w.add_kv_lora_rank(c["kv_lora"])
    w.add_key_length(c["kv_lora"] + c["rope"])
    w.add_value_length(c["kv_lora"])
    w.add_key_length_mla(c["nope"] + c["rope"])
    w.add_value_length_mla(c["v"])
    w.add_expert_feed_forward_length(c["moe_intermediate"])
    w.add_expert_shared_count(c["shared"])
    w.add_expert_weights_scale(2.827)
    w.add_expert_weights_norm(True)
    w.add_rope_dimension_count(c["rope"])
    w.add_rope_scaling_yarn_log_mul(0.1 * 1.0)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    # gpt2-style vocabulary as convert's kimi-k2 branch writes it (byte tokens, merged tokens, two control tokens)
    table = bytes_to_unicode()
    chars = [table[b] for b in range(256)]
    merged = [chars[i] + chars[j] for i in range(16) for j in range(16)][: c["vocab"] - 256 - 2]
    tokens = chars + merged + ["[BOS]", "[EOS]"]
    assert len(tokens) == c["vocab"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("kimi-k2")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.NORMAL] * (c["vocab"] - 2) + [gguf.TokenType.CONTROL] * 2)
    w.add_token_merges([f"{m[0]} {m[1]}" for m in merged])
    w.add_bos_token_id(c["vocab"] - 2)
    w.add_eos_token_id(c["vocab"] - 1)

    rng = np.random.default_rng(seed)
    pool = (rng.standard_normal(1 << 23, dtype=np.float32) * 0.02)
    pool_bf16 = (pool.view(np.uint32) >> 16).astype(np.uint16)  # truncated to bf16
    for name, ne, dtype in tensors(c):
        n = math.prod(ne)
        start = int(rng.integers(0, pool.size - n))
        shape = ne[::-1]
        if dtype == "F32":
            w.add_tensor(name, pool[start:start + n].reshape(shape).copy())
        else:
            w.add_tensor(name, pool_bf16[start:start + n].reshape(shape).copy(), raw_dtype=gguf.GGMLQuantizationType.BF16)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# --- step 2: llama_model_quantize, one process per ftype -------------------------------------------------------------

# The quantizer child is make_gguf_fixtures' (imported above): llama_model_quantize with an optional uniform
# importance matrix, [tensor name, values] as JSON.


def imatrix_entries(path):
    """What llama-imatrix would record: every quantisable weight that is a matmul operand (not token_embd),
    ne[0] x ne[2] values (one vector per expert)."""
    out = []
    for name, ne, dtype in tensors(TINY):
        if dtype == "F32" or name == "token_embd.weight" or len(ne) < 2:
            continue
        out.append((name, ne[0] * (ne[2] if len(ne) > 2 else 1)))
    with open(path, "w") as f:
        json.dump(out, f)


def quantize(src, dst, ftype, threads, imatrix_path):
    t0 = time.time()
    r = subprocess.run([sys.executable, "-c", QUANTIZE, src, dst, ftype, str(threads)] + ([imatrix_path] if imatrix_path else []),
                       stdin=subprocess.DEVNULL, capture_output=True, text=True)
    log = r.stdout + r.stderr
    return r.returncode, log, time.time() - t0


def failure_reason(log):
    lines = [l.strip() for l in log.splitlines()]
    keep = [l for l in lines if ("offending tensor" in l or "target type" in l or "failed to quantize" in l
                                 or "Missing importance" in l)]
    return " | ".join(dict.fromkeys(keep)) or "\n".join(lines[-5:])


# --- step 3: K2 bytes and the plan forecast --------------------------------------------------------------------------

def k2_bytes(gguf, k2_ne, name, type_name):
    qt = gguf.GGMLQuantizationType[type_name]
    block, size = gguf.GGML_QUANT_SIZES[qt]
    ne = k2_ne[name]
    assert ne[0] % block == 0, f"{name}: K2 row length {ne[0]} is not a whole number of {type_name} blocks"
    return math.prod(ne) // block * size


def row_bytes(gguf, type_name, cols):
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]]
    return cols // block * size if cols % block == 0 else 0


def round_up(x, a):
    return (x + a - 1) // a * a


def expert_extent(gguf, types):
    """GGUFPlan.extentBytes: per matrix the type with the largest row bytes over the MoE layers, laid out as
    ExpertLayout(ggml:) does (64-byte aligned matrices, extent rounded up to 4096)."""
    H, F = K2["hidden"], K2["moe_intermediate"]
    widest, cursor, raw = {}, 0, 0
    for proj, rows, cols in (("gate", F, H), ("up", F, H), ("down", H, F)):
        layer_types = [types[f"blk.{l}.ffn_{proj}_exps.weight"] for l in range(K2["dense"], K2["layers"])]
        best = max(layer_types, key=lambda t: row_bytes(gguf, t, cols))  # the first of the widest, as Swift's max(by:)
        widest[proj] = best
        b = rows * row_bytes(gguf, best, cols)
        raw += b
        cursor = round_up(cursor + b, INNER_ALIGN)
    return widest, raw, round_up(cursor, EXTENT_ALIGN)


def plan_resident(gguf, k2_ne, types):
    """GGUFPlan.residentBytes: every tensor but *_exps.weight and attn_v_b; attn_k_b counts as kv_b in fp32."""
    total = 0
    for name, t in types.items():
        if name.endswith("_exps.weight") or name.endswith("attn_v_b.weight"):
            continue
        if name.endswith("attn_k_b.weight"):
            total += K2["heads"] * (K2["nope"] + K2["v"]) * K2["kv_lora"] * 4
        else:
            total += k2_bytes(gguf, k2_ne, name, t)
    return total


def forecast(resident, extent, ram):
    """PlanCommand.run with --ram, --context 8192, --kv-cache f16, uniform routing."""
    moe_layers = K2["layers"] - K2["dense"]
    experts = moe_layers * K2["experts"]
    all_experts = experts * extent
    kv = K2["layers"] * (K2["kv_lora"] + K2["rope"]) * KV_BYTES * CONTEXT
    headroom = max(2 << 30, ram // 20)
    budget = max(0, min(all_experts, ram - resident - kv - headroom))
    slots = budget // extent
    share = slots / experts
    misses = K2["used"] * moe_layers * (1 - share)
    per_token = misses * extent
    out = dict(ram=ram, kv=kv, headroom=headroom, budget=budget, slots=slots, share=share, misses_per_token=misses,
               bytes_per_token=per_token, runs=budget > 0)
    for bw in DRIVE_BW:
        out[f"tokens_per_s_at_{bw / 1e9:g}GBps"] = (bw / per_token) if per_token > 0 else math.inf
    return out


def layer_ranges(layers):
    layers = sorted(layers)
    out, start = [], None
    for i, l in enumerate(layers):
        if start is None:
            start = l
        if i + 1 == len(layers) or layers[i + 1] != l + 1:
            out.append(str(start) if start == l else f"{start}-{l}")
            start = None
    return ",".join(out)


def summarise_roles(types):
    """role → {type: [layers]} (layer None for the non-block tensors)."""
    roles = OrderedDict()
    for name, t in types.items():
        r, l = role(name)
        roles.setdefault(r, OrderedDict()).setdefault(t, []).append(l)
    return roles


def role_cell(by_type):
    if len(by_type) == 1:
        return next(iter(by_type))
    return " / ".join(f"{t}×{len(ls)}" for t, ls in sorted(by_type.items(), key=lambda kv: -len(kv[1])))


# --- driver ----------------------------------------------------------------------------------------------------------

def gb(x):
    return f"{x / 1e9:,.1f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="/tmp/k2q", help="work folder: the small GGUFs, logs and table.json")
    ap.add_argument("--ftypes", default=",".join(DEFAULT_FTYPES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the quantised small GGUFs")
    ap.add_argument("--render", metavar="TABLE_JSON", help="only print the markdown of an earlier run's table.json")
    args = ap.parse_args()
    if args.render:
        with open(args.render) as f:
            print_markdown(json.load(f))
        return
    t_start = time.time()

    import gguf
    import llama_cpp
    versions = dict(llama_cpp_python=llama_cpp.__version__, gguf=_dist_version("gguf"), numpy=np.__version__)
    if versions != dict(llama_cpp_python="0.3.36", gguf="0.19.0", numpy="2.4.6"):
        print(f"note: pinned versions are llama-cpp-python 0.3.36, gguf 0.19.0, numpy 2.4.6; found {versions}",
              file=sys.stderr)

    k2_ne = check_twin()
    os.makedirs(args.out, exist_ok=True)
    src = os.path.join(args.out, "k2-twin-bf16.gguf")
    write_twin(gguf, src)
    imatrix_path = os.path.join(args.out, "imatrix.json")
    imatrix_entries(imatrix_path)

    def read_types(path):
        r = gguf.GGUFReader(path)
        return OrderedDict((t.name, t.tensor_type.name) for t in r.tensors)

    variants = OrderedDict()  # label → record
    variants["BF16 (source)"] = dict(ftype="BF16", imatrix=False, ok=True, types=read_types(src), seconds=0.0)
    failures = []
    for ftype in [f.strip().upper() for f in args.ftypes.split(",") if f.strip()]:
        modes = [False, True] if ftype.startswith(("IQ", "TQ")) else [False]
        for use_im in modes:
            label = ftype + (" (imatrix)" if use_im else "")
            dst = os.path.join(args.out, f"k2-twin-{ftype}{'-imatrix' if use_im else ''}.gguf")
            rc, log, secs = quantize(src, dst, ftype, args.threads, imatrix_path if use_im else None)
            with open(dst + ".log", "w") as f:
                f.write(log)
            if rc != 0:
                reason = failure_reason(log)
                failures.append(dict(label=label, reason=reason))
                print(f"{label}: llama_model_quantize failed ({secs:.1f} s): {reason}", file=sys.stderr)
                continue
            types = read_types(dst)
            variants[label] = dict(ftype=ftype, imatrix=use_im, ok=True, types=types, seconds=secs,
                                   fallbacks=int((re.findall(r"(\d+) of \d+ tensor\(s\) required fallback", log) or ["0"])[-1]))
            print(f"{label}: quantised in {secs:.1f} s", file=sys.stderr)
            if not args.keep:
                os.remove(dst)

    # K2 numbers per variant
    rows = []
    for label, v in variants.items():
        assert set(v["types"]) == set(k2_ne), label
        types = OrderedDict((n, v["types"][n]) for n in k2_ne)  # in convert's order
        per = {n: k2_bytes(gguf, k2_ne, n, t) for n, t in types.items()}
        total = sum(per.values())
        padded = sum(round_up(b, 32) for b in per.values())
        experts = sum(b for n, b in per.items() if n.endswith(EXPERT_ROLES))
        widest, raw, extent = expert_extent(gguf, types)
        res_plan = plan_resident(gguf, k2_ne, types)
        fc = {ram_label: forecast(res_plan, extent, ram) for ram_label, ram in RAMS}
        fc_decimal = {f"{g}e9": forecast(res_plan, extent, int(g) * 10**9) for g in (128, 256)}
        roles = summarise_roles(types)
        rows.append(dict(label=label, ftype=v["ftype"], imatrix=v["imatrix"], seconds=round(v["seconds"], 2),
                         fallback_tensors=v.get("fallbacks", 0),
                         total_bytes=total, total_bytes_padded32=padded, resident_bytes=total - experts,
                         plan_resident_bytes=res_plan, expert_bytes=experts,
                         expert_bytes_per_expert_mean=experts / ((K2["layers"] - K2["dense"]) * K2["experts"]),
                         widest_expert_types=widest, expert_raw_bytes=raw, expert_extent_bytes=extent,
                         store_expert_bytes=extent * (K2["layers"] - K2["dense"]) * K2["experts"],
                         bits_per_weight=total * 8 / sum(math.prod(ne) for ne in k2_ne.values()),
                         forecast=fc, forecast_decimal_ram=fc_decimal,
                         roles={r: {t: ls for t, ls in bt.items()} for r, bt in roles.items()},
                         tensor_types=dict(types)))

    out = dict(k2=K2, twin=TINY, k2_parameters=K2_PARAMETERS, versions=versions, failures=failures,
               plan_assumptions=dict(context=CONTEXT, kv="f16", kv_bytes=K2["layers"] * (K2["kv_lora"] + K2["rope"]) * 2 * CONTEXT,
                                     headroom="max(2 GiB, RAM/20)", ram="--ram 128G/256G = 128/256 × 2^30 bytes",
                                     drive_bw=DRIVE_BW, hit_rate="share of experts cached (uniform routing)"),
               variants=rows, seconds=round(time.time() - t_start, 1))
    with open(os.path.join(args.out, "table.json"), "w") as f:
        json.dump(out, f, indent=1)
    print_markdown(out)


def _dist_version(name):
    from importlib.metadata import version
    return version(name)


def print_markdown(out):
    rows = out["variants"]
    p = print
    p("## Kimi K2 in llama.cpp's standard quantisations (types from llama_model_quantize on a K2-structured twin)\n")
    p("Sizes in GB = 10^9 bytes (what `moestream plan` prints; its --ram 128G means 128 × 2^30 bytes). "
      "Total = tensor data (each tensor padded to 32 B adds < 1 MB); GGUF header and vocabulary (a few MB) not included.\n")
    p("| ftype | total GB (GiB) | bits/weight | resident GB (GGUF) | resident GB (plan: kv_b as f32) | routed experts GB "
      "| mean MB/expert | widest gate/up/down | MB/expert (widest) | extent MB | store experts GB |")
    p("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        w = r["widest_expert_types"]
        p(f"| {r['label']} | {gb(r['total_bytes'])} ({r['total_bytes'] / 2**30:,.1f}) | {r['bits_per_weight']:.3f} "
          f"| {gb(r['resident_bytes'])} | {gb(r['plan_resident_bytes'])} | {gb(r['expert_bytes'])} "
          f"| {r['expert_bytes_per_expert_mean'] / 1e6:.2f} | {w['gate']}/{w['up']}/{w['down']} "
          f"| {r['expert_raw_bytes'] / 1e6:.3f} | {r['expert_extent_bytes'] / 1e6:.3f} | {gb(r['store_expert_bytes'])} |")

    p("\n### `moestream plan` forecast (context 8192, f16 KV = 0.58 GB, uniform routing: hit rate = share cached)\n")
    p("| ftype | RAM | headroom GB | cache budget GB | experts cached | share | misses/token | GB read/token "
      "| tok/s @ 7 GB/s | tok/s @ 3 GB/s |")
    p("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        for ram_label, f in r["forecast"].items():
            if not f["runs"]:
                p(f"| {r['label']} | {ram_label} | {gb(f['headroom'])} | none (resident + KV + headroom > RAM) | 0 | 0 "
                  f"| – | – | – | – |")
                continue
            t7, t3 = f["tokens_per_s_at_7GBps"], f["tokens_per_s_at_3GBps"]
            fmt = lambda t: "all cached" if math.isinf(t) else f"{t:.2f}"
            p(f"| {r['label']} | {ram_label} | {gb(f['headroom'])} | {gb(f['budget'])} | {f['slots']:,} "
              f"| {f['share'] * 100:.1f}% | {f['misses_per_token']:.0f} | {f['bytes_per_token'] / 1e9:.2f} "
              f"| {fmt(t7)} | {fmt(t3)} |")

    p("\nThe same with RAM in decimal units (128e9 and 256e9 bytes, e.g. `--ram 128000000000`):\n")
    p("| ftype | RAM | cache budget GB | experts cached | share | GB read/token | tok/s @ 7 GB/s | tok/s @ 3 GB/s |")
    p("|---|---|---|---|---|---|---|---|")
    for r in rows:
        for ram_label, f in r["forecast_decimal_ram"].items():
            if not f["runs"]:
                p(f"| {r['label']} | {ram_label} | none | 0 | 0 | – | – | – |")
                continue
            t7, t3 = f["tokens_per_s_at_7GBps"], f["tokens_per_s_at_3GBps"]
            fmt = lambda t: "all cached" if math.isinf(t) else f"{t:.2f}"
            p(f"| {r['label']} | {ram_label} | {gb(f['budget'])} | {f['slots']:,} | {f['share'] * 100:.1f}% "
              f"| {f['bytes_per_token'] / 1e9:.2f} | {fmt(t7)} | {fmt(t3)} |")

    p("\n### Types per tensor role (×N = number of layers with that type)\n")
    roles = list(rows[0]["roles"])
    p("| role | " + " | ".join(r["label"] for r in rows) + " |")
    p("|---|" + "---|" * len(rows))
    for ro in roles:
        p(f"| {ro} | " + " | ".join(role_cell(r["roles"][ro]) for r in rows) + " |")

    p("\n### Roles whose type depends on the layer\n")
    for r in rows:
        for ro, bt in r["roles"].items():
            if len(bt) > 1:
                parts = "; ".join(f"{t}: blk {layer_ranges(ls)}" for t, ls in bt.items())
                p(f"- {r['label']} `{ro}`: {parts}")
    if out["failures"]:
        p("\n### ftypes llama_model_quantize refused\n")
        for f in out["failures"]:
            p(f"- {f['label']}: {f['reason']}")
    p(f"\n(run took {out['seconds']} s; JSON with every tensor's type: table.json)")


if __name__ == "__main__":
    main()
