#!/usr/bin/env python3
"""torch's perplexity of the committed INT4 demo release on its held-out text, at several lengths: the numbers
`moestream perplexity` must reproduce within 1% (tests use the short one; docs quote the long one).

Rebuilds transformers' DeepseekV3 from the release's config, loads exactly the release's values (experts
dequantized by the documented INT4 formula, BF16 elsewhere) and scores with the same windows as moestream.
Run: .venv/bin/python Tools/demo_reference.py [Demo/kimi-demo]
"""
import base64
import json
import os
import sys

import tiktoken
import torch
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import dense_values, load_checkpoint_values, release_values  # noqa: E402
from make_tokenizer_fixture import KIMI_PATTERN  # noqa: E402
from train_demo_model import perplexity  # noqa: E402


def load_release(release):
    """transformers' DeepseekV3 holding exactly the release's values (fp32, eager attention), and its tokenizer."""
    with open(os.path.join(release, "config.json")) as f:
        cfg = json.load(f)
    rope = dict(cfg.pop("rope_scaling"))
    rope.pop("type", None)
    cfg["rope_parameters"] = dict(rope_type="yarn", rope_theta=cfg.pop("rope_theta"), **rope)
    for k in ["quantization_config", "architectures", "model_type", "topk_method", "scoring_func", "moe_layer_freq",
              "torch_dtype", "aux_loss_alpha", "seq_aux", "ep_size"]:
        cfg.pop(k, None)
    config = DeepseekV3Config(**cfg)
    config._attn_implementation = "eager"
    config._experts_implementation = "eager"
    model = DeepseekV3ForCausalLM(config).float().eval()
    load_checkpoint_values(model, dense_values(release_values(release)))
    ranks = {}
    with open(os.path.join(release, "tiktoken.model")) as f:
        for line in f:
            b, r = line.split()
            ranks[base64.b64decode(b)] = int(r)
    enc = tiktoken.Encoding("kimi-demo", pat_str=KIMI_PATTERN, mergeable_ranks=ranks, special_tokens={})
    return model, enc


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Demo", "kimi-demo")
    release = os.path.join(root, "int4")
    torch.set_num_threads(2)
    model, enc = load_release(release)
    with open(os.path.join(release, "heldout.txt")) as f:
        ids = enc.encode_ordinary(f.read())
    # Greedy continuations (transformers' own KV cache) that `moestream generate` must reproduce.
    prompts = {"code": "def fibonacci(n):\n    ", "class": "class Counter(dict):\n    \"\"\"", "prose": "# This module provides"}
    greedy = {}
    for name, text in prompts.items():
        prompt = enc.encode_ordinary(text)
        model.generation_config.eos_token_id = None
        g = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=32, use_cache=True, pad_token_id=0,
                           output_logits=True, return_dict_in_generate=True)
        tokens = g.sequences[0, len(prompt):].tolist()
        # The gap between the best and second-best logit at each step: where it is tiny, float noise may flip the
        # choice, so tests compare only up to the first step with a margin under 1e-3.
        margins = [float(torch.topk(l[0], 2).values[0] - torch.topk(l[0], 2).values[1]) for l in g.logits]
        greedy[name] = {"text": text, "prompt": prompt, "tokens": tokens, "continuation": enc.decode(tokens), "margins": margins}
        print(f"{name}: {text!r} → {enc.decode(tokens)!r}", flush=True)
    out = {}
    for n in [512, 8192]:
        ppl, count = perplexity(model, ids[: n + 1])
        out[str(n)] = {"perplexity": ppl, "tokens": count}
        print(f"{count} tokens: perplexity {ppl:.4f}", flush=True)
    with open(os.path.join(release, "perplexity.json"), "w") as f:
        json.dump({"window": 256, "heldout": "heldout.txt", "torch": torch.__version__, "by_tokens": out, "greedy": greedy},
                  f, indent=2, ensure_ascii=False)


if __name__ == "__main__":
    main()
