#!/usr/bin/env python3
"""Trains the demo model: Kimi K2's architecture at toy size, on Python's standard library sources.

Architecture (transformers' DeepseekV3, as Kimi K2): MLA attention, YaRN RoPE (factor 32, θ 50000), a dense
first layer, then MoE layers of 64 routed experts (top-8, noaux_tc sigmoid router, n_group 1, routed scaling
2.827) plus one shared expert. Load balance by DeepSeek-V3's auxiliary-loss-free method: after every step each
layer's correction bias moves by γ·sign(mean load − expert load). Its own tiktoken-format vocabulary (Kimi's
pre-tokenizer, byte-level BPE, 4096 ranks + Kimi's 256 special ids).

Data: the top-level modules of this Python's standard library (PSF licence; LICENSE.txt is copied beside
the model). Every 10th file (sorted by name) is held out for perplexity.

Writes a release laid out as Kimi K2's (config.json, safetensors shards and index, tiktoken.model,
tokenizer_config.json, generation_config.json) twice: BF16 (OUT/bf16, regenerable, not committed) and
compressed-tensors INT4 pack-quantized routed experts (OUT/int4, committed), plus reference.json with torch's
perplexity of the held-out text for both, and sample generations.

Run: .venv/bin/python Tools/train_demo_model.py [--steps 1500] [--out Demo/kimi-demo]   (fixed seed)
"""
import argparse
import base64
import collections
import glob
import heapq
import json
import math
import os
import shutil
import sys
import time

import regex
import torch
import torch.nn as nn
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_tokenizer_fixture import KIMI_PATTERN, KIMI_SPECIALS, merge_pair  # noqa: E402

STDLIB = os.path.dirname(os.__file__)
RANKS = 4096
SEQ = 256


def corpus():
    files = sorted(glob.glob(os.path.join(STDLIB, "*.py")))
    train, held = [], []
    for i, f in enumerate(files):
        with open(f, encoding="utf-8", errors="replace") as h:
            (held if i % 10 == 0 else train).append(h.read())
    return "\n".join(train), "\n".join(held)


def train_bpe(text, ranks_wanted):
    """Byte-level BPE with incremental pair counts: merge the most frequent pair (ties: smallest pair bytes)."""
    pattern = regex.compile("(?V1)" + KIMI_PATTERN)
    counts = collections.Counter(pattern.findall(text))
    words = [[bytes([b]) for b in w.encode("utf-8")] for w in counts]
    freq = [counts[w] for w in counts]
    pairs = collections.Counter()
    where = collections.defaultdict(set)
    for i, w in enumerate(words):
        for a, b in zip(w, w[1:]):
            pairs[(a, b)] += freq[i]
            where[(a, b)].add(i)
    ranks = {bytes([i]): i for i in range(256)}
    heap = [(-c, p) for p, c in pairs.items()]
    heapq.heapify(heap)
    while len(ranks) < ranks_wanted and heap:
        c, pair = heapq.heappop(heap)
        if pairs.get(pair, 0) != -c or c == 0:
            if pairs.get(pair, 0) > 0:
                heapq.heappush(heap, (-pairs[pair], pair))
            continue
        token = pair[0] + pair[1]
        ranks[token] = len(ranks)
        touched = collections.Counter()
        for i in list(where[pair]):
            w = words[i]
            for a, b in zip(w, w[1:]):
                pairs[(a, b)] -= freq[i]
                touched[(a, b)] += 1
            out = merge_pair(w, pair, token)
            words[i] = out
            for a, b in zip(out, out[1:]):
                pairs[(a, b)] += freq[i]
                where[(a, b)].add(i)
                touched[(a, b)] += 1
        for p in touched:
            if pairs[p] > 0:
                heapq.heappush(heap, (-pairs[p], p))
        del pairs[pair]
    return ranks


def config(vocab):
    return dict(
        vocab_size=vocab, hidden_size=256, intermediate_size=768, moe_intermediate_size=128,
        num_hidden_layers=5, num_attention_heads=4, num_key_value_heads=4,
        n_shared_experts=1, n_routed_experts=64, num_experts_per_tok=8, n_group=1, topk_group=1,
        routed_scaling_factor=2.827, norm_topk_prob=True, first_k_dense_replace=1,
        q_lora_rank=96, kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32,
        max_position_embeddings=131072, rms_norm_eps=1e-6, num_nextn_predict_layers=0,
        rope_parameters=dict(rope_type="yarn", rope_theta=50000.0, factor=32.0, original_max_position_embeddings=4096,
                             beta_fast=1.0, beta_slow=1.0, mscale=1.0, mscale_all_dim=1.0),
        bos_token_id=RANKS, eos_token_id=RANKS + 1, tie_word_embeddings=False,
    )


def perplexity(model, ids, window=SEQ):
    """exp(mean NLL) over non-overlapping windows, each scored from its first token (as `moestream perplexity`)."""
    nll, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, window):
            chunk = ids[start:start + window + 1]
            if len(chunk) < 2:
                break
            x = torch.tensor([chunk[:-1]])
            logits = model(x).logits[0].double()
            logp = torch.log_softmax(logits, dim=-1)
            target = torch.tensor(chunk[1:])
            nll -= logp[torch.arange(len(target)), target].sum().item()
            count += len(target)
    return math.exp(nll / count), count


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Demo", "kimi-demo"))
    ap.add_argument("--heldout-tokens", type=int, default=8192)
    a = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    t0 = time.time()

    train_text, held_text = corpus()
    ranks = train_bpe(train_text, RANKS)
    specials = {KIMI_SPECIALS.get(i, f"<|reserved_token_{RANKS + i}|>"): RANKS + i for i in range(256)}
    import tiktoken
    enc = tiktoken.Encoding("kimi-demo", pat_str=KIMI_PATTERN, mergeable_ranks=ranks, special_tokens=specials)
    train_ids = enc.encode_ordinary(train_text)
    held_ids = enc.encode_ordinary(held_text)[: a.heldout_tokens + 1]
    print(f"vocabulary {len(ranks)} ranks; train {len(train_ids)} tokens, held-out {len(held_ids)} "
          f"({time.time() - t0:.0f} s)", flush=True)

    cfg = config(RANKS + 256)
    model_config = DeepseekV3Config(**cfg)
    model_config._attn_implementation = "sdpa"
    model_config._experts_implementation = "eager"
    model = DeepseekV3ForCausalLM(model_config).float()
    # Routers start neutral (transformers initialises them to zero); everything else as transformers does.
    for name, p in model.named_parameters():
        if name.endswith("mlp.gate.weight"):
            nn.init.normal_(p, std=0.02)
    routers = [m for n, m in model.named_modules() if n.endswith("mlp.gate")]
    loads = {}

    def hook(module, _inputs, output):
        loads[id(module)] = output[2].detach()
    for r in routers:
        r.register_forward_hook(hook)

    data = torch.tensor(train_ids)
    g = torch.Generator().manual_seed(1)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.95), weight_decay=0.1)
    warm = max(1, a.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1, (s + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1, s / a.steps)))))
    gamma = 1e-3
    model.train()
    for step in range(a.steps):
        starts = torch.randint(0, len(data) - SEQ - 1, (a.batch,), generator=g)
        x = torch.stack([data[s:s + SEQ] for s in starts])
        y = torch.stack([data[s + 1:s + SEQ + 1] for s in starts])
        logits = model(x).logits
        loss = nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():  # auxiliary-loss-free balancing (DeepSeek-V3)
            for r in routers:
                load = torch.bincount(loads[id(r)].flatten(), minlength=cfg["n_routed_experts"]).float()
                r.e_score_correction_bias += gamma * torch.sign(load.mean() - load)
        if step % 50 == 0 or step == a.steps - 1:
            print(f"step {step} loss {loss.item():.3f} lr {sched.get_last_lr()[0]:.2e} ({time.time() - t0:.0f} s)", flush=True)

    model.eval()
    out = os.path.abspath(a.out)
    shutil.rmtree(out, ignore_errors=True)
    bf16_dir, int4_dir = os.path.join(out, "bf16"), os.path.join(out, "int4")
    write_release(model, cfg, enc, ranks, specials, bf16_dir, int4_dir)
    ppl_bf16, _ = release_perplexity(model, bf16_dir, held_ids)
    ppl_int4, n = release_perplexity(model, int4_dir, held_ids)
    with open(os.path.join(int4_dir, "heldout.txt"), "w") as f:
        f.write(enc.decode(held_ids))
    ref = {"heldout_tokens": n, "window": SEQ, "perplexity_bf16": ppl_bf16, "perplexity_int4": ppl_int4,
           "steps": a.steps, "batch": a.batch, "seq": SEQ, "final_loss": loss.item(), "seconds": time.time() - t0,
           "torch": torch.__version__}
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(ref, f, indent=2)
    print(json.dumps(ref, indent=2))


def write_release(model, cfg, enc, ranks, specials, bf16_dir, int4_dir):
    """BF16 release, then the INT4 release whose routed experts go through compressed-tensors."""
    from make_fixtures import fp32_state_dict, int4_compress_experts, save_sharded, write_release_config

    state = fp32_state_dict(model)
    for d in (bf16_dir, int4_dir):
        os.makedirs(d)
        with open(os.path.join(d, "tiktoken.model"), "w") as f:
            for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
                f.write(f"{base64.b64encode(token).decode()} {rank}\n")
        tok_config = {"added_tokens_decoder": {str(i): {"content": s, "special": True} for s, i in specials.items()},
                      "bos_token": "[BOS]", "eos_token": "[EOS]", "model_max_length": 131072,
                      "tokenizer_class": "TikTokenTokenizer"}
        with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
            json.dump(tok_config, f, indent=1)
        with open(os.path.join(d, "generation_config.json"), "w") as f:
            json.dump({"bos_token_id": RANKS, "eos_token_id": [RANKS + 1, RANKS + 2], "temperature": 0.6}, f)
        shutil.copy(os.path.join(STDLIB, "LICENSE.txt"), os.path.join(d, "LICENSE-training-data.txt"))
    bf16 = {k: (v if k.endswith("e_score_correction_bias") else v.to(torch.bfloat16)) for k, v in state.items()}
    save_sharded(bf16, bf16_dir, shards=3)
    write_release_config(bf16_dir, cfg)

    compressed, qc = int4_compress_experts(state)
    int4 = {}
    for n, v in bf16.items():
        base = n[: -len(".weight")]
        if base + ".weight_packed" in compressed:
            int4[base + ".weight_packed"] = compressed[base + ".weight_packed"]
            int4[base + ".weight_scale"] = compressed[base + ".weight_scale"]
            int4[base + ".weight_shape"] = torch.tensor(list(v.shape), dtype=torch.int32)
        else:
            int4[n] = v
    save_sharded(int4, int4_dir, shards=3)
    write_release_config(int4_dir, cfg, qc)


def release_perplexity(model, release_dir, held_ids):
    """torch's perplexity of exactly what a release holds (INT4 experts dequantized by the documented formula,
    BF16 elsewhere), computed in fp32 by the trained model object with those values loaded."""
    from make_fixtures import dense_values, load_checkpoint_values, release_values
    load_checkpoint_values(model, dense_values(release_values(release_dir)))
    return perplexity(model.eval(), held_ids)


if __name__ == "__main__":
    main()
