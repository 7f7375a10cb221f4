#!/usr/bin/env python3
"""transformers' logits of the demo release over a prompt of 4 × its original YaRN context (16,384 tokens for
original_max_position_embeddings 4096): the reference `DemoModelTests.fourTimesTheOriginalContextMatchesTransformers`
reads (Tests/Fixtures/long-context/demo_4x.json).

The prompt is the held-out text's ids, repeated until it is long enough; the logits are kept at a few positions
around and far beyond the original context. One pass with eager attention (about 13 GB of RAM at 16K positions).
Run: .venv/bin/python Tools/demo_long_context.py [Demo/kimi-demo] [Tests/Fixtures/long-context/demo_4x.json]
(pinned: Tools/requirements.txt; regenerate whenever the demo release changes).
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from demo_reference import load_release  # noqa: E402


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "Demo", "kimi-demo")
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(here, "..", "Tests", "Fixtures", "long-context", "demo_4x.json")
    release = os.path.join(root, "int4")
    torch.set_num_threads(2)
    model, enc = load_release(release)
    original = model.config.rope_parameters["original_max_position_embeddings"]
    length = 4 * original
    with open(os.path.join(release, "heldout.txt")) as f:
        heldout = enc.encode_ordinary(f.read())
    prompt = (heldout * (length // len(heldout) + 1))[:length]
    positions = [0, original - 1, original, 2 * original - 1, 3 * original, length - 2, length - 1]
    with torch.no_grad():
        hidden = model.model(torch.tensor([prompt])).last_hidden_state[0, positions]
        logits = model.lm_head(hidden)
    json.dump({"release": "Demo/kimi-demo/int4", "original_context": original, "prompt": prompt, "positions": positions,
               "logits": [[round(float(v), 6) for v in row] for row in logits], "torch": torch.__version__},
              open(out, "w"), separators=(",", ":"))
    print(f"{length} tokens; logits at {positions} written to {out}")


if __name__ == "__main__":
    main()
