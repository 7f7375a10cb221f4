#!/usr/bin/env python3
"""Writes Tests/Fixtures/gguf/quant-blocks.gguf: for every GGML block type MoEStream dequantises, random blocks
(with edge-case scales) and gguf-py's own dequantisation of them, so the Swift decoders are checked bit for bit
against the reference (`gguf.quants.dequantize`, the Python twin of ggml-quants.c's `dequantize_row_*`).

The file is written by gguf-py's GGUFWriter, so it also exercises the GGUF reader on a file the reference library
wrote. For each type T it holds:
  q.T   [blocks × block bytes] raw blocks, typed T
  x.T   [blocks × block size]  F32, gguf-py's dequantisation of q.T
The first blocks of each type set every fp16 scale field of the block to one edge value (±0, the smallest and
largest subnormals, the smallest normal, ±65504, ±inf, NaN); their quant bytes include all-zero and all-one
blocks. NaN outputs are compared as "both NaN".

Run: .venv-bench/bin/python Tools/make_gguf_quant_fixture.py   (gguf==0.19.0, numpy==2.4.6: Tools/bench-requirements.txt)
"""
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "Fixtures", "gguf", "quant-blocks.gguf")

# Byte offsets of each type's fp16 scale fields inside one block (ggml-common.h's block_* structs).
F16_FIELDS = {
    T.F16: [],
    T.BF16: [],
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82],      # scales[16], qs[64], d, dmin
    T.Q3_K: [108],         # hmask[32], qs[64], scales[12], d
    T.Q4_K: [0, 2],        # d, dmin, scales[12], qs[128]
    T.Q5_K: [0, 2],        # d, dmin, scales[12], qh[32], qs[128]
    T.Q6_K: [208],         # ql[128], qh[64], scales[16], d
    # i-quants and ternary types (the low-bit experts of Unsloth's UD quants)
    T.IQ4_NL: [0], T.IQ4_XS: [0], T.IQ2_XXS: [0], T.IQ2_XS: [0], T.IQ2_S: [0], T.IQ3_XXS: [0], T.IQ3_S: [0],
    T.IQ1_S: [0],
    T.IQ1_M: [],           # its fp16 scale is spread over the top nibbles of four words: random only
    T.TQ1_0: [52],         # qs[48], qh[4], d
    T.TQ2_0: [64],         # qs[64], d
}
EDGES = [0x0000, 0x8000, 0x0001, 0x03FF, 0x0400, 0x7BFF, 0xFBFF, 0x3C00, 0x7C00, 0xFC00, 0x7E00]
BLOCKS = {32: 64, 256: 24}   # blocks per type, by block size


def blocks_for(qtype, rng):
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    if qtype in (T.F16, T.BF16):
        n = 512
        raw = rng.integers(0, 256, size=(n * type_size), dtype=np.uint8)
        # Edge values at the start: the same list, as raw half words (bf16 reads them as its own bit patterns).
        words = raw.view(np.uint16)
        words[: len(EDGES)] = EDGES
        return raw.reshape(1, -1)
    n = BLOCKS[block_size]
    raw = rng.integers(0, 256, size=(n, type_size), dtype=np.uint8)
    raw[1, :] = 0x00
    raw[2, :] = 0xFF
    for field in F16_FIELDS[qtype]:
        # Realistic scales for the random blocks: |d| around 1e-3 … 1e-1, either sign.
        d = (rng.standard_normal(n) * 0.02).astype(np.float16)
        raw[:, field:field + 2] = d.view(np.uint8).reshape(n, 2)
        for i, e in enumerate(EDGES):
            raw[3 + i, field:field + 2] = np.array([e], dtype=np.uint16).view(np.uint8)
    return raw


def main():
    rng = np.random.default_rng(20261201)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    w = gguf.GGUFWriter(OUT, arch="moestream-quant-test")
    w.add_description("random GGML blocks and gguf-py's dequantisation of them (Tools/make_gguf_quant_fixture.py)")
    with np.errstate(all="ignore"):
        for qtype in F16_FIELDS:
            raw = blocks_for(qtype, rng)
            expected = dequantize(raw, qtype).astype(np.float32).reshape(raw.shape[0], -1)
            w.add_tensor(f"q.{qtype.name}", raw, raw_dtype=qtype)
            w.add_tensor(f"x.{qtype.name}", expected)
            print(f"{qtype.name:5s} {raw.shape[0]} rows, {raw.size} bytes -> {expected.size} values, "
                  f"{int(np.isnan(expected).sum())} NaN")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(OUT, os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
    sys.exit(main())
