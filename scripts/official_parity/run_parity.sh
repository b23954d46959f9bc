#!/usr/bin/env bash
# Forward parity with the official GROVE code, end to end:
#   scripts/official_parity/run_parity.sh /path/to/grove-checkout /path/to/groundingLMM-checkout [WORK]
# 1. the environments: the project's .venv and the official code's .venv-official (its own pins);
# 2. the official model at reduced width, its outputs and checkpoints (official_side.py model; ~10 min);
# 3. `grove weights import --from grove` of its released layout, with the official vocabulary
#    (official_side.py tokenizer: GLaMM's tokenizer, to which the importer adds GROVE's tokens);
# 4. this project's model on the same inputs (compare.py): the largest deviation per output.
# Also imports the training-time layout (.bin) and checks it gives the same tensors, imports a GLaMM
# checkpoint and checks it against the official train.py initialisation from it (compare_glamm.py), and
# runs GLaMM's grounded conversation generation, official (eval/gcg/infer.py) and the project's
# (grove/model/glamm.py, stage-1 annotation), on the same images (compare_glamm_gcg.py; ~15 min).
set -euo pipefail
cd "$(dirname "$0")/../.."
OFFICIAL=${1:?usage: run_parity.sh /path/to/grove-checkout /path/to/groundingLMM-checkout [WORK]}
GLAMM=${2:?usage: run_parity.sh /path/to/grove-checkout /path/to/groundingLMM-checkout [WORK]}
WORK=${3:-runs/official_parity}
PYO=${GROVE_OFFICIAL_VENV:-.venv-official}/bin/python
mkdir -p "$WORK"
scripts/setup.sh                                   # the project's .venv (as make test does)
bash scripts/official_parity/setup_official_env.sh # the official code's own environment
[ -f "$WORK/tokenizer/glamm_tokenizer/tokenizer_config.json" ] || "$PYO" scripts/official_parity/official_side.py --official "$OFFICIAL" tokenizer --out "$WORK/tokenizer"
[ -f "$WORK/model/reference.json" ] || "$PYO" scripts/official_parity/official_side.py --official "$OFFICIAL" model --out "$WORK/model"
rm -rf "$WORK/model/imported" "$WORK/model/imported_train"
.venv/bin/grove weights import --from grove "$WORK/model/grove_release" --tokenizer "$WORK/tokenizer/glamm_tokenizer" --out "$WORK/model/imported" --no-hash
.venv/bin/grove weights import --from grove-train "$WORK/model/grove_train/grove_ckpt.bin" --like "$WORK/model/grove_release" \
  --tokenizer "$WORK/tokenizer/glamm_tokenizer" --out "$WORK/model/imported_train" --no-hash
.venv/bin/python - "$WORK/model" <<'PY'
import sys
from pathlib import Path
from grove.model.store import read_index
from safetensors import safe_open
work = Path(sys.argv[1])
a, b = read_index(work / "imported"), read_index(work / "imported_train")
assert a.keys() == b.keys(), sorted(a.keys() ^ b.keys())[:5]
differ = []
for name in sorted(a):
    with safe_open(str(work / "imported" / a[name]), "pt") as x, safe_open(str(work / "imported_train" / b[name]), "pt") as y:
        if not x.get_tensor(name).equal(y.get_tensor(name)):
            differ.append(name)
print(f"training-time .bin import: {len(a)} tensors, {len(differ)} differ from the release import {differ[:3]}")
sys.exit(1 if differ else 0)
PY
.venv/bin/python scripts/official_parity/compare.py --work "$WORK/model"

[ -f "$WORK/glamm/glamm_init/provenance.json" ] || "$PYO" scripts/official_parity/official_side.py --official "$OFFICIAL" --glamm "$GLAMM" glamm --out "$WORK/glamm"
rm -rf "$WORK/glamm/imported_glamm"
.venv/bin/grove weights import --from glamm "$WORK/glamm/glamm_release" --clip "$WORK/glamm/clip-vit-tiny-patch14-336" --out "$WORK/glamm/imported_glamm" --no-hash
.venv/bin/python scripts/official_parity/compare_glamm.py --work "$WORK/glamm"

[ -f "$WORK/glamm/glamm_gcg_reference/reference.json" ] || "$PYO" scripts/official_parity/official_side.py --official "$OFFICIAL" --glamm "$GLAMM" glamm-gcg --out "$WORK/glamm" --threads 1
rm -rf "$WORK/glamm/imported_glamm_gcg"
.venv/bin/grove weights import --from glamm "$WORK/glamm/glamm_gcg" --clip "$WORK/glamm/clip-vit-tiny-patch14-336" --grounding-size 1024 --out "$WORK/glamm/imported_glamm_gcg" --no-hash
.venv/bin/python scripts/official_parity/compare_glamm_gcg.py --work "$WORK/glamm" --threads 1
