#!/usr/bin/env python3
"""Builds a small tiktoken-format BPE vocabulary with Kimi K2's pre-tokenizer and writes, with the `tiktoken`
library itself, the ids of a multilingual corpus: the reference the Swift tokenizer must match exactly.

Writes Tests/Fixtures/tokenizer/: tiktoken.model (base64 bytes + rank per line), tokenizer_config.json (Kimi's
special tokens at Kimi's offsets after the ranks), corpus.json (segments and their ids from tiktoken).

Training: byte-level BPE (most frequent adjacent pair merged first) over the corpus plus Python sources from
this machine's standard library, pre-split by the Kimi pattern (the `regex` module in V1 mode, which knows
class intersection `&&`). Run: .venv/bin/python Tools/make_tokenizer_fixture.py [--vocab 1024]
"""
import argparse
import base64
import collections
import glob
import json
import os

import regex
import tiktoken

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "Fixtures", "tokenizer")

# Kimi K2's pattern, as tokenization_kimi.py writes it.
KIMI_PATTERN = "|".join([
    r"""[\p{Han}]+""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])

# Kimi's named special tokens, by offset from the first special id (163584 in Kimi K2).
KIMI_SPECIALS = {0: "[BOS]", 1: "[EOS]", 2: "<|im_end|>", 3: "<|im_user|>", 4: "<|im_assistant|>",
                 6: "<|start_header_id|>", 7: "<|end_header_id|>", 9: "[EOT]", 10: "<|im_system|>",
                 11: "<|tool_calls_section_begin|>", 12: "<|tool_calls_section_end|>", 13: "<|tool_call_begin|>",
                 14: "<|tool_call_argument_begin|>", 15: "<|tool_call_end|>", 17: "<|im_middle|>"}

CORPUS = [
    "Hello, world! This is MoEStream: it runs Kimi K2 on one workstation.",
    "I'm sure they'd've said THEY'LL come; you're right, it's DON'T and Don't.",
    "def forward(self, x):\n    return self.down(F.silu(self.gate(x)) * self.up(x))  # SwiGLU\n",
    "for i in range(10):\n\tprint(f\"{i:03d}\")\n\n\n",
    "混合专家模型在一台工作站上运行，专家从固态硬盘流式读取。",
    "日本語のテキストも正しく分割されるべきです。カタカナとひらがなと漢字。",
    "한국어 문장도 포함합니다. Ελληνικά και русский текст, العربية أيضاً.",
    "Emoji: 😀👍🏽 👨‍👩‍👧‍👦 🇯🇵 ❤️ and ☃.",
    "Numbers 1234567890 3.14159 -42 1e-6 0x7FFF 163,840 tokens.",
    "Spaces:    four, then tabs\t\tand newlines\n\n   \n  trailing   ",
    "  leading spaces and a final newline\n",
    "Café naïve résumé coöperate — “quotes” ‘single’ … ellipsis",
    "Combining: e\u0301 a\u0308 n\u0303; Lt: ǅungla ǈ; Lm: ʰʲ ˢ ꜰ; Lo: ʘ ƻ",
    "mixed中文English混合123数字and日本語テキスト",
    "URL https://example.com/path?q=1&r=two#frag and email a.b@c.de",
    "\r\nWindows\r\nline\r\nendings\r\n",
    "MiXeD CaSe WORDS and ALLCAPS and lowercase and Titlecase",
    "<|im_user|>user<|im_middle|>What is 2+2?<|im_end|><|im_assistant|>assistant<|im_middle|>",
    "",
    " ",
    "\n",
    "a",
]


def training_text():
    parts = list(CORPUS)
    for path in sorted(glob.glob("/usr/lib/python3*/json/*.py"))[:6]:
        with open(path, encoding="utf-8", errors="ignore") as f:
            parts.append(f.read())
    return "\n".join(parts)


def merge_pair(word, pair, token):
    """`word` (a sequence of byte strings) with every adjacent occurrence of `pair` replaced by `token`."""
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(token)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def train(text, vocab_size):
    """Byte-level BPE: repeatedly merge the most frequent adjacent pair (ties: first seen)."""
    pattern = regex.compile("(?V1)" + KIMI_PATTERN)
    words = collections.Counter(tuple(bytes([b]) for b in w.encode("utf-8")) for w in pattern.findall(text))
    ranks = {bytes([i]): i for i in range(256)}
    words = {w: c for w, c in words.items()}
    while len(ranks) < vocab_size:
        stats = collections.Counter()
        for w, c in words.items():
            for pair in zip(w, w[1:]):
                stats[pair] += c
        if not stats:
            break
        best = max(stats, key=lambda p: stats[p])
        token = best[0] + best[1]
        ranks[token] = len(ranks)
        merged = {}
        for w, c in words.items():
            out = tuple(merge_pair(w, best, token))
            merged[out] = merged.get(out, 0) + c
        words = merged
    return ranks


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=1024)
    a = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    ranks = train(training_text(), a.vocab)
    n = len(ranks)
    specials = {KIMI_SPECIALS.get(i, f"<|reserved_token_{n + i}|>"): n + i for i in range(256)}
    enc = tiktoken.Encoding("kimi-fixture", pat_str=KIMI_PATTERN, mergeable_ranks=ranks, special_tokens=specials)

    with open(os.path.join(OUT, "tiktoken.model"), "w") as f:
        for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
            f.write(f"{base64.b64encode(token).decode()} {rank}\n")
    config = {
        "added_tokens_decoder": {str(i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                                          "single_word": False, "special": True} for s, i in specials.items()},
        "bos_token": "[BOS]", "eos_token": "[EOS]", "pad_token": "[EOS]", "unk_token": "[EOS]",
        "model_max_length": 131072, "tokenizer_class": "TikTokenTokenizer",
    }
    with open(os.path.join(OUT, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2, ensure_ascii=False)
    splitter = regex.compile("(?V1)" + KIMI_PATTERN)
    segments = [{"text": t, "ids": enc.encode(t, allowed_special="all"), "ordinary": enc.encode_ordinary(t),
                 "pieces": splitter.findall(t)} for t in CORPUS]
    whole = "".join(CORPUS)
    with open(os.path.join(OUT, "corpus.json"), "w") as f:
        json.dump({"tiktoken": tiktoken.__version__, "ranks": n, "segments": segments,
                   "whole": {"text": whole, "ids": enc.encode(whole, allowed_special="all")}}, f, ensure_ascii=False)
    total = sum(len(s["ids"]) for s in segments)
    print(f"{n} ranks + 256 specials; corpus {len(whole)} characters → {total} ids (per segment)")


if __name__ == "__main__":
    main()
