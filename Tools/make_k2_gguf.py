#!/usr/bin/env python3
"""Writes the Kimi K2 slice from `Tools/make_k2_slice.py` as a GGUF that llama.cpp runs (architecture deepseek2).

Same weights, two files: our store is converted from the slice by `moestream convert`; this script reads the same
slice independently and writes
- routed experts as GGUF Q4_0: the slice's INT4 values decoded by compressed-tensors' documented formula
  (`W[r,c] = (((packed[r,c/8] >> 4(c%8)) & 0xF) − 8) · scale[r,c/32]`) and regrouped into Q4_0 blocks
  (fp16 d, byte j = element j | element j+16 << 4). The arithmetic is the same as ours when every bf16 scale is
  exact in fp16, which is checked for every scale (the script fails otherwise);
- every other tensor exactly as stored: BF16 stays BF16 (norm weights widened to F32, which is exact, because
  llama.cpp multiplies norms in F32), the router bias F32;
- kv_b split into attn_k_b (transposed) and attn_v_b as llama.cpp's MLA expects (what convert_hf_to_gguf.py does);
- a stand-in SentencePiece vocabulary of `vocab_size` entries (the slice has no tokenizer; the benchmark feeds
  token ids).

Nothing large is held in memory: one expert matrix at a time.

Usage: python3 Tools/make_k2_gguf.py SLICE_DIR OUT.gguf   (SLICE_DIR: the slice, or any Kimi K2 INT4 checkpoint
       such as Tests/Fixtures/models/kimi_k2_int4, which Tools/compare_long_context.py uses)
Pinned: gguf==0.19.0, numpy==2.4.6 (Tools/bench-requirements.txt).
"""
import argparse
import json
import math
import os
import struct
import sys
import time

import numpy as np
import gguf

ALIGN = 32


class Slice:
    """The slice's safetensors shards, memory-mapped."""

    def __init__(self, root):
        self.root = root
        index = json.load(open(os.path.join(root, "model.safetensors.index.json")))
        self.where = index["weight_map"]
        self.headers, self.maps = {}, {}
        for shard in sorted(set(self.where.values())):
            path = os.path.join(root, shard)
            with open(path, "rb") as f:
                n = struct.unpack("<Q", f.read(8))[0]
                self.headers[shard] = (json.loads(f.read(n)), 8 + n)
            self.maps[shard] = np.memmap(path, dtype=np.uint8, mode="r")

    def raw(self, name):
        """(dtype, shape, uint8 view) of one tensor."""
        shard = self.where[name]
        header, base = self.headers[shard]
        info = header[name]
        a, b = info["data_offsets"]
        return info["dtype"], info["shape"], self.maps[shard][base + a:base + b]

    def array(self, name):
        dtype, shape, data = self.raw(name)
        np_type = {"BF16": np.uint16, "F32": np.float32, "I32": np.int32}[dtype]
        return dtype, data.view(np_type).reshape(shape)


def bf16_to_f32(u16):
    return (u16.astype(np.uint32) << 16).view(np.float32)


def q4_0_blocks(packed, scale_bf16, where):
    """compressed-tensors pack-quantized INT4 [rows, cols/8] I32 + bf16 scales [rows, cols/32] → Q4_0 bytes
    [rows, cols/32 · 18]."""
    rows = packed.shape[0]
    words = packed.view(np.uint32)
    shifts = (4 * np.arange(8, dtype=np.uint32))
    nibbles = ((words[:, :, None] >> shifts) & 0xF).astype(np.uint8).reshape(rows, -1)  # [rows, cols], q + 8
    groups = nibbles.reshape(rows, -1, 32)                                                 # [rows, G, 32]
    qs = groups[:, :, :16] | (groups[:, :, 16:] << 4)                                     # [rows, G, 16]
    s32 = bf16_to_f32(scale_bf16)                                                          # [rows, G]
    s16 = s32.astype(np.float16)
    if not np.array_equal(s16.astype(np.float32), s32):
        bad = np.argwhere(s16.astype(np.float32) != s32)[0]
        sys.exit(f"{where}: scale [{bad[0]}, {bad[1]}] = {s32[tuple(bad)]!r} is not exact in fp16")
    out = np.empty((rows, groups.shape[1], 18), dtype=np.uint8)
    out[:, :, :2] = s16.view(np.uint8).reshape(rows, -1, 2)
    out[:, :, 2:] = qs
    return out.reshape(rows, -1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("slice")
    ap.add_argument("out")
    a = ap.parse_args()
    cfg = json.load(open(os.path.join(a.slice, "config.json")))
    src = Slice(a.slice)
    L, H, V = cfg["num_hidden_layers"], cfg["hidden_size"], cfg["vocab_size"]
    heads, nope, rope, vdim, kvl = (cfg["num_attention_heads"], cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"],
                                    cfg["v_head_dim"], cfg["kv_lora_rank"])
    E, dense = cfg["n_routed_experts"], cfg["first_k_dense_replace"]
    rs = cfg["rope_scaling"]

    w = gguf.GGUFWriter(a.out, "deepseek2")
    w.add_block_count(L)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(H)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(1)  # MLA as MQA, as convert_hf_to_gguf.py writes it
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_expert_count(E)
    w.add_expert_used_count(cfg["num_experts_per_tok"])
    w.add_expert_group_count(cfg["n_group"])
    w.add_expert_group_used_count(cfg["topk_group"])
    w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
    w.add_leading_dense_block_count(dense)
    w.add_vocab_size(V)
    w.add_q_lora_rank(cfg["q_lora_rank"])
    w.add_kv_lora_rank(kvl)
    w.add_key_length(kvl + rope)
    w.add_value_length(kvl)
    w.add_key_length_mla(nope + rope)
    w.add_value_length_mla(vdim)
    w.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
    w.add_expert_shared_count(cfg["n_shared_experts"])
    w.add_expert_weights_scale(cfg["routed_scaling_factor"])
    w.add_expert_weights_norm(bool(cfg["norm_topk_prob"]))
    w.add_rope_dimension_count(rope)
    w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    w.add_rope_scaling_factor(rs["factor"])
    w.add_rope_scaling_orig_ctx_len(rs["original_max_position_embeddings"])
    w.add_rope_scaling_yarn_beta_fast(rs["beta_fast"])
    w.add_rope_scaling_yarn_beta_slow(rs["beta_slow"])
    w.add_rope_scaling_yarn_log_mul(0.1 * rs["mscale_all_dim"])  # llama.cpp divides by 0.1 again
    # Stand-in vocabulary: <unk> <s> </s>, the 256 byte tokens, then plain pieces.
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"\u2581t{i}" for i in range(len(tokens), V)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + [gguf.TokenType.BYTE] * 256
    types += [gguf.TokenType.NORMAL] * (V - len(types))
    tokens, types = tokens[:V], types[:V]  # a toy vocabulary (the fixtures' 256) keeps the first byte tokens
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * V)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)

    # (gguf name, numpy-order shape, ggml type, writer) in file order; writers yield byte chunks.
    plan = []

    def bf16(name, hf, shape=None):
        dtype, arr = src.array(hf)
        assert dtype == "BF16", hf
        shape = shape or list(arr.shape)
        plan.append((name, shape, gguf.GGMLQuantizationType.BF16, lambda: [np.ascontiguousarray(arr)]))

    def f32(name, hf):
        dtype, arr = src.array(hf)
        conv = (lambda: [bf16_to_f32(arr)]) if dtype == "BF16" else (lambda: [arr.astype(np.float32)])
        plan.append((name, list(arr.shape), gguf.GGMLQuantizationType.F32, conv))

    bf16("token_embd.weight", "model.embed_tokens.weight")
    for l in range(L):
        p, b = f"model.layers.{l}.", f"blk.{l}."
        f32(b + "attn_norm.weight", p + "input_layernorm.weight")
        f32(b + "attn_q_a_norm.weight", p + "self_attn.q_a_layernorm.weight")
        f32(b + "attn_kv_a_norm.weight", p + "self_attn.kv_a_layernorm.weight")
        bf16(b + "attn_q_a.weight", p + "self_attn.q_a_proj.weight")
        bf16(b + "attn_q_b.weight", p + "self_attn.q_b_proj.weight")
        bf16(b + "attn_kv_a_mqa.weight", p + "self_attn.kv_a_proj_with_mqa.weight")
        _, kvb = src.array(p + "self_attn.kv_b_proj.weight")           # [heads·(nope + v), kvl]
        kvb = kvb.reshape(heads, nope + vdim, kvl)
        k_b = kvb[:, :nope, :].transpose(0, 2, 1)                        # [heads, kvl, nope]
        v_b = kvb[:, nope:, :]                                           # [heads, v, kvl]
        plan.append((b + "attn_k_b.weight", [heads, kvl, nope], gguf.GGMLQuantizationType.BF16,
                     lambda k_b=k_b: [np.ascontiguousarray(k_b)]))
        plan.append((b + "attn_v_b.weight", [heads, vdim, kvl], gguf.GGMLQuantizationType.BF16,
                     lambda v_b=v_b: [np.ascontiguousarray(v_b)]))
        bf16(b + "attn_output.weight", p + "self_attn.o_proj.weight")
        f32(b + "ffn_norm.weight", p + "post_attention_layernorm.weight")
        if l < dense:
            for n in ("gate", "up", "down"):
                bf16(b + f"ffn_{n}.weight", p + f"mlp.{n}_proj.weight")
            continue
        bf16(b + "ffn_gate_inp.weight", p + "mlp.gate.weight")
        f32(b + "exp_probs_b.bias", p + "mlp.gate.e_score_correction_bias")
        for n in ("gate", "up", "down"):
            bf16(b + f"ffn_{n}_shexp.weight", p + f"mlp.shared_experts.{n}_proj.weight")
        for n in ("gate", "up", "down"):
            rows, cols = (np.array(src.array(p + f"mlp.experts.0.{n}_proj.weight_shape")[1])).tolist()

            def experts(p=p, n=n, l=l):
                for e in range(E):
                    q = f"{p}mlp.experts.{e}.{n}_proj."
                    _, packed = src.array(q + "weight_packed")
                    _, scale = src.array(q + "weight_scale")
                    yield q4_0_blocks(packed, scale, f"layer {l} expert {e} {n}_proj")
            plan.append((b + f"ffn_{n}_exps.weight", [E, rows, cols], gguf.GGMLQuantizationType.Q4_0, experts))
    f32("output_norm.weight", "model.norm.weight")
    bf16("output.weight", "lm_head.weight")

    for name, shape, qtype, _ in plan:
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        nbytes = math.prod(shape) // block * size
        byte_shape = shape[:-1] + [shape[-1] // block * size]
        w.add_tensor_info(name, byte_shape, np.dtype(np.uint8), nbytes, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    f = w.fout[0]
    start, done = time.time(), 0
    for name, shape, qtype, chunks in plan:
        f.write(b"\0" * ((-f.tell()) % ALIGN))
        n = 0
        for chunk in chunks():
            chunk.tofile(f)
            n += chunk.nbytes
        f.write(b"\0" * ((-n) % ALIGN))
        done += n
        print(f"{name}: {n / 1e6:.1f} MB ({done / 1e9:.2f} GB, {time.time() - start:.0f} s)", flush=True)
    f.flush()
    os.fsync(f.fileno())
    f.close()


if __name__ == "__main__":
    main()
