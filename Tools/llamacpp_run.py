#!/usr/bin/env python3
"""Runs llama.cpp (through llama-cpp-python) on a GGUF the way `moestream generate` runs a store: the prompt's
token ids in one pass, then greedy decoding one token at a time. Prints one JSON line: prefill and decode
seconds and the generated ids.

Usage: llamacpp_run.py MODEL.gguf --tokens 1,2,3 --max-tokens 16 --threads 2
"""
import argparse
import json
import time

import gguf
import numpy as np
import llama_cpp
from llama_cpp import Llama


def last_logits(llm):
    """The logits of the last token evaluated (llama-cpp-python keeps `scores` only with logits_all)."""
    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))


def yarn_betas(path):
    """The GGUF's own YaRN beta_fast and beta_slow. llama-cpp-python's constructor passes beta_fast 32 and beta_slow 1
    unless told otherwise, and llama.cpp then uses those instead of the model's (a negative value does not restore
    them in 0.3.36): for Kimi K2 (beta_fast = beta_slow = 1) that moves the boundary between extrapolated and
    interpolated rope frequencies, and the logits drift from transformers' more the later the position."""
    reader = gguf.GGUFReader(path)
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()

    def value(key, default):
        field = reader.fields.get(f"{arch}.rope.scaling.{key}")
        return float(field.parts[field.data[0]][0]) if field is not None else default
    return value("yarn_beta_fast", 32.0), value("yarn_beta_slow", 1.0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-repack", action="store_true",
                    help="keep weights in the mmap instead of repacking Q4_0 into anonymous memory (llama.cpp's "
                         "use_extra_bufts=false, as --no-repack): the only way it runs under a memory cap")
    ap.add_argument("--dump-logits", metavar="FILE.npy",
                    help="instead of generating, evaluate the prompt once and save the logits of every position "
                         "([tokens, vocab] float32)")
    a = ap.parse_args()
    if a.no_repack:
        import llama_cpp.llama as module
        default = module.llama_cpp.llama_model_default_params

        def params():
            p = default()
            p.use_extra_bufts = False
            return p
        module.llama_cpp.llama_model_default_params = params
    prompt = [int(t) for t in a.tokens.split(",")]
    beta_fast, beta_slow = yarn_betas(a.model)
    llm = Llama(model_path=a.model, n_ctx=len(prompt) + a.max_tokens + 16, n_batch=max(512, len(prompt)),
                n_ubatch=max(512, len(prompt)), n_threads=a.threads, n_threads_batch=a.threads, use_mmap=True,
                use_mlock=False, verbose=False, logits_all=bool(a.dump_logits),
                yarn_beta_fast=beta_fast, yarn_beta_slow=beta_slow)
    if a.dump_logits:
        llm.eval(prompt)
        np.save(a.dump_logits, np.array(llm.scores[:len(prompt)], dtype=np.float32))
        return
    start = time.perf_counter()
    llm.eval(prompt)
    out = [int(np.argmax(last_logits(llm)))]
    first = time.perf_counter()
    while len(out) < a.max_tokens:
        llm.eval([out[-1]])
        out.append(int(np.argmax(last_logits(llm))))
    end = time.perf_counter()
    print(json.dumps({"repack": not a.no_repack, "prefill_s": first - start, "decode_s": end - first, "prompt": len(prompt),
                      "decode_steps": len(out) - 1, "tokens": out}))


if __name__ == "__main__":
    main()
