#!/usr/bin/env python3
"""Writes small GGUF files of a tiny Kimi K2 model exactly as llama.cpp's own tools write them, and transformers'
reference logits for each, for the tests of a GGUF reader.

Pipeline (all with unmodified llama.cpp code of the version pinned by llama-cpp-python 0.3.36):
  1. A tiny Kimi-K2-shaped DeepseekV3ForCausalLM (Tools/make_fixtures.py's helpers: seeded random weights, rounded
     to bf16) with the tokenizer fixture's vocabulary (1024 ranks + 256 specials), saved as a Kimi K2 release is:
     bf16 safetensors (correction bias F32), config.json with model_type kimi_k2 + rope_scaling and an auto_map to
     configuration_deepseek.py, tiktoken.model, tokenizer_config.json with an auto_map to tokenization_kimi.py (a
     minimal TikTokenTokenizer in the shape of Kimi K2's own; checked against the tokenizer fixture's corpus ids).
     The config class is needed because transformers 5's AutoTokenizer builds the model config first, and the
     generic one fails on kimi_k2's rope_scaling; the converter itself reads config.json, as for the release.
     Row lengths that K-quants split into 256-blocks (hidden, expert and dense widths) are multiples of 256; the
     MLA ranks and head sizes are not, so those tensors take llama.cpp's fallback types as Kimi K2's attn_k_b does.
  2. llama.cpp's convert_hf_to_gguf.py (`--outtype bf16`, `--outtype q8_0`) with its vendored gguf-py. It runs in
     a wrapper (this script with `--run-convert`) that replaces one function, TextModel.get_vocab_base_pre, and only
     for our TikTokenTokenizer: it identifies a pre-tokenizer by hashing the ids of a test string, and our
     1024-rank vocabulary cannot give Kimi K2's hash although it uses Kimi K2's pattern. The replacement answers
     "kimi-k2", the answer the real tokenizer gets; everything else is the converter's own code.
  3. llama.cpp's quantizer, `llama_cpp.llama_model_quantize` (llama-cpp-python 0.3.36, run by --bench-python), from
     the bf16 GGUF to Q4_K_M, Q3_K_M, Q2_K and Q4_0 (no imatrix, default parameters, 2 threads), and to the i-quant
     ftypes IQ2_M, IQ1_M, IQ3_XXS and IQ4_XS with a uniform importance matrix (all ones, for every matrix but
     token_embd: what llama-imatrix would cover), which the IQ1/IQ2 types require.
  4. For every GGUF: each tensor dequantized by the vendored gguf-py (GGUFReader + gguf.quants.dequantize), mapped
     back to transformers' checkpoint names (experts un-merged, kv_b_proj rebuilt from attn_k_b and attn_v_b) and
     loaded into DeepseekV3ForCausalLM in fp32 (eager). Recorded: prefill logits of a fixed prompt and a greedy
     continuation (transformers' generate with KV cache) with the logits of each step. The bf16 GGUF must give
     back every weight bit for bit and the original model's logits: that checks the reverse mapping.

Writes to --out (default /tmp/gguf-out): kimi_k2_<type>.gguf and kimi_k2_<type>.reference.json (prompt, logits,
greedy tokens and margins, every tensor's name / ggml type / dims in GGUF order (ne) / byte size / offset, and the
metadata, token arrays abbreviated to their length and first entries). --types picks the variants (default
q4_k_m,q3_k_m,q2_k, 4.9 MB of GGUF; bf16 6.1 MB, q8_0 3.3 MB, q4_0 1.8 MB). The bf16 GGUF is always made and
checked, in the temp dir when not asked for. Output is byte-for-byte reproducible.

Usage:
  .venv/bin/python Tools/make_gguf_fixtures.py --llama-src DIR [--out /tmp/gguf-out] [--types ...]
    DIR: llama.cpp's source as vendored in llama-cpp-python 0.3.36's sdist (llama_cpp_python-0.3.36/vendor/llama.cpp:
    convert_hf_to_gguf.py, conversion/, gguf-py/). Instead of --llama-src: --sdist llama_cpp_python-0.3.36.tar.gz
    (extracted to a temp dir), or neither: the sdist is downloaded from PyPI and its sha256 checked.
  --bench-python: a Python with llama-cpp-python==0.3.36 (default .venv-bench/bin/python, Tools/bench-requirements.txt).
  The converter runs in this script's Python (.venv): it needs nothing beyond Tools/requirements.txt (torch,
  transformers 5.23, numpy, tiktoken, safetensors) and gguf-py's own dependencies (tqdm, pyyaml, requests), which
  are already there. (llama.cpp's requirements file pins transformers 4.57.6; this was run with 5.23 only.)
"""
import argparse
import hashlib
import inspect
import json
import os
import runpy
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request

TOOLS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TOOLS)
TOKENIZER_DIR = os.path.join(REPO, "Tests", "Fixtures", "models", "kimi_k2_chat")

SDIST_URL = ("https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/"
             "llama_cpp_python-0.3.36.tar.gz")  # from https://pypi.org/simple/llama-cpp-python/
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"

SEED = 77
NEW_TOKENS = 8
# Variant name → how it is made: ("convert", outtype) or ("quantize", llama_cpp LLAMA_FTYPE_MOSTLY_* suffix).
VARIANTS = {
    "bf16": ("convert", "bf16"),
    "q8_0": ("convert", "q8_0"),
    "q4_k_m": ("quantize", "Q4_K_M"),
    "q3_k_m": ("quantize", "Q3_K_M"),
    "q2_k": ("quantize", "Q2_K"),
    "q4_0": ("quantize", "Q4_0"),
    # i-quants, with a uniform importance matrix (`write_uniform_imatrix`), which IQ1_*/IQ2_* require
    "iq2_m": ("quantize-imatrix", "IQ2_M"),
    "iq1_m": ("quantize-imatrix", "IQ1_M"),
    "iq3_xxs": ("quantize-imatrix", "IQ3_XXS"),
    "iq4_xs": ("quantize-imatrix", "IQ4_XS"),
}
# bf16 is always made (in the temp dir unless asked for): the quantizer's input and the reverse-mapping check.
DEFAULT_TYPES = ["q4_k_m", "q3_k_m", "q2_k"]


def tiny_kimi_config(mf, ranks):
    """Kimi K2's structure (MLA with q LoRA, sigmoid noaux_tc router with correction bias, one shared expert, one
    dense layer, yarn) at toy size. hidden / moe_intermediate / intermediate are multiples of 256 (K-quant rows);
    q_lora, kv_lora, heads × v_head (attn_output's rows) and qk_nope (attn_k_b's rows) are multiples of 32 only."""
    cfg = mf.kimi_k2_config()
    cfg.update(
        vocab_size=ranks + 256, bos_token_id=ranks, eos_token_id=ranks + 1,
        hidden_size=256, intermediate_size=512, moe_intermediate_size=256,
        num_hidden_layers=2, first_k_dense_replace=1,
        n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1, n_group=1, topk_group=1,
        num_attention_heads=4, num_key_value_heads=4,
        q_lora_rank=64, kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32,
    )
    return cfg


# --- tokenizer -------------------------------------------------------------------------------------------------

def bytes_to_unicode():
    """GPT-2's byte → printable character table (what Kimi's file imports from transformers' gpt2 tokenizer)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


# The text of tokenization_kimi.py. Its byte table and Kimi's pattern are filled in from this script's
# `bytes_to_unicode` and make_tokenizer_fixture.py's `KIMI_PATTERN` (one copy of each), since transformers loads the
# file on its own (trust_remote_code) and it cannot import them.
TOKENIZATION_KIMI = r'''"""A minimal TikTokenTokenizer in the shape of moonshotai/Kimi-K2-Instruct's tokenization_kimi.py: a tiktoken
Encoding with Kimi's pattern over the ranks of tiktoken.model, special tokens at ids ranks + offset named by
tokenizer_config.json's added_tokens_decoder (<|reserved_token_ID|> otherwise), `.model`, `.special_tokens`,
and encode / decode through tiktoken. Written by Tools/make_gguf_fixtures.py."""
import os
from pathlib import Path
from typing import Dict, List, Optional, Union

import tiktoken
from tiktoken.load import load_tiktoken_bpe
from transformers import PreTrainedTokenizer

VOCAB_FILES_NAMES = {"vocab_file": "tiktoken.model"}


__BYTES_TO_UNICODE__

class TikTokenTokenizer(PreTrainedTokenizer):
    vocab_files_names = VOCAB_FILES_NAMES
    model_input_names = ["input_ids", "attention_mask"]
    special_tokens: Dict[str, int]
    num_reserved_special_tokens = 256
    pat_str = __KIMI_PATTERN__

    def __init__(self, vocab_file, bos_token="[BOS]", eos_token="[EOS]", unk_token=None, pad_token=None,
                 additional_special_tokens=None, added_tokens_decoder: Optional[dict] = None, **kwargs):
        assert os.path.isfile(vocab_file), vocab_file
        if additional_special_tokens is None:
            additional_special_tokens = ["<|im_end|>", "<|im_user|>", "<|im_assistant|>", "<|start_header_id|>",
                                         "<|end_header_id|>", "[EOT]", "<|im_system|>", "<|im_middle|>"]
        added_tokens_decoder = added_tokens_decoder or {}
        special_tokens_mapping = {int(i): getattr(t, "content", t) for i, t in added_tokens_decoder.items()}
        self.vocab_file = vocab_file
        mergeable_ranks = load_tiktoken_bpe(vocab_file)
        num_base_tokens = len(mergeable_ranks)
        self.special_tokens = {
            special_tokens_mapping.get(i, f"<|reserved_token_{i}|>"): i
            for i in range(num_base_tokens, num_base_tokens + self.num_reserved_special_tokens)
        }
        self.model = tiktoken.Encoding(name=Path(vocab_file).name, pat_str=self.pat_str,
                                       mergeable_ranks=mergeable_ranks, special_tokens=self.special_tokens)
        self.n_words = self.model.n_vocab
        self.bos_id = self.special_tokens[str(bos_token)]
        self.eos_id = self.special_tokens[str(eos_token)]
        self.pad_id = self.special_tokens.get(str(pad_token), self.eos_id)
        self.unk_id = self.special_tokens.get(str(unk_token), self.eos_id)
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        self.decoder = {i: "".join(self.byte_encoder[b] for b in self.model.decode_single_token_bytes(i))
                        for i in range(self.n_words)}
        self.encoder = {v: k for k, v in self.decoder.items()}
        super().__init__(bos_token=bos_token, eos_token=eos_token, unk_token=unk_token, pad_token=pad_token,
                         additional_special_tokens=additional_special_tokens, **kwargs)

    def encode(self, text: str, allow_special_tokens: bool = True, **kwargs) -> List[int]:
        if len(kwargs) > 0:
            return super().encode(text, **kwargs)
        if allow_special_tokens:
            return self.model.encode(text, allowed_special="all")
        return self.model.encode(text, disallowed_special=())

    def decode(self, token_ids: Union[int, List[int]], **kwargs) -> str:
        if len(kwargs) > 0:
            return super().decode(token_ids, **kwargs)
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        return self.model.decode(list(token_ids))

    @property
    def vocab_size(self) -> int:
        return self.n_words

    def get_vocab(self) -> Dict[str, int]:
        return dict(self.encoder)

    def _tokenize(self, text, **kwargs):
        return [self.decoder[t] for t in self.encode(text)]

    def _convert_token_to_id(self, token):
        return self.encoder.get(token, self.unk_id)

    def _convert_id_to_token(self, index):
        return self.decoder.get(index)

    def convert_tokens_to_string(self, tokens):
        return bytearray(self.byte_decoder[c] for c in "".join(tokens)).decode("utf-8", "replace")

    def save_vocabulary(self, save_directory, filename_prefix=None):
        out = os.path.join(save_directory, (filename_prefix + "-" if filename_prefix else "") + "tiktoken.model")
        if os.path.abspath(self.vocab_file) != os.path.abspath(out):
            import shutil
            shutil.copyfile(self.vocab_file, out)
        return (out,)
'''


CONFIGURATION_DEEPSEEK = r'''"""DeepseekV3Config with model_type "kimi_k2", in the shape of moonshotai/Kimi-K2-Instruct's
configuration_deepseek.py (which its config.json's auto_map names). Written by Tools/make_gguf_fixtures.py."""
from transformers.configuration_utils import PretrainedConfig


class DeepseekV3Config(PretrainedConfig):
    model_type = "kimi_k2"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(self, vocab_size=163840, hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
                 num_hidden_layers=61, num_nextn_predict_layers=0, num_attention_heads=64, num_key_value_heads=64,
                 n_shared_experts=1, n_routed_experts=384, ep_size=1, routed_scaling_factor=2.827, kv_lora_rank=512,
                 q_lora_rank=1536, qk_rope_head_dim=64, v_head_dim=128, qk_nope_head_dim=128, topk_method="noaux_tc",
                 n_group=1, topk_group=1, num_experts_per_tok=8, moe_layer_freq=1, first_k_dense_replace=1,
                 norm_topk_prob=True, scoring_func="sigmoid", aux_loss_alpha=0.001, seq_aux=True, hidden_act="silu",
                 max_position_embeddings=131072, initializer_range=0.02, rms_norm_eps=1e-6, use_cache=True,
                 pad_token_id=None, bos_token_id=163584, eos_token_id=163585, pretraining_tp=1,
                 tie_word_embeddings=False, rope_theta=50000.0, rope_scaling=None, attention_bias=False,
                 attention_dropout=0.0, **kwargs):
        self.vocab_size = vocab_size
        self.max_position_embeddings = max_position_embeddings
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.moe_intermediate_size = moe_intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_nextn_predict_layers = num_nextn_predict_layers
        self.num_attention_heads = num_attention_heads
        self.n_shared_experts = n_shared_experts
        self.n_routed_experts = n_routed_experts
        self.ep_size = ep_size
        self.routed_scaling_factor = routed_scaling_factor
        self.kv_lora_rank = kv_lora_rank
        self.q_lora_rank = q_lora_rank
        self.qk_rope_head_dim = qk_rope_head_dim
        self.v_head_dim = v_head_dim
        self.qk_nope_head_dim = qk_nope_head_dim
        self.topk_method = topk_method
        self.n_group = n_group
        self.topk_group = topk_group
        self.num_experts_per_tok = num_experts_per_tok
        self.moe_layer_freq = moe_layer_freq
        self.first_k_dense_replace = first_k_dense_replace
        self.norm_topk_prob = norm_topk_prob
        self.scoring_func = scoring_func
        self.aux_loss_alpha = aux_loss_alpha
        self.seq_aux = seq_aux
        self.num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        self.hidden_act = hidden_act
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.pretraining_tp = pretraining_tp
        self.use_cache = use_cache
        self.rope_theta = rope_theta
        self.rope_scaling = rope_scaling
        self.attention_bias = attention_bias
        self.attention_dropout = attention_dropout
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)
'''


def write_config_code(hf_dir):
    """Kimi K2's release names its config class in config.json's auto_map (configuration_deepseek.py). The
    converter's AutoConfig(trust_remote_code=False) ignores it and reads config.json, as with the release;
    AutoTokenizer(trust_remote_code=True) (transformers 5) builds the config through it."""
    with open(os.path.join(hf_dir, "configuration_deepseek.py"), "w") as f:
        f.write(CONFIGURATION_DEEPSEEK)
    path = os.path.join(hf_dir, "config.json")
    with open(path) as f:
        config = json.load(f)
    config["auto_map"] = {"AutoConfig": "configuration_deepseek.DeepseekV3Config"}
    with open(path, "w") as f:
        json.dump(config, f, indent=2)


def write_tokenizer(hf_dir, tokenizer_dir=TOKENIZER_DIR):
    """tiktoken.model and tokenizer_config.json of `tokenizer_dir` (the chat fixture unless told), plus Kimi K2's
    auto_map and our tokenization_kimi.py, so that AutoTokenizer(trust_remote_code=True) builds the
    TikTokenTokenizer."""
    shutil.copy(os.path.join(tokenizer_dir, "tiktoken.model"), os.path.join(hf_dir, "tiktoken.model"))
    with open(os.path.join(tokenizer_dir, "tokenizer_config.json")) as f:
        tok_cfg = json.load(f)
    tok_cfg["auto_map"] = {"AutoTokenizer": ["tokenization_kimi.TikTokenTokenizer", None]}
    with open(os.path.join(hf_dir, "tokenizer_config.json"), "w") as f:
        json.dump(tok_cfg, f, indent=2, ensure_ascii=False)
    sys.path.insert(0, TOOLS)
    from make_tokenizer_fixture import KIMI_PATTERN
    source = (TOKENIZATION_KIMI.replace("__BYTES_TO_UNICODE__", inspect.getsource(bytes_to_unicode))
              .replace("__KIMI_PATTERN__", repr(KIMI_PATTERN)))
    with open(os.path.join(hf_dir, "tokenization_kimi.py"), "w") as f:
        f.write(source)


def check_tokenizer(hf_dir):
    """AutoTokenizer(trust_remote_code=True) loads our TikTokenTokenizer and gives the tokenizer fixture's ids."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(hf_dir, trust_remote_code=True)
    assert type(tok).__name__ == "TikTokenTokenizer", type(tok)
    with open(os.path.join(REPO, "Tests", "Fixtures", "tokenizer", "corpus.json")) as f:
        corpus = json.load(f)
    for seg in corpus["segments"]:
        assert tok.encode(seg["text"]) == seg["ids"], seg["text"]
        assert tok.decode(seg["ids"]) == seg["text"], seg["text"]
    assert tok.special_tokens["[BOS]"] == corpus["ranks"] and len(tok.model._mergeable_ranks) == corpus["ranks"]


# --- llama.cpp source --------------------------------------------------------------------------------------------

def llama_source(args, tmp):
    if args.llama_src:
        src = os.path.abspath(args.llama_src)
    else:
        tarball = args.sdist
        if tarball is None:
            tarball = os.path.join(tmp, os.path.basename(SDIST_URL))
            print(f"downloading {SDIST_URL}")
            urllib.request.urlretrieve(SDIST_URL, tarball)
            with open(tarball, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            if digest != SDIST_SHA256:
                sys.exit(f"{tarball}: sha256 {digest}, expected {SDIST_SHA256}")
        prefix = "llama_cpp_python-0.3.36/vendor/llama.cpp/"
        with tarfile.open(tarball) as tf:
            members = [m for m in tf.getmembers() if m.name.startswith(prefix)]
            tf.extractall(os.path.join(tmp, "sdist"), members=members, filter="data")
        src = os.path.join(tmp, "sdist", prefix)
    for need in ["convert_hf_to_gguf.py", "conversion/deepseek.py", "gguf-py/gguf/__init__.py"]:
        if not os.path.exists(os.path.join(src, need)):
            sys.exit(f"{src}: no {need}; --llama-src must be llama_cpp_python-0.3.36/vendor/llama.cpp")
    return src


PATCH_MARKER = "make_gguf_fixtures: get_vocab_base_pre -> kimi-k2 for TikTokenTokenizer"


def run_convert(src, argv):
    """The wrapper: llama.cpp's convert_hf_to_gguf.py, unmodified, with TextModel.get_vocab_base_pre answering
    "kimi-k2" for our TikTokenTokenizer (whose hash cannot be Kimi K2's with a 1024-rank vocabulary)."""
    sys.path[0:0] = [src, os.path.join(src, "gguf-py")]
    from conversion.base import TextModel
    original = TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer):
        if type(tokenizer).__name__ == "TikTokenTokenizer":
            print(PATCH_MARKER, file=sys.stderr, flush=True)
            return "kimi-k2"
        return original(self, tokenizer)

    TextModel.get_vocab_base_pre = get_vocab_base_pre
    script = os.path.join(src, "convert_hf_to_gguf.py")
    sys.argv = [script] + argv
    runpy.run_path(script, run_name="__main__")


def hf_environment(tmp):
    """Offline, no progress bars, and the remote-code modules (tokenization_kimi.py, configuration_deepseek.py)
    cached under our temp dir instead of ~/.cache/huggingface/modules. The converter must use its vendored gguf-py."""
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
                      HF_MODULES_CACHE=os.path.join(tmp, "hf_modules"))
    os.environ.pop("NO_LOCAL_GGUF", None)


def convert(src, hf_dir, outtype, out_path):
    cmd = [sys.executable, os.path.abspath(__file__), "--run-convert", src, "--",
           hf_dir, "--outtype", outtype, "--outfile", out_path]
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    log = r.stdout + r.stderr
    if r.returncode != 0:
        sys.exit(f"convert_hf_to_gguf.py --outtype {outtype} failed:\n{log[-6000:]}")
    # the vocabulary came from DeepseekV2Model.set_vocab's kimi-k2 branch, through our one replacement
    assert log.count(PATCH_MARKER) == 1, log[-6000:]
    return log


QUANTIZE = r"""
import ctypes, json, sys
import llama_cpp
inp, out, ftype, nthread = sys.argv[1:5]
llama_cpp.llama_backend_init()
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + ftype)
p.nthread = int(nthread)
keep = []
if len(sys.argv) > 5:  # a uniform importance matrix: [[tensor name, values], ...], every value 1
    entries = json.load(open(sys.argv[5]))
    arr = (llama_cpp.llama_model_imatrix_data * (len(entries) + 1))()
    for i, (name, size) in enumerate(entries):
        data = (ctypes.c_float * size)(*([1.0] * size))
        keep.append((name.encode(), data))
        arr[i].name = keep[-1][0]
        arr[i].data = ctypes.cast(data, ctypes.POINTER(ctypes.c_float))
        arr[i].size = size
    arr[len(entries)].name = None
    p.imatrix = ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
rc = llama_cpp.llama_model_quantize(inp.encode(), out.encode(), ctypes.byref(p))
print("llama_cpp", llama_cpp.__version__, "llama_model_quantize rc", rc)
sys.exit(rc)
"""


def write_uniform_imatrix(gguf_path, path, gguf):
    """What llama-imatrix would record for the GGUF at `gguf_path`: every matrix that is a matmul operand (not
    token_embd), ne[0] × ne[2] values (one vector per expert), here all ones; as JSON [[name, values], ...]."""
    entries = []
    for t in gguf.GGUFReader(gguf_path).tensors:
        ne = [int(n) for n in t.shape]
        if len(ne) < 2 or t.name == "token_embd.weight":
            continue
        entries.append((t.name, ne[0] * (ne[2] if len(ne) > 2 else 1)))
    with open(path, "w") as f:
        json.dump(entries, f)


def quantize(bench_python, inp, out, ftype, imatrix=None):
    """llama_model_quantize from `inp` to `out`; `imatrix`: a JSON file of [tensor name, values] whose importance
    is uniform (all ones), as the i-quant types that require one need."""
    r = subprocess.run([bench_python, "-c", QUANTIZE, inp, out, ftype, "2"] + ([imatrix] if imatrix else []),
                       stdin=subprocess.DEVNULL, capture_output=True, text=True)
    log = r.stdout + r.stderr
    if r.returncode != 0:
        sys.exit(f"llama_model_quantize {ftype} failed:\n{log[-6000:]}")
    return log


# --- GGUF → transformers ------------------------------------------------------------------------------------------

TOP = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
       "output.weight": "lm_head.weight"}
PER_LAYER = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_q_a.weight": "self_attn.q_a_proj.weight",
    "attn_q_a_norm.weight": "self_attn.q_a_layernorm.weight",
    "attn_q_b.weight": "self_attn.q_b_proj.weight",
    "attn_kv_a_mqa.weight": "self_attn.kv_a_proj_with_mqa.weight",
    "attn_kv_a_norm.weight": "self_attn.kv_a_layernorm.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
    "ffn_gate_inp.weight": "mlp.gate.weight",
    "exp_probs_b.bias": "mlp.gate.e_score_correction_bias",
    "ffn_gate_shexp.weight": "mlp.shared_experts.gate_proj.weight",
    "ffn_up_shexp.weight": "mlp.shared_experts.up_proj.weight",
    "ffn_down_shexp.weight": "mlp.shared_experts.down_proj.weight",
}
# Names the converter hands to gguf-py's TensorNameMap for the tensors it merges or splits.
MERGED = {"ffn_gate_exps.weight": "mlp.experts.gate_proj.weight", "ffn_up_exps.weight": "mlp.experts.up_proj.weight",
          "ffn_down_exps.weight": "mlp.experts.down_proj.weight", "attn_k_b.weight": "self_attn.k_b_proj.weight",
          "attn_v_b.weight": "self_attn.v_b_proj.weight"}


def check_names_against_gguf_py(gguf, n_layers):
    """Our table must be the inverse of llama.cpp's own HF → GGUF name map for deepseek2."""
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.DEEPSEEK2, n_layers)
    pairs = list(TOP.items()) + [(f"blk.0.{g}", f"model.layers.0.{h}") for g, h in {**PER_LAYER, **MERGED}.items()]
    for g, h in pairs:
        h = h.replace("e_score_correction_bias", "e_score_correction.bias")  # as ModelBase.filter_tensors does
        mapped = tmap.get_name(h, try_suffixes=(".weight", ".bias"))  # as ModelBase.map_tensor_name calls it
        assert mapped == g, (h, mapped, g)


def dequantized_tensors(path, gguf, np):
    """name → (fp32 numpy array in numpy/torch order, ggml type name, ne in GGUF order, bytes, data offset)."""
    reader = gguf.GGUFReader(path)
    out = {}
    for t in reader.tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        ne = [int(d) for d in t.shape]
        assert list(values.shape) == ne[::-1], (t.name, values.shape, ne)
        out[t.name] = (values, t.tensor_type.name, ne, int(t.n_bytes), int(t.data_offset))
    return reader, out


def checkpoint_from_gguf(tensors, cfg, torch):
    """GGUF tensors (dequantized) → transformers checkpoint names and shapes (experts one Linear each)."""
    left = dict(tensors)
    sd = {}

    def take(name):
        return torch.from_numpy(left.pop(name)[0].copy())

    for g, h in TOP.items():
        sd[h] = take(g)
    heads, nope, v = cfg["num_attention_heads"], cfg["qk_nope_head_dim"], cfg["v_head_dim"]
    for i in range(cfg["num_hidden_layers"]):
        for g, h in PER_LAYER.items():
            if f"blk.{i}.{g}" in left:
                sd[f"model.layers.{i}.{h}"] = take(f"blk.{i}.{g}")
        # attn_k_b: [heads, kv_lora, nope] (k_b transposed), attn_v_b: [heads, v, kv_lora] (numpy order)
        k_b = take(f"blk.{i}.attn_k_b.weight")
        v_b = take(f"blk.{i}.attn_v_b.weight")
        assert k_b.shape[0] == heads and k_b.shape[2] == nope and v_b.shape[:2] == (heads, v), (k_b.shape, v_b.shape)
        kv_b = torch.cat([k_b.transpose(1, 2), v_b], dim=1)  # [heads, nope + v, kv_lora]
        sd[f"model.layers.{i}.self_attn.kv_b_proj.weight"] = kv_b.reshape(heads * (nope + v), -1).contiguous()
        if f"blk.{i}.ffn_gate_exps.weight" in left:
            for w in ["gate", "up", "down"]:
                stacked = take(f"blk.{i}.ffn_{w}_exps.weight")  # [experts, out, in]
                assert stacked.shape[0] == cfg["n_routed_experts"]
                for e in range(stacked.shape[0]):
                    sd[f"model.layers.{i}.mlp.experts.{e}.{w}_proj.weight"] = stacked[e].contiguous()
    assert not left, f"GGUF tensors not mapped: {sorted(left)}"
    return sd


def metadata(reader, np):
    """Every key/value; arrays of more than 16 entries abbreviated to their length and first 8 entries."""
    meta = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        value = field.contents()
        kind = field.types[0].name if field.types else None
        if isinstance(value, list) and len(value) > 16:
            meta[name] = {"type": f"ARRAY[{field.types[-1].name}]", "length": len(value), "first": value[:8]}
        else:
            if isinstance(value, (np.generic,)):
                value = value.item()
            meta[name] = {"type": kind if kind != "ARRAY" else f"ARRAY[{field.types[-1].name}]", "value": value}
    return meta


def f32_list(t):
    """fp32 values as the shortest decimal that reads back to the same fp32."""
    import numpy as np
    return [float(str(x)) for x in np.asarray(t, dtype=np.float32).ravel()]


def made_by(t):
    kind, arg = VARIANTS[t]
    if kind == "convert":
        return f"convert_hf_to_gguf.py --outtype {arg} (llama-cpp-python 0.3.36's vendor/llama.cpp)"
    imatrix = ", imatrix: uniform (all ones)" if kind == "quantize-imatrix" else ""
    return f"llama_cpp.llama_model_quantize(kimi_k2_bf16.gguf, ftype=LLAMA_FTYPE_MOSTLY_{arg}{imatrix}), llama-cpp-python 0.3.36"



def run_in_temp(build, args, types, prefix):
    """build(args, types, tmp) in a fresh temp dir holding transformers' caches (2 torch threads); the dir is removed
    after unless --keep-temp."""
    tmp = tempfile.mkdtemp(prefix=prefix)
    hf_environment(tmp)
    import torch
    torch.set_num_threads(2)
    sys.path.insert(0, TOOLS)
    try:
        build(args, types, tmp)
    finally:
        if args.keep_temp:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llama-src", help="llama_cpp_python-0.3.36/vendor/llama.cpp (convert_hf_to_gguf.py, conversion/, gguf-py/)")
    ap.add_argument("--sdist", help="llama_cpp_python-0.3.36.tar.gz to extract instead of --llama-src")
    ap.add_argument("--bench-python", default=os.path.join(REPO, ".venv-bench", "bin", "python"),
                    help="Python with llama-cpp-python==0.3.36 (llama_model_quantize)")
    ap.add_argument("--out", default="/tmp/gguf-out")
    ap.add_argument("--types", default=",".join(DEFAULT_TYPES), help=f"comma-separated, of {list(VARIANTS)}")
    ap.add_argument("--keep-temp", action="store_true", help="keep the HF directory and logs (path printed)")
    ap.add_argument("--run-convert", metavar="LLAMA_SRC", help=argparse.SUPPRESS)
    args, rest = ap.parse_known_args()
    if args.run_convert:
        run_convert(args.run_convert, [a for a in rest if a != "--"])
        return
    if rest:
        ap.error(f"unrecognized arguments: {rest}")
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    for t in types:
        if t not in VARIANTS:
            ap.error(f"unknown type {t}")

    run_in_temp(build, args, types, "gguf-fixtures-")


def build(args, types, tmp):
    import numpy as np
    import torch
    import make_fixtures as mf

    src = llama_source(args, tmp)
    sys.path[0:0] = [os.path.join(src, "gguf-py")]
    import gguf
    assert os.path.dirname(gguf.__file__).startswith(os.path.join(src, "gguf-py")), gguf.__file__

    # 1. the HF checkpoint
    with open(os.path.join(REPO, "Tests", "Fixtures", "tokenizer", "corpus.json")) as f:
        ranks = json.load(f)["ranks"]
    cfg = tiny_kimi_config(mf, ranks)
    check_names_against_gguf_py(gguf, cfg["num_hidden_layers"])
    model = mf.make_model(cfg, SEED, torch.bfloat16)
    original = mf.fp32_state_dict(model)
    hf_dir = os.path.join(tmp, "Kimi-K2-tiny")
    os.makedirs(hf_dir)
    model.save_pretrained(hf_dir)
    mf.store_as(hf_dir, torch.bfloat16)
    mf.write_release_config(hf_dir, cfg)
    write_config_code(hf_dir)
    write_tokenizer(hf_dir)
    check_tokenizer(hf_dir)
    print(f"HF checkpoint: {sum(v.numel() for v in original.values())} parameters, {hf_dir}")

    # 2. + 3. GGUFs
    os.makedirs(args.out, exist_ok=True)
    paths, logs = {}, {}
    need_bf16 = "bf16" in types or any(VARIANTS[t][0].startswith("quantize") for t in types)
    base = os.path.join(args.out if "bf16" in types else tmp, "kimi_k2_bf16.gguf")
    if need_bf16:
        logs["bf16"] = convert(src, hf_dir, "bf16", base)
        paths["bf16"] = base
    for t in types:
        kind, arg = VARIANTS[t]
        if t == "bf16":
            continue
        p = os.path.join(args.out, f"kimi_k2_{t}.gguf")
        if kind == "convert":
            logs[t] = convert(src, hf_dir, arg, p)
        else:
            imatrix = None
            if kind == "quantize-imatrix":
                imatrix = os.path.join(tmp, "imatrix.json")
                write_uniform_imatrix(base, imatrix, gguf)
            logs[t] = quantize(args.bench_python, base, p, arg, imatrix)
        paths[t] = p
    for t, log in logs.items():
        with open(os.path.join(tmp, f"{t}.log"), "w") as f:
            f.write(log)

    # 4. references
    def load(values):
        m = mf.make_model(cfg, SEED, torch.bfloat16)
        assert set(values) == set(original), (set(values) ^ set(original))
        for k, v in values.items():
            assert tuple(v.shape) == tuple(original[k].shape), (k, v.shape, original[k].shape)
        mf.load_checkpoint_values(m, values)
        return m

    variants = {}
    for t in ["bf16"] + [t for t in types if t != "bf16"]:
        reader, tensors = dequantized_tensors(paths[t], gguf, np)
        values = checkpoint_from_gguf(tensors, cfg, torch)
        variants[t] = dict(reader=reader, tensors=tensors, values=values, model=load(values))

    # the reverse mapping: bf16 GGUF gives back every weight exactly
    worst = max(float((variants["bf16"]["values"][k] - original[k].float()).abs().max()) for k in original)
    assert worst == 0.0, f"bf16 GGUF weights differ from the checkpoint by {worst}"
    meta = metadata(variants["bf16"]["reader"], np)
    assert meta["tokenizer.ggml.pre"]["value"] == "kimi-k2" and meta["tokenizer.ggml.merges"]["length"] > 0

    # a prompt (ids of ordinary ranks) whose greedy continuation is decisive for every variant
    mf.NEW_TOKENS = NEW_TOKENS
    g = torch.Generator().manual_seed(SEED + 1)
    for attempt in range(100):
        prompt = [cfg["bos_token_id"]] + torch.randint(0, ranks, (mf.PROMPT_LEN - 1,), generator=g).tolist()
        results = {}
        with torch.no_grad():
            for name, v in [("original", dict(model=model))] + list(variants.items()):
                prefill = v["model"](torch.tensor([prompt])).logits[0].float()
                tokens, steps, margin = mf.greedy_with_margins(v["model"], prompt)
                results[name] = (prefill, tokens, steps, margin)
        if min(r[3] for r in results.values()) >= mf.MIN_MARGIN:
            break
    else:
        sys.exit("no prompt with a decisive greedy continuation for every variant")
    print(f"prompt (attempt {attempt}): {prompt}")

    ref = results["original"]
    diff_bf16 = float((results["bf16"][0] - ref[0]).abs().max())
    diff_bf16_steps = max(float((torch.tensor(a) - torch.tensor(b)).abs().max())
                          for a, b in zip(results["bf16"][2], ref[2]))
    print(f"reverse-mapping check: bf16 GGUF weights identical to the checkpoint (max |Δw| = {worst}); "
          f"max |Δlogit| vs the original model: prefill {diff_bf16:.3g}, greedy steps {diff_bf16_steps:.3g}; "
          f"greedy tokens equal: {results['bf16'][1] == ref[1]}")
    assert diff_bf16 <= 1e-6 and diff_bf16_steps <= 1e-6 and results["bf16"][1] == ref[1]

    # 5. outputs
    import transformers
    total = 0
    for t in types:
        v = variants[t]
        prefill, tokens, steps, margin = results[t]
        with open(paths[t], "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        size = os.path.getsize(paths[t])
        total += size
        tensor_list = [dict(name=n, type=ty, ne=ne, n_bytes=nb, offset=off)
                       for n, (_, ty, ne, nb, off) in v["tensors"].items()]
        type_counts = {}
        for e in tensor_list:
            type_counts[e["type"]] = type_counts.get(e["type"], 0) + 1
        reference = dict(
            gguf=os.path.basename(paths[t]), variant=t, made_by=made_by(t), size=size, sha256=digest,
            config=cfg, tensors=tensor_list, tensor_type_counts=type_counts, metadata=metadata(v["reader"], np),
            prompt=prompt, prefill_logits=[f32_list(r) for r in prefill], generated=tokens,
            generated_logits=[f32_list(s) for s in steps], min_greedy_margin=margin,
            max_abs_prefill_logit_diff_vs_bf16_model=float((prefill - ref[0]).abs().max()),
            greedy_equal_to_bf16_model=tokens == ref[1],
            reference="transformers DeepseekV3ForCausalLM, fp32, eager, weights dequantized by gguf-py",
            versions=dict(transformers=transformers.__version__, torch=torch.__version__,
                          llama_cpp="llama-cpp-python 0.3.36 vendor/llama.cpp (convert_hf_to_gguf.py, gguf-py, llama_model_quantize)"),
        )
        ref_path = os.path.join(args.out, f"kimi_k2_{t}.reference.json")
        with open(ref_path, "w") as f:
            json.dump(reference, f)
        print(f"{os.path.basename(paths[t]):24s} {size:>9d} bytes  {type_counts}  "
              f"max|Δlogit| vs bf16 model {reference['max_abs_prefill_logit_diff_vs_bf16_model']:.4f}, "
              f"greedy same: {tokens == ref[1]}, min margin {margin:.4f}")
        print(f"{os.path.basename(ref_path):24s} {os.path.getsize(ref_path):>9d} bytes")
    print(f"total GGUF bytes: {total}")


if __name__ == "__main__":
    main()
