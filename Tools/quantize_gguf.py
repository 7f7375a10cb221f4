#!/usr/bin/env python3
"""Quantises a GGUF with llama.cpp's own quantiser (llama-cpp-python's `llama_model_quantize`), re-quantising tensors
that are already quantised (the bench slice's Q4_0 experts): what `Tools/bench-vs-llamacpp` runs with QUANT=TYPE.

Usage: .venv-bench/bin/python Tools/quantize_gguf.py IN.gguf OUT.gguf Q4_K_M [THREADS]   (llama-cpp-python==0.3.36)
TYPE is a llama_ftype name without LLAMA_FTYPE_MOSTLY_ (Q4_K_M, Q2_K, Q3_K_M, IQ4_XS, …).
"""
import ctypes
import sys

import llama_cpp

inp, out, ftype = sys.argv[1:4]
threads = int(sys.argv[4]) if len(sys.argv) > 4 else 0
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + ftype)
p.nthread = threads
p.allow_requantize = True
rc = llama_cpp.llama_model_quantize(inp.encode(), out.encode(), ctypes.byref(p))
sys.exit(rc)
