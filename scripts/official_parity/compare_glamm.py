"""Paper pre-training starts from GLaMM as the official train.py does: the project's GLaMM import against
the official initialisation.

    .venv/bin/python scripts/official_parity/compare_glamm.py --work WORK [--imported WORK/imported_glamm]

WORK is what `official_side.py glamm` wrote: `glamm_release/` (a GLaMM checkpoint in the released
layout) and `glamm_init/` (the GROVE state after the OFFICIAL train.py initialisation from it, with
provenance.json saying where each tensor came from and which parameters require gradients). The
imported checkpoint is `grove weights import --from glamm WORK/glamm_release --clip WORK/clip-...`.

Checks, per official origin of each tensor:
- from GLaMM or the reloaded CLIP: equal to the official tensor (bitwise; the official code casts the
  vision tower to bf16 even in a float32 run, so CLIP is compared after the same cast);
- interpolated (SAM's position embeddings, 1024 -> 512 px): the largest deviation;
- resized (embed_tokens, lm_head): old rows bitwise, new rows against the official draw from
  N(mean, 1e-9 cov) (the project writes the mean);
- fresh (adapters, box and objectness heads): shapes, and the adapters' gate alpha = 0 (identity);
- trainable: the project's paper freezing against the official requires_grad set. They may differ only
  by parameters that get no gradient in the official code (CLIP adapters under no_grad; the mask
  decoder's mask head, unused in query mode), which the project freezes instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from grove.train import load_model  # noqa: E402
from grove.weights import official  # noqa: E402

INTERPOLATION_TOLERANCE = 1e-5
NEW_ROW_TOLERANCE = 1e-3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--imported", type=Path)
    args = parser.parse_args()
    imported = args.imported or args.work / "imported_glamm"
    provenance = json.loads((args.work / "glamm_init" / "provenance.json").read_text())
    state = load_file(str(args.work / "glamm_init" / "state.safetensors"))
    model = load_model(imported)
    ours = model.state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    blocks = official.sam_global_blocks(shapes)
    failures: list[str] = []
    counts: dict[str, int] = {}
    worst: dict[str, float] = {}
    for name, info in provenance["tensors"].items():
        decision = official.map_name(name, blocks)
        if isinstance(decision, official.Drop):
            counts["dropped"] = counts.get("dropped", 0) + 1
            continue
        theirs, mine = state[name], ours[decision.target]
        origin = info["source"]
        counts[origin] = counts.get(origin, 0) + 1
        if tuple(mine.shape) != tuple(theirs.shape):
            failures.append(f"{name}: shape {tuple(mine.shape)} vs official {tuple(theirs.shape)}")
            continue
        if origin in ("glamm", "clip_folder"):
            if not torch.equal(mine.to(theirs.dtype), theirs):
                failures.append(f"{name} ({origin}): differs by {float((mine.float() - theirs.float()).abs().max()):.3g}")
        elif origin == "interpolated":
            deviation = float((mine.float() - theirs.float()).abs().max())
            worst[origin] = max(worst.get(origin, 0.0), deviation)
            if deviation > INTERPOLATION_TOLERANCE:
                failures.append(f"{name} (interpolated): differs by {deviation:.3g}")
        elif origin == "resized":
            start = info["new_rows"][0]
            if not torch.equal(mine[:start].to(theirs.dtype), theirs[:start]):
                failures.append(f"{name}: the {start} GLaMM rows differ")
            deviation = float((mine[start:].float() - theirs[start:].float()).abs().max())
            worst["new rows"] = max(worst.get("new rows", 0.0), deviation)
            if deviation > NEW_ROW_TOLERANCE:
                failures.append(f"{name}: new rows differ by {deviation:.3g}")
        elif origin == "fresh" and name.endswith(".alpha"):
            if float(mine) != 0.0 or float(theirs) != 0.0:
                failures.append(f"{name}: a fresh adapter gate should be 0 (ours {float(mine)}, official {float(theirs)})")
    official_trainable = set()
    for name in provenance["trainable_after_interpolate_positional_embeddings"]:
        decision = official.map_name(name, blocks)
        if isinstance(decision, official.Mapping):
            official_trainable.add(decision.target)
    ours_trainable = set(model.trainable_parameter_names())
    unused = tuple(f"box_decoder.{p}" for p in model.box_decoder.unused_parameter_prefixes()) + ("global_encoder.adapters.",)
    only_official = sorted(official_trainable - ours_trainable)
    only_ours = sorted(ours_trainable - official_trainable)
    unexplained = [n for n in only_official if not n.startswith(unused)] + only_ours
    if unexplained:
        failures.append(f"trainable sets differ beyond the no-gradient parameters: {unexplained[:6]}")
    print(f"official origins: {json.dumps(counts)}")
    print(f"largest deviations: " + ", ".join(f"{k} {v:.3g}" for k, v in worst.items()))
    print(f"trainable: official {len(official_trainable)}, ours {len(ours_trainable)}, "
          f"official-only {len(only_official)} (all without gradient in the official code: "
          f"{sorted({n.split('.')[0] + '.' + n.split('.')[1] for n in only_official})}), ours-only {len(only_ours)}")
    for failure in failures:
        print("FAIL", failure)
    print("PASS" if not failures else f"FAIL: {len(failures)} problems")
    return 0 if not failures else 1


if __name__ == "__main__":
    raise SystemExit(main())
