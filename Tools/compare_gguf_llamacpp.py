#!/usr/bin/env python3
"""llama.cpp's own logits on the GGUF fixtures against the transformers reference (weights dequantised by gguf-py),
beside MoEStream's: how far llama.cpp's arithmetic (activations rounded to Q8_K/Q8_0) sits from the reference that
`moestream logits --exact` reproduces within 1e-4.

Run: .venv-bench/bin/python Tools/compare_gguf_llamacpp.py [BUILD_DIR]   (llama-cpp-python==0.3.36, gguf==0.19.0)
llama.cpp runs with --no-repack: on this Xeon (AMX) its repacking path died with SIGILL on the K-quant files.
"""
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
FIXTURES = os.path.join(ROOT, "Tests", "Fixtures", "gguf")
BIN = os.path.join(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, ".build", "debug"), "moestream")

for name in ["kimi_k2_q4_k_m", "kimi_k2_q2_k", "kimi_k2_iq2_m"]:
    path = os.path.join(FIXTURES, name + ".gguf")
    ref = json.load(open(os.path.join(FIXTURES, name + ".reference.json")))
    r = np.array(ref["prefill_logits"], dtype=np.float32)
    tokens = ",".join(map(str, ref["prompt"]))
    npy = f"/tmp/{name}.llama.npy"
    subprocess.run([sys.executable, os.path.join(ROOT, "Tools", "llamacpp_run.py"), path, "--no-repack", "--tokens", tokens,
                    "--dump-logits", npy], check=True, capture_output=True)
    llama = np.load(npy)
    out = subprocess.run([BIN, "logits", path, "--tokens", tokens, "--json", "--exact"], check=True, capture_output=True, text=True).stdout
    ours = np.array(json.loads(out)["logits"], dtype=np.float32)
    for who, l in [("llama.cpp", llama), ("moestream --exact", ours)]:
        d = np.abs(l - r)
        print(f"{name:16s} {who:18s} max |Δ| {d.max():.3g}  mean |Δ| {d.mean():.3g}  argmax equal {(l.argmax(1) == r.argmax(1)).sum()}/{len(r)}")
