#!/usr/bin/env python3
"""`moestream logits --exact` on every GGUF fixture in a directory against its transformers reference (the
*.reference.json Tools/make_gguf_fixtures.py writes beside each file): the check GGUFReferenceTests makes on the
committed fixtures, for the variants that are not committed (their bytes would swell Tests/Fixtures), e.g.

  .venv/bin/python Tools/make_gguf_fixtures.py --llama-src DIR --out /tmp/gguf-all --types q8_0,q3_k_m,iq1_m,iq3_xxs,iq4_xs
  .venv/bin/python Tools/compare_gguf_fixtures.py /tmp/gguf-all [BUILD_DIR]

Prints per file its tensor types, the largest and mean |Δ logit| over the prompt's positions and the argmax
agreement; exits 1 if any file is off by more than 1e-4 (the tests' tolerance).
"""
import glob
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
TOLERANCE = 1e-4


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    directory = sys.argv[1]
    binary = os.path.join(sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, ".build", "release"), "moestream")
    references = sorted(glob.glob(os.path.join(directory, "*.reference.json")))
    if not references:
        sys.exit(f"{directory}: no *.reference.json")
    failed = 0
    for path in references:
        gguf = path[: -len(".reference.json")] + ".gguf"
        ref = json.load(open(path))
        expected = np.array(ref["prefill_logits"], dtype=np.float32)
        tokens = ",".join(map(str, ref["prompt"]))
        out = subprocess.run([binary, "logits", gguf, "--tokens", tokens, "--json", "--exact"], check=True,
                             capture_output=True, text=True).stdout
        got = np.array(json.loads(out)["logits"], dtype=np.float32)
        d = np.abs(got - expected)
        ok = got.shape == expected.shape and d.max() <= TOLERANCE
        failed += not ok
        print(f"{os.path.basename(gguf):28s} {ref['tensor_type_counts']}  max |Δ| {d.max():.3g}  mean |Δ| {d.mean():.3g}"
              f"  argmax {(got.argmax(1) == expected.argmax(1)).sum()}/{len(expected)}  {'ok' if ok else 'FAILED'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
