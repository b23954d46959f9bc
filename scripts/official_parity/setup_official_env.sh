#!/usr/bin/env bash
# Create (idempotently) the Python venv in which the OFFICIAL GROVE code runs for the
# parity check (scripts/official_parity/official_side.py).  Never the project's .venv.
#
#   bash scripts/official_parity/setup_official_env.sh        # venv at $GROVE_OFFICIAL_VENV or ./.venv-official
#
# Offline except for the package index configured for pip.  The official code pins
# transformers 4.46.3 and numpy 1.26.4; torch is the CPU wheel.  mmcv/mmdet/mmengine
# are NOT installed (not installable here): official_side.py inserts a stand-in for
# GLaMM's region encoder instead.  torchvision is NOT installed either: no wheel
# matching torch 2.13.0+cpu is available (0.28/0.29 fail with "operator torchvision::nms
# does not exist"); official_side.py inserts a stand-in for the three functions the
# official code imports but never runs here.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${GROVE_OFFICIAL_VENV:-$ROOT/.venv-official}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3

TORCH_SPEC="${GROVE_OFFICIAL_TORCH:-torch==2.13.0+cpu}"
PINS=(
  "transformers==4.46.3" "tokenizers==0.20.3" "numpy<2" "einops" "bleach" "sentencepiece" "protobuf"
  "safetensors" "accelerate" "pycocotools" "pycocoevalcap" "scikit-learn" "tqdm" "psutil" "pillow" "pyyaml"
  # imported by the official train.py / dataset code (train.py's functions are used by `glamm`)
  "deepspeed" "peft" "tensorboard" "ffmpeg-python" "future" "opencv-python-headless<4.12"
)

say() { echo "[setup_official_env] $*"; }

if [ -x "$VENV/bin/python" ]; then
  say "venv exists: $VENV"
else
  say "creating venv $VENV with $($PY -V 2>&1)"
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
printf '%s\n' "numpy<2" "transformers==4.46.3" "tokenizers==0.20.3" > "$CONSTRAINTS"

have_torch="$("$VENV/bin/python" -c 'import torch; print(torch.__version__)' 2>/dev/null || true)"
want_torch="${TORCH_SPEC#torch==}"
if [ "$have_torch" = "$want_torch" ]; then
  say "torch $have_torch already installed"
else
  say "installing $TORCH_SPEC (was: ${have_torch:-none})"
  "${PIP[@]}" install -q -c "$CONSTRAINTS" "$TORCH_SPEC"
fi
printf '%s\n' "torch==$want_torch" >> "$CONSTRAINTS"

# one interpreter call instead of one `pip show` per package
mapfile -t missing < <("$VENV/bin/python" - "${PINS[@]}" <<'PYEOF'
import re, sys
from importlib.metadata import PackageNotFoundError, version
for spec in sys.argv[1:]:
    name = re.split(r"[<>=]", spec, maxsplit=1)[0]
    try:
        version(name)
    except PackageNotFoundError:
        print(spec)
PYEOF
)
# the pinned versions must be the installed ones
if ! "$VENV/bin/python" - 2>/dev/null <<'EOF'
import numpy, transformers, sys
sys.exit(0 if transformers.__version__ == "4.46.3" and numpy.__version__.startswith("1.") else 1)
EOF
then
  for spec in "transformers==4.46.3" "numpy<2"; do
    [[ " ${missing[*]} " == *" $spec "* ]] || missing+=("$spec")
  done
fi
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing: ${missing[*]}"
  DS_BUILD_OPS=0 "${PIP[@]}" install -q -c "$CONSTRAINTS" "${missing[@]}"
else
  say "all packages present"
fi

# a torchvision wheel built for another torch breaks `import transformers` paths that probe it
if "${PIP[@]}" show -q torchvision >/dev/null 2>&1 && ! "$VENV/bin/python" -c 'import torchvision.ops' >/dev/null 2>&1; then
  say "removing torchvision (does not load with this torch; official_side.py uses a stand-in)"
  "${PIP[@]}" uninstall -y -q torchvision
fi

"$VENV/bin/python" - <<'EOF'
import importlib, torch, transformers, numpy
mods = ["einops", "bleach", "sentencepiece", "safetensors", "accelerate", "deepspeed", "peft", "cv2", "ffmpeg",
        "torch.utils.tensorboard", "pycocotools", "pycocoevalcap"]
bad = []
for m in mods:
    try:
        importlib.import_module(m)
    except Exception as e:  # pragma: no cover
        bad.append(f"{m}: {type(e).__name__}: {e}")
print(f"[setup_official_env] torch {torch.__version__}, transformers {transformers.__version__}, numpy {numpy.__version__}")
print("[setup_official_env] imports OK" if not bad else "[setup_official_env] import problems: " + "; ".join(bad))
raise SystemExit(1 if bad else 0)
EOF
say "done: $VENV"
