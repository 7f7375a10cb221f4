#!/usr/bin/env python3
"""Writes a Kimi K2 slice at real dimensions, in Kimi K2 Thinking's INT4 pack-quantized format, straight to disk.

Real sizes: hidden 7168, 64 heads, q_lora 1536, kv_lora 512, nope 128 / rope 64 / v 128, dense intermediate
18432, 384 routed experts of 2048 (top-8), one shared expert. Layers: one dense + N MoE (default 2); the
vocabulary is reduced (default 8192). Routed experts are I32 `weight_packed` + BF16 `weight_scale` +
I32 `weight_shape`; everything else BF16 (router bias F32), as Kimi's release.

Nothing is held in memory: each tensor is generated and written in chunks of at most 64 MB, one shard per
layer. Values are random but sane (scales 2^-9..2^-6, normal weights × 0.02), so the forward pass is finite.

Usage: python3 Tools/make_k2_slice.py OUT_DIR [--moe-layers 2] [--vocab 8192] [--seed 0]
"""
import argparse
import json
import math
import os

import numpy as np

H, HEADS, QL, KVL, NOPE, ROPE, V = 7168, 64, 1536, 512, 128, 64, 128
DENSE_I, MOE_I, EXPERTS, TOPK = 18432, 2048, 384, 8
CHUNK = 64 << 20


def config(layers, vocab):
    return {
        "architectures": ["DeepseekV3ForCausalLM"], "model_type": "kimi_k2", "vocab_size": vocab,
        "hidden_size": H, "intermediate_size": DENSE_I, "moe_intermediate_size": MOE_I,
        "num_hidden_layers": layers, "num_attention_heads": HEADS, "num_key_value_heads": HEADS,
        "n_shared_experts": 1, "n_routed_experts": EXPERTS, "num_experts_per_tok": TOPK, "n_group": 1,
        "topk_group": 1, "routed_scaling_factor": 2.827, "norm_topk_prob": True, "first_k_dense_replace": 1,
        "moe_layer_freq": 1, "q_lora_rank": QL, "kv_lora_rank": KVL, "qk_nope_head_dim": NOPE,
        "qk_rope_head_dim": ROPE, "v_head_dim": V, "topk_method": "noaux_tc", "scoring_func": "sigmoid",
        "hidden_act": "silu", "max_position_embeddings": 262144, "rms_norm_eps": 1e-6, "rope_theta": 50000.0,
        "rope_scaling": {"type": "yarn", "factor": 64.0, "original_max_position_embeddings": 4096,
                         "beta_fast": 1.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0},
        "tie_word_embeddings": False, "bos_token_id": vocab - 2, "eos_token_id": vocab - 1,
        "num_nextn_predict_layers": 0, "torch_dtype": "bfloat16",
        "quantization_config": {
            "quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": {
                "num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": 32,
                "dynamic": False}, "input_activations": None, "output_activations": None}},
            "ignore": ["lm_head", "re:.*self_attn.*", "re:.*shared_experts.*",
                       "re:.*mlp\\.(gate|up|gate_up|down)_proj.*", "re:.*mlp\\.gate$"],
            "kv_cache_scheme": None},
    }


def layer_tensors(l, moe):
    """(name, dtype, shape, kind) of one layer, kind telling how to fill it."""
    p = f"model.layers.{l}."
    out = [(p + "input_layernorm.weight", "BF16", [H], "norm"), (p + "post_attention_layernorm.weight", "BF16", [H], "norm"),
           (p + "self_attn.q_a_proj.weight", "BF16", [QL, H], "w"), (p + "self_attn.q_a_layernorm.weight", "BF16", [QL], "norm"),
           (p + "self_attn.q_b_proj.weight", "BF16", [HEADS * (NOPE + ROPE), QL], "w"),
           (p + "self_attn.kv_a_proj_with_mqa.weight", "BF16", [KVL + ROPE, H], "w"),
           (p + "self_attn.kv_a_layernorm.weight", "BF16", [KVL], "norm"),
           (p + "self_attn.kv_b_proj.weight", "BF16", [HEADS * (NOPE + V), KVL], "w"),
           (p + "self_attn.o_proj.weight", "BF16", [H, HEADS * V], "w")]
    if not moe:
        out += [(p + f"mlp.{n}_proj.weight", "BF16", s, "w") for n, s in
                [("gate", [DENSE_I, H]), ("up", [DENSE_I, H]), ("down", [H, DENSE_I])]]
        return out
    out += [(p + "mlp.gate.weight", "BF16", [EXPERTS, H], "w"), (p + "mlp.gate.e_score_correction_bias", "F32", [EXPERTS], "bias")]
    out += [(p + f"mlp.shared_experts.{n}_proj.weight", "BF16", s, "w") for n, s in
            [("gate", [MOE_I, H]), ("up", [MOE_I, H]), ("down", [H, MOE_I])]]
    for e in range(EXPERTS):
        for n, (rows, cols) in [("gate", (MOE_I, H)), ("up", (MOE_I, H)), ("down", (H, MOE_I))]:
            b = p + f"mlp.experts.{e}.{n}_proj."
            out += [(b + "weight_packed", "I32", [rows, cols // 8], "packed"),
                    (b + "weight_scale", "BF16", [rows, cols // 32], "scale"),
                    (b + "weight_shape", "I32", [2], f"shape:{rows},{cols}")]
    return out


SIZE = {"BF16": 2, "F32": 4, "I32": 4}


def fill(kind, dtype, n_elems, rng):
    """Yields the bytes of a tensor in chunks."""
    per = CHUNK // SIZE[dtype]
    done = 0
    while done < n_elems:
        n = min(per, n_elems - done)
        if kind == "packed":
            yield rng.bytes(n * 4)
        elif kind == "scale":  # bf16 of 2^-9 .. 2^-6
            yield (rng.uniform(2.0 ** -9, 2.0 ** -6, n).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).tobytes()
        elif kind == "w":
            x = rng.standard_normal(n, dtype=np.float32) * 0.02
            yield (x.view(np.uint32) >> 16).astype(np.uint16).tobytes()
        elif kind == "norm":
            x = rng.uniform(0.8, 1.2, n).astype(np.float32)
            yield (x.view(np.uint32) >> 16).astype(np.uint16).tobytes()
        elif kind == "bias":
            yield (rng.uniform(-0.01, 0.01, n).astype(np.float32)).tobytes()
        elif kind.startswith("shape:"):
            yield np.array([int(v) for v in kind[6:].split(",")], dtype=np.int32).tobytes()
        done += n


def write_shard(path, tensors, rng):
    header, offset = {}, 0
    for name, dtype, shape, _ in tensors:
        nbytes = math.prod(shape) * SIZE[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for name, dtype, shape, kind in tensors:
            for chunk in fill(kind, dtype, math.prod(shape), rng):
                f.write(chunk)
            f.flush()
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return offset


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--moe-layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    layers = 1 + a.moe_layers
    rng = np.random.default_rng(a.seed)
    shards = [[("model.embed_tokens.weight", "BF16", [a.vocab, H], "w")] + layer_tensors(0, False)]
    shards += [layer_tensors(l, True) for l in range(1, layers)]
    shards[-1] += [("model.norm.weight", "BF16", [H], "norm"), ("lm_head.weight", "BF16", [a.vocab, H], "w")]
    weight_map, total = {}, 0
    for i, tensors in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        total += write_shard(os.path.join(a.out, fname), tensors, rng)
        weight_map.update({t[0]: fname for t in tensors})
        print(f"{fname}: {len(tensors)} tensors, total so far {total / 1e9:.2f} GB", flush=True)
    with open(os.path.join(a.out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(config(layers, a.vocab), f, indent=2)


if __name__ == "__main__":
    main()
