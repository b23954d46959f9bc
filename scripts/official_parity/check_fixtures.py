#!/usr/bin/env python
"""Re-check the module-level fixtures against the OFFICIAL code.

    .venv-official/bin/python scripts/official_parity/check_fixtures.py --official /path/to/grove-checkout \
        [--dir tests/fixtures/official] [--tol 1e-5]

For every tests/fixtures/official/<name>.safetensors: rebuild the official module(s)
from the stored config, load the stored weights (``weights.<official key>``), run the
stored call on the stored inputs and print the max abs difference of every output.
Exits non-zero when a difference exceeds --tol.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import official_side as osd  # noqa: E402


def load_weights(mods, prefixes, tensors) -> list:
    problems = []
    for m, pfx in zip(mods, prefixes):
        if pfx is None:
            continue
        want = m.state_dict()
        sd = {}
        for k in want:
            key = f"weights.{pfx}{k}"
            if key not in tensors:
                problems.append(f"missing {key}")
                continue
            sd[k] = tensors[key].to(want[k].dtype)
        m.load_state_dict(sd, strict=True)
    used = {f"weights.{p}{k}" for m, p in zip(mods, prefixes) if p is not None for k in m.state_dict()}
    problems += [f"unused {k}" for k in tensors if k.startswith("weights.") and k not in used]
    return problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", required=True)
    p.add_argument("--dir", default=str(osd.FIXTURE_DIR))
    p.add_argument("--tol", type=float, default=1e-5)
    a = p.parse_args(argv)
    osd.setup_official(Path(a.official), training_package=False)
    from safetensors import safe_open
    worst = 0.0
    ok = True
    for name, spec in osd.FIXTURES.items():
        path = Path(a.dir) / f"{name}.safetensors"
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        cfg = json.loads(meta["config"])
        mods = spec["build"](cfg)
        problems = load_weights(mods, spec["prefixes"], tensors)
        inputs = {k: tensors[f"input.{k}"].float() for k in spec["inputs"]}
        outs = osd._run(name, spec, mods, cfg, inputs)
        diffs = {}
        for k, v in outs.items():
            ref = tensors[f"output.{k}"]
            if ref.shape != v.shape:
                problems.append(f"shape {k}: {tuple(v.shape)} vs stored {tuple(ref.shape)}")
                continue
            diffs[k] = float((v.float() - ref).abs().max()) if v.numel() else 0.0
        m = max(diffs.values(), default=0.0)
        worst = max(worst, m)
        status = "OK" if (m <= a.tol and not problems) else "FAIL"
        ok &= status == "OK"
        print(f"{status} {name}: " + ", ".join(f"{k} {d:.2e}" for k, d in diffs.items())
              + (f"; problems: {problems}" if problems else ""))
    print(f"worst max abs diff {worst:.2e} (tol {a.tol:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
