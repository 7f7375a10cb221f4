#!/usr/bin/env python3
"""Writes the tiny DeepseekV3 checkpoints under Tests/Fixtures and transformers' own outputs for them.

Each model has Kimi K2's architecture (MLA, noaux_tc sigmoid router, shared experts, dense first layers) at toy
sizes, with random weights large enough that routing and greedy decoding are decisive, norm weights not all one
and a non-zero correction bias. For each one we record, computed by transformers in fp32 (eager attention):
  - the logits of every position of a prompt (one prefill pass),
  - a greedy continuation made by `generate` with transformers' own KV cache, and the logits of each step.

Configurations:
  kimi_k2      Kimi K2's shape: n_group 1, top-8 of 32, one dense layer, yarn factor 32, BF16, sharded,
               config.json as Kimi's release writes it (model_type kimi_k2, rope_scaling + rope_theta).
  deepseek_v3  DeepSeek-V3 grouped routing (n_group 4, topk_group 2), F32, single file, yarn with
               mscale != mscale_all_dim, config.json as transformers 5 writes it (rope_parameters).
  odd_dense2   two dense layers, odd sizes, no q LoRA (q_proj), plain RoPE without interleave,
               norm_topk_prob false, F16.

Run: .venv/bin/python Tools/make_fixtures.py  (versions pinned in Tools/requirements.txt)
"""
import json
import math
import os
import shutil
import sys
import tempfile

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "Fixtures", "models")
PROMPT_LEN = 12
NEW_TOKENS = 40
MIN_MARGIN = 2e-3  # smallest gap we accept between the best and second-best logit of a greedy step


def kimi_k2_config():
    return dict(
        vocab_size=256, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4,
        n_shared_experts=1, n_routed_experts=32, num_experts_per_tok=8, n_group=1, topk_group=1,
        routed_scaling_factor=2.827, norm_topk_prob=True, first_k_dense_replace=1,
        q_lora_rank=48, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
        max_position_embeddings=131072, rms_norm_eps=1e-5, num_nextn_predict_layers=0,
        rope_parameters=dict(rope_type="yarn", rope_theta=50000.0, factor=32.0, original_max_position_embeddings=4096,
                             beta_fast=1.0, beta_slow=1.0, mscale=1.0, mscale_all_dim=1.0),
        bos_token_id=254, eos_token_id=255, tie_word_embeddings=False,
    )


def deepseek_v3_config():
    return dict(
        vocab_size=256, hidden_size=64, intermediate_size=96, moe_intermediate_size=16,
        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4,
        n_shared_experts=1, n_routed_experts=16, num_experts_per_tok=4, n_group=4, topk_group=2,
        routed_scaling_factor=2.5, norm_topk_prob=True, first_k_dense_replace=1,
        q_lora_rank=40, kv_lora_rank=24, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12,
        max_position_embeddings=163840, rms_norm_eps=1e-6, num_nextn_predict_layers=0,
        rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=40.0, original_max_position_embeddings=4096,
                             beta_fast=32.0, beta_slow=1.0, mscale=0.8, mscale_all_dim=1.0),
        bos_token_id=0, eos_token_id=1, tie_word_embeddings=False,
    )


def odd_dense2_config():
    return dict(
        vocab_size=199, hidden_size=50, intermediate_size=70, moe_intermediate_size=18,
        num_hidden_layers=3, num_attention_heads=3, num_key_value_heads=3,
        n_shared_experts=1, n_routed_experts=12, num_experts_per_tok=3, n_group=1, topk_group=1,
        routed_scaling_factor=1.5, norm_topk_prob=False, first_k_dense_replace=2,
        q_lora_rank=None, kv_lora_rank=20, qk_nope_head_dim=12, qk_rope_head_dim=6, v_head_dim=10,
        max_position_embeddings=2048, rms_norm_eps=1e-6, num_nextn_predict_layers=0, rope_interleave=False,
        rope_parameters=dict(rope_type="default", rope_theta=10000.0),
        bos_token_id=0, eos_token_id=1, tie_word_embeddings=False,
    )


def randomize(model, seed):
    """Weights with real spread: N(0, 1/fan_in) matrices, unit embeddings, norms in [0.6, 1.4], bias in ±0.05."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.rand(p.shape, generator=g) * 0.8 + 0.6)
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_((torch.rand(b.shape, generator=g) - 0.5) * 0.1)


def round_to(model, dtype):
    """Rounds every weight to `dtype` and back, so the fp32 reference uses exactly the values we store."""
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.copy_(p.to(dtype).to(torch.float32))


def greedy_with_margins(model, prompt):
    """Greedy decoding by transformers with its KV cache. No end-of-sequence stop (and so no logits processor
    that would edit the scores): the raw logits of each step and the argmax tokens are what we compare against."""
    eos = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = None
    out = model.generate(
        torch.tensor([prompt]), do_sample=False, max_new_tokens=NEW_TOKENS,
        use_cache=True, output_logits=True, return_dict_in_generate=True, pad_token_id=0,
    )
    model.generation_config.eos_token_id = eos
    tokens = out.sequences[0, len(prompt):].tolist()
    assert len(tokens) == NEW_TOKENS
    steps = [s[0].float() for s in out.logits]
    assert all(int(torch.argmax(s)) == t for s, t in zip(steps, tokens))
    margins = [float(torch.topk(s, 2).values[0] - torch.topk(s, 2).values[1]) for s in steps]
    return tokens, [s.tolist() for s in steps], min(margins)


def make_model(cfg, seed, dtype):
    torch.manual_seed(seed)
    config = DeepseekV3Config(**cfg)
    config._attn_implementation = "eager"
    config._experts_implementation = "eager"
    model = DeepseekV3ForCausalLM(config).float().eval()
    randomize(model, seed)
    round_to(model, dtype)
    return model


def build(name, cfg, dtype, seed, sharded, release_style_config):
    out_dir = os.path.join(ROOT, name)
    shutil.rmtree(out_dir, ignore_errors=True)
    model = make_model(cfg, seed, dtype)
    prompt, prefill, tokens, step_logits, margin, attempt = reference_outputs(model, cfg, seed, name)
    os.makedirs(out_dir)
    model.save_pretrained(out_dir, max_shard_size="400KB" if sharded else "100GB")
    store_as(out_dir, dtype)
    if release_style_config:
        write_release_config(out_dir, cfg)
    write_reference(out_dir, name, dtype, prompt, prefill, tokens, step_logits, margin)
    print(f"{name}: {sum(p.numel() for p in model.parameters())} parameters, prompt attempt {attempt}, "
          f"min greedy margin {margin:.4f}")


def reference_outputs(model, cfg, seed, name):
    """A prompt whose greedy continuation is decisive at every step (no near-ties for float noise to flip),
    transformers' prefill logits for it, and its greedy continuation with the logits of each step."""
    g = torch.Generator().manual_seed(seed + 1)
    for attempt in range(50):
        prompt = torch.randint(0, cfg["vocab_size"], (PROMPT_LEN,), generator=g).tolist()
        with torch.no_grad():
            prefill = model(torch.tensor([prompt])).logits[0].float()
            tokens, step_logits, margin = greedy_with_margins(model, prompt)
        if margin >= MIN_MARGIN:
            break
    else:
        sys.exit(f"{name}: no prompt with a decisive greedy continuation")
    return prompt, prefill, tokens, step_logits, margin, attempt


def write_reference(out_dir, name, dtype, prompt, prefill, tokens, step_logits, margin):
    reference = dict(
        model=name, dtype=str(dtype).replace("torch.", ""), prompt=prompt,
        prefill_logits=prefill.tolist(), generated=tokens, generated_logits=step_logits,
        min_greedy_margin=margin, transformers=__import__("transformers").__version__, torch=torch.__version__,
    )
    with open(os.path.join(out_dir, "reference.json"), "w") as f:
        json.dump(reference, f)


def store_as(out_dir, dtype):
    """Rewrites the shards with weights in `dtype`; the correction bias stays F32 as in Kimi's release."""
    for fname in sorted(os.listdir(out_dir)):
        if not fname.endswith(".safetensors"):
            continue
        path = os.path.join(out_dir, fname)
        tensors = load_file(path)
        converted = {k: (v if k.endswith("e_score_correction_bias") else v.to(dtype)).contiguous()
                     for k, v in tensors.items()}
        save_file(converted, path, metadata={"format": "pt"})
    index = os.path.join(out_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            idx = json.load(f)
        total = 0
        for fname in set(idx["weight_map"].values()):
            for k, v in load_file(os.path.join(out_dir, fname)).items():
                total += v.numel() * v.element_size()
        idx["metadata"] = {"total_size": total}
        with open(index, "w") as f:
            json.dump(idx, f, indent=2)


def write_release_config(out_dir, cfg, quantization_config=None):
    """config.json the way Kimi K2's release ships it: rope_theta and rope_scaling at the top level."""
    rope = dict(cfg["rope_parameters"])
    theta = rope.pop("rope_theta")
    rope.pop("rope_type")
    rope["type"] = "yarn"
    release = {k: v for k, v in cfg.items() if k != "rope_parameters"}
    release.update(
        architectures=["DeepseekV3ForCausalLM"], model_type="kimi_k2", rope_theta=theta, rope_scaling=rope,
        hidden_act="silu", topk_method="noaux_tc", scoring_func="sigmoid", moe_layer_freq=1,
        torch_dtype="bfloat16", attention_bias=False, attention_dropout=0.0, initializer_range=0.02,
        use_cache=True, aux_loss_alpha=0.001, seq_aux=True, ep_size=1, pretraining_tp=1,
    )
    if quantization_config is not None:
        release["quantization_config"] = quantization_config
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(release, f, indent=2)


def fp32_state_dict(model):
    """The checkpoint's tensor names and values as transformers saves them (experts one Linear each)."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        state = {}
        for fname in sorted(os.listdir(tmp)):
            if fname.endswith(".safetensors"):
                state.update(load_file(os.path.join(tmp, fname)))
    return state


def save_sharded(state, out_dir, shards):
    """Writes `state` as `shards` safetensors files plus model.safetensors.index.json, as releases do."""
    names = sorted(state)
    per = math.ceil(len(names) / shards)
    weight_map, total = {}, 0
    for i in range(shards):
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: state[n].contiguous() for n in names[i * per:(i + 1) * per]}
        save_file(part, os.path.join(out_dir, fname), metadata={"format": "pt"})
        for n, v in part.items():
            weight_map[n] = fname
            total += v.numel() * v.element_size()
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def is_fp8_linear(name):
    """Kimi K2 Instruct's FP8 tensors: every projection of attention, dense MLP, shared and routed experts."""
    return name.endswith("_proj.weight")


def fp8_block_quantize(w, block=128):
    """Block FP8 as DeepSeek-V3/Kimi K2 Instruct store it: per 128×128 block, scale = amax / 448,
    q = e4m3(w / scale); the checkpoint's `weight_scale_inv` is that scale and dequantization multiplies."""
    rows, cols = w.shape
    br, bc = math.ceil(rows / block), math.ceil(cols / block)
    scales = torch.zeros(br, bc, dtype=torch.float32)
    q = torch.zeros(rows, cols, dtype=torch.float8_e4m3fn)
    for i in range(br):
        for j in range(bc):
            blk = w[i * block:(i + 1) * block, j * block:(j + 1) * block]
            s = blk.abs().max().clamp(min=1e-12) / 448.0
            scales[i, j] = s
            q[i * block:(i + 1) * block, j * block:(j + 1) * block] = (blk / s).to(torch.float8_e4m3fn)
    deq = q.float() * scales.repeat_interleave(block, 0)[:rows].repeat_interleave(block, 1)[:, :cols]
    return q, scales, deq


def build_fp8(name, cfg, seed):
    """Kimi K2 Instruct's format: projections in block FP8 with F32 weight_scale_inv, the rest BF16 (bias F32).
    transformers computes the reference from the dequantized weights (e4m3 value × block scale)."""
    out_dir = os.path.join(ROOT, name)
    shutil.rmtree(out_dir, ignore_errors=True)
    model = make_model(cfg, seed, torch.bfloat16)
    state = fp32_state_dict(model)
    stored, dequantized = {}, {}
    for n, v in state.items():
        if is_fp8_linear(n):
            q, s, deq = fp8_block_quantize(v.float())
            stored[n], stored[n.replace(".weight", ".weight_scale_inv")] = q, s
            dequantized[n] = deq
        else:
            stored[n] = v if n.endswith("e_score_correction_bias") else v.to(torch.bfloat16)
    load_checkpoint_values(model, dequantized)
    prompt, prefill, tokens, step_logits, margin, attempt = reference_outputs(model, cfg, seed, name)
    os.makedirs(out_dir)
    save_file({k: v.contiguous() for k, v in stored.items()}, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    write_release_config(out_dir, cfg, dict(activation_scheme="dynamic", fmt="e4m3", quant_method="fp8",
                                            weight_block_size=[128, 128]))
    write_reference(out_dir, name, "float8_e4m3fn", prompt, prefill, tokens, step_logits, margin)
    print(f"{name}: {len(dequantized)} FP8 matrices, prompt attempt {attempt}, min greedy margin {margin:.4f}")


KIMI_INT4_IGNORE = ["lm_head", "re:.*self_attn.*", "re:.*shared_experts.*", r"re:.*mlp\.(gate|up|gate_up|down)_proj.*",
                    r"re:.*mlp\.gate$"]


def build_int4(name, cfg, seed):
    """Kimi K2 Thinking's format, written by compressed-tensors itself: routed experts pack-quantized INT4
    (group 32, symmetric, BF16 scales), everything else BF16. The reference uses the dequantized values."""
    out_dir = os.path.join(ROOT, name)
    shutil.rmtree(out_dir, ignore_errors=True)
    model = make_model(cfg, seed, torch.bfloat16)
    state = fp32_state_dict(model)

    compressed, qc = int4_compress_experts(state, with_ignored=True)

    stored, dequantized = {}, {}
    for n, v in state.items():
        base = n[: -len(".weight")]
        if base + ".weight_packed" in compressed:
            packed, scale = compressed[base + ".weight_packed"], compressed[base + ".weight_scale"]
            stored[base + ".weight_packed"] = packed
            stored[base + ".weight_scale"] = scale
            stored[base + ".weight_shape"] = torch.tensor(list(v.shape), dtype=torch.int32)  # Kimi's files: I32
            dequantized[n] = int4_dequantize(packed, scale, v.shape)
        else:
            stored[n] = v if n.endswith("e_score_correction_bias") else v.to(torch.bfloat16)
    assert len(dequantized) == 3 * cfg["n_routed_experts"] * (cfg["num_hidden_layers"] - cfg["first_k_dense_replace"])
    load_checkpoint_values(model, dequantized)
    prompt, prefill, tokens, step_logits, margin, attempt = reference_outputs(model, cfg, seed, name)
    os.makedirs(out_dir)
    save_sharded(stored, out_dir, shards=3)
    write_release_config(out_dir, cfg, qc)
    write_reference(out_dir, name, "int4", prompt, prefill, tokens, step_logits, margin)
    print(f"{name}: {len(dequantized)} INT4 matrices, prompt attempt {attempt}, min greedy margin {margin:.4f}")


def int4_compress_experts(state, with_ignored=False):
    """Routed experts of a checkpoint-named state dict through compressed-tensors itself: one nn.Linear per
    expert (plus, with `with_ignored`, a router and the shared experts, which Kimi's ignore list must skip),
    int4 symmetric group 32 with dynamic scales in the weights' dtype (bf16), pack-quantized. Returns the
    compressed modules' state dict and the quantization_config to write, with Kimi's ignore list."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (QuantizationArgs, QuantizationConfig, QuantizationScheme,
                                                 apply_quantization_config)
    from compressed_tensors.quantization.utils import compute_dynamic_scales_and_zp

    root = nn.Module()
    for n, v in state.items():
        routed = n.endswith("_proj.weight") and ".mlp.experts." in n
        ignored = n.endswith("_proj.weight") and ".shared_experts." in n or n.endswith("mlp.gate.weight")
        if routed or (with_ignored and ignored):
            linear = nn.Linear(v.shape[1], v.shape[0], bias=False, dtype=torch.bfloat16)
            linear.weight.data.copy_(v.to(torch.bfloat16))
            put_module(root, n[: -len(".weight")], linear)
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
        num_bits=4, type="int", symmetric=True, strategy="group", group_size=32))
    apply_quantization_config(root, QuantizationConfig(config_groups={"group_0": scheme}, format="pack-quantized",
                                                       ignore=KIMI_INT4_IGNORE))
    for _, m in root.named_modules():
        if getattr(m, "quantization_scheme", None) is not None:
            scale, zero = compute_dynamic_scales_and_zp(m.weight, m.quantization_scheme.weights, m)
            m.weight_scale.data.copy_(scale)
            m.weight_zero_point.data.copy_(zero)
    compressor = ModelCompressor.from_pretrained_model(root, quantization_format="pack-quantized")
    compressor.compress_model(root)
    qc = compressor.quantization_config.model_dump(mode="json")
    qc["ignore"] = KIMI_INT4_IGNORE
    return root.state_dict(), qc


def release_values(directory):
    """Every tensor of every safetensors shard in `directory`, by name."""
    values = {}
    for fname in sorted(os.listdir(directory)):
        if fname.endswith(".safetensors"):
            values.update(load_file(os.path.join(directory, fname)))
    return values


def dense_values(values):
    """A release's tensors as plain weights: INT4 experts dequantized by the documented formula (their scale
    and shape tensors dropped), everything else widened to fp32."""
    dense = {}
    for n, v in values.items():
        if n.endswith(".weight_packed"):
            base = n[: -len(".weight_packed")]
            shape = tuple(values[base + ".weight_shape"].tolist())
            dense[base + ".weight"] = int4_dequantize(v, values[base + ".weight_scale"], shape)
        elif not (n.endswith(".weight_scale") or n.endswith(".weight_shape")):
            dense[n] = v.float()
    return dense


def int4_dequantize(packed, scale, shape):
    """W[r, c] = (((packed[r, c/8] >> 4·(c%8)) & 0xF) − 8) · scale[r, c/32]: the format as documented."""
    rows, cols = shape
    p = packed.to(torch.int64) & 0xFFFFFFFF
    nibbles = torch.stack([(p >> (4 * i)) & 0xF for i in range(8)], dim=-1).reshape(rows, cols)
    return (nibbles - 8).float() * scale.float().repeat_interleave(32, dim=1)


def put_module(root, path, module):
    parts = path.split(".")
    cur = root
    for p in parts[:-1]:
        if not hasattr(cur, p):
            cur.add_module(p, nn.Module())
        cur = getattr(cur, p)
    cur.add_module(parts[-1], module)


def load_checkpoint_values(model, values):
    """Puts checkpoint-named fp32 values into the (fused-expert) transformers model, by saving its state,
    replacing entries and loading it back through transformers' own loading path."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        for fname in os.listdir(tmp):
            if fname.endswith(".safetensors"):
                path = os.path.join(tmp, fname)
                tensors = load_file(path)
                tensors.update({k: v for k, v in values.items() if k in tensors})
                save_file(tensors, path, metadata={"format": "pt"})
        fresh = DeepseekV3ForCausalLM.from_pretrained(tmp, torch_dtype=torch.float32, attn_implementation="eager",
                                                      experts_implementation="eager").eval()
    model.load_state_dict(fresh.state_dict())
    check = fp32_state_dict(model)
    for k, v in values.items():
        assert torch.equal(check[k], v.float()), k


def kimi_k2_fp8_config():
    """Kimi-shaped, with dimensions ≥ 128 that are not multiples of 128 (hidden 160, dense 288), so FP8 has
    several blocks and partial edge blocks; still multiples of 32 so int4 conversion applies."""
    c = kimi_k2_config()
    c.update(hidden_size=160, intermediate_size=288)
    return c


def build_chat(name, seed):
    """A Kimi-shaped model whose vocabulary is the tokenizer fixture's (1024 ranks + 256 specials), shipped with
    the tokenizer files: what `run`, `chat` and the server need. Random weights: the text is noise."""
    out_dir = os.path.join(ROOT, name)
    shutil.rmtree(out_dir, ignore_errors=True)
    tok_dir = os.path.join(ROOT, "..", "tokenizer")
    with open(os.path.join(tok_dir, "corpus.json")) as f:
        ranks = json.load(f)["ranks"]
    cfg = kimi_k2_config()
    cfg.update(vocab_size=ranks + 256, bos_token_id=ranks, eos_token_id=ranks + 1)
    model = make_model(cfg, seed, torch.bfloat16)
    os.makedirs(out_dir)
    model.save_pretrained(out_dir)
    store_as(out_dir, torch.bfloat16)
    write_release_config(out_dir, cfg)
    for fname in ["tiktoken.model", "tokenizer_config.json"]:
        shutil.copy(os.path.join(tok_dir, fname), os.path.join(out_dir, fname))
    print(f"{name}: vocabulary {cfg['vocab_size']}, tokenizer files copied")


if __name__ == "__main__":
    torch.set_num_threads(2)
    build("kimi_k2", kimi_k2_config(), torch.bfloat16, seed=11, sharded=True, release_style_config=True)
    build("deepseek_v3", deepseek_v3_config(), torch.float32, seed=22, sharded=False, release_style_config=False)
    build("odd_dense2", odd_dense2_config(), torch.float16, seed=33, sharded=False, release_style_config=False)
    build_fp8("kimi_k2_fp8", kimi_k2_fp8_config(), seed=44)
    build_int4("kimi_k2_int4", kimi_k2_config(), seed=55)
    build_chat("kimi_k2_chat", seed=66)  # needs Tools/make_tokenizer_fixture.py's output
