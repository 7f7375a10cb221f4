#!/usr/bin/env python3
"""Three implementations of one model over a long prompt: transformers (the reference), moestream and llama.cpp.

The benchmark slice is too large for transformers, so this checks the long-context path where all three can run:
the Kimi K2 INT4 fixture (Kimi K2 Thinking's format, yarn rope, MLA, top-8 sigmoid router). For a random prompt of
LENGTH tokens it computes the logits of every position
  - with transformers in fp32 (the expert weights dequantized by compressed-tensors' formula, eager attention),
  - with `moestream logits --exact` on a store converted from the fixture directory, and again with the default
    arithmetic (int8 rounding of the routed experts' gate/up inputs) and with `--expert-activations q8` (the down
    inputs too: llama.cpp's rounding),
  - with llama.cpp on a GGUF that Tools/make_k2_gguf.py writes from the same directory (Q4_0 experts, same values),
and prints, per implementation and position range, the largest |Δ logit| against transformers and how many
positions have a different argmax, next to transformers with llama.cpp's Q8_0 rounding of expert inputs added.
It exits 1 if moestream --exact's argmax differs from transformers' anywhere or a logit is off by more than 1e-3.

Usage (from the repository root, after `swift build -c release` and with both venvs made):
  .venv/bin/python Tools/compare_long_context.py [--length 512] [--model Tests/Fixtures/models/kimi_k2_int4]
With --write-reference Tests/Fixtures/long-context/kimi_k2_int4.json it writes the fixture the Swift test
`longPromptMatchesTransformers` reads (transformers only).
Needs: .venv (Tools/requirements.txt: torch, transformers, compressed-tensors) and .venv-bench
(Tools/bench-requirements.txt: llama-cpp-python, gguf), as Tools/bench-vs-llamacpp makes it.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as fx  # noqa: E402  (the fixture writer's own loading path for the reference)


def transformers_logits(model_dir, prompt, q8_expert_inputs=False):
    """[len(prompt), vocab] fp32 logits from transformers with the checkpoint's exact (dequantized) values.

    With `q8_expert_inputs`, every input of a routed expert's matrices is first rounded the way llama.cpp rounds
    the activations it multiplies with Q4_0 weights (Q8_0: blocks of 32, d = max|x|/127 in fp16, x ≈ round(x/d)·d),
    which shows how far llama.cpp's own arithmetic alone moves the logits."""
    import transformers.models.deepseek_v3.modeling_deepseek_v3 as modeling
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    want = fx.kimi_k2_config()
    for k, v in want.items():
        if k != "rope_parameters":
            assert cfg.get(k) == v, f"{model_dir}: config {k} = {cfg.get(k)!r}, the Kimi fixture config has {v!r}"
    model = fx.make_model(want, seed=0, dtype=torch.bfloat16)
    fx.load_checkpoint_values(model, fx.dense_values(fx.release_values(model_dir)))
    experts_forward, linear = modeling.DeepseekV3Experts.forward, torch.nn.functional.linear

    def q8_forward(self, *args, **kwargs):
        torch.nn.functional.linear = lambda x, w, b=None: linear(q8_0(x), w, b)
        try:
            return experts_forward(self, *args, **kwargs)
        finally:
            torch.nn.functional.linear = linear
    if q8_expert_inputs:
        modeling.DeepseekV3Experts.forward = q8_forward
    try:
        with torch.no_grad():
            return model(torch.tensor([prompt])).logits[0].float().numpy()
    finally:
        modeling.DeepseekV3Experts.forward = experts_forward


def q8_0(x):
    """ggml's Q8_0 rounding of the last dimension (a multiple of 32), returned dequantized."""
    blocks = x.reshape(-1, 32)
    d = (blocks.abs().amax(dim=1, keepdim=True) / 127).half().float()
    q = torch.round(blocks / torch.where(d > 0, d, torch.ones_like(d))).clamp(-127, 127)
    return (q * d).reshape(x.shape)


def ours_logits(binary, model_dir, prompt, work, *flags):
    """The INT4 release runs from a store (`moestream convert`), as a user runs it."""
    store = os.path.join(work, "store")
    if not os.path.exists(store):
        subprocess.run([binary, "convert", model_dir, "-o", store, "--quiet"], check=True)
    out = subprocess.run([binary, "logits", store, "--tokens", ",".join(map(str, prompt)), "--json", *flags],
                         check=True, capture_output=True, text=True).stdout
    return np.array(json.loads(out)["logits"], dtype=np.float32)


def llama_logits(python, model_dir, prompt, work):
    gguf = os.path.join(work, "model.gguf")
    npy = os.path.join(work, "llama.npy")
    here = os.path.dirname(os.path.abspath(__file__))
    subprocess.run([python, os.path.join(here, "make_k2_gguf.py"), model_dir, gguf], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run([python, os.path.join(here, "llamacpp_run.py"), gguf, "--tokens", ",".join(map(str, prompt)),
                    "--dump-logits", npy], check=True, stdout=subprocess.DEVNULL)
    return np.load(npy)


def report(name, got, ref, ranges):
    """One row: per position range, the median and largest max-|Δ logit| of a position, and argmax flips."""
    assert got.shape == ref.shape, f"{name}: logits {got.shape}, reference {ref.shape}"
    diff = np.abs(got - ref).max(axis=1)
    flips = got.argmax(axis=1) != ref.argmax(axis=1)
    cells = [f"{np.median(diff[a:b]):8.1e} {diff[a:b].max():8.1e} {int(flips[a:b].sum()):3d}" for a, b in ranges]
    print(f"{name:34} " + "  ".join(cells))
    return diff.max(), int(flips.sum())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--model", default="Tests/Fixtures/models/kimi_k2_int4")
    ap.add_argument("--binary", default=".build/release/moestream")
    ap.add_argument("--llama-python", default=".venv-bench/bin/python")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--write-reference", metavar="FILE.json",
                    help="write the prompt and transformers' logits at positions 0, 63, 127, ... (what the Swift "
                         "long-context test reads) and stop")
    a = ap.parse_args()
    vocab = json.load(open(os.path.join(a.model, "config.json")))["vocab_size"]
    r = random.Random(a.seed)
    prompt = [r.randrange(0, vocab) for _ in range(a.length)]

    ref = transformers_logits(a.model, prompt)
    if a.write_reference:
        positions = [0] + list(range(63, a.length, 64))
        with open(a.write_reference, "w") as f:
            json.dump({"model": os.path.basename(os.path.normpath(a.model)), "prompt": prompt, "positions": positions,
                       "logits": [ref[p].tolist() for p in positions],
                       "transformers": __import__("transformers").__version__, "torch": torch.__version__}, f)
        return
    q8 = transformers_logits(a.model, prompt, q8_expert_inputs=True)
    with tempfile.TemporaryDirectory() as work:
        ours = ours_logits(a.binary, a.model, prompt, work, "--exact")
        ours_default = ours_logits(a.binary, a.model, prompt, work)
        ours_q8 = ours_logits(a.binary, a.model, prompt, work, "--expert-activations", "q8")
        llama = llama_logits(a.llama_python, a.model, prompt, work)

    edges = [0, 32, 128, 256, 512, 1024, 2048, 4096, 8192]
    edges = [e for e in edges if e < a.length] + [a.length]
    ranges = list(zip(edges[:-1], edges[1:]))
    print(f"{a.model}: {a.length} random tokens (seed {a.seed}); logits span {ref.min():.2f}..{ref.max():.2f}")
    print("per position range: median and largest max-|Δ logit| of a position against transformers fp32, and how "
          "many positions have another argmax")
    print(f"{'':34} " + "  ".join(f"{f'[{x},{y})':>21}" for x, y in ranges))
    worst, flips = report("moestream --exact", ours, ref, ranges)
    report("moestream (default arithmetic)", ours_default, ref, ranges)
    report("moestream --expert-activations q8", ours_q8, ref, ranges)
    report("llama.cpp", llama, ref, ranges)
    report("transformers, Q8_0 expert inputs", q8, ref, ranges)
    print("(llama.cpp rounds the activations it multiplies with Q4_0 experts to Q8_0, as moestream's q8 mode does; "
          "the last row is transformers with only that rounding added)")
    sys.exit(1 if flips or worst > 1e-3 else 0)


if __name__ == "__main__":
    main()
