#!/usr/bin/env bash
# Set up (or update) the project's environments: .venv (the project, editable, with test tools)
# and .venv-dvc (DVC in its own environment; see pyproject.toml for why). Idempotent and quick
# when nothing changed: each environment is rebuilt only when its requirement files change.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
"$PYTHON" - <<'PY' || { echo "setup: Python >= 3.11 is required (found $("$PYTHON" --version 2>&1))." >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY

# pycocoevalcap's PTB tokenizer and METEOR run on Java.
if ! command -v java >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: no Java runtime; installing a headless JRE (openjdk-17-jre-headless) for pycocoevalcap"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null
  else
    echo "setup: pycocoevalcap (METEOR, PTB tokenizer) needs Java and none is on PATH." >&2
    echo "       Install one, then re-run:  sudo apt-get install -y openjdk-17-jre-headless" >&2
    echo "       (macOS: brew install openjdk@17; conda: conda install -c conda-forge openjdk=17)" >&2
    exit 1
  fi
fi

# An optional system package: installed from Debian's archive when this runs as root with apt-get, else a note
# saying how. $1: the package; $2: what is missing; $3: what it is for; $4: what happens without it.
install_optional() {
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: $2; installing Debian's $1 ($3)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$1" >/dev/null; } \
      || echo "setup: note: installing $1 failed; $4" >&2
  else
    echo "setup: note: $2, so $4." >&2
    echo "       To install it:  sudo apt-get install -y $1" >&2
  fi
}

# torchcodec, one of the video backends, loads FFmpeg's shared libraries from the system (PyAV and
# decord bundle their own). It is optional: without FFmpeg it reports itself unavailable, the rest runs.
has_ffmpeg_libs() { { ldconfig -p 2>/dev/null || /sbin/ldconfig -p 2>/dev/null; } | grep -q 'libavcodec\.so\.'; }
if ! has_ffmpeg_libs; then
  install_optional ffmpeg "no FFmpeg libraries" "for the torchcodec video backend" \
    "the torchcodec video backend stays off (PyAV and decord still decode)"
fi

# The browser tests (tests/browser) drive a Chromium through Playwright, the system's: Playwright's own
# browser download needs the network. They are skipped, saying why, where there is none.
has_chromium() {
  [ -n "${GROVE_CHROMIUM:-}" ] && return 0
  for name in chromium chromium-headless-shell chromium-browser; do command -v "$name" >/dev/null 2>&1 && return 0; done
  return 1
}
if ! has_chromium; then
  install_optional chromium "no Chromium on PATH" "for the browser tests, tests/browser" \
    "the browser tests (tests/browser) are skipped (GROVE_CHROMIUM may name a Chromium executable instead)"
fi

stamp_of() { cat "$@" | sha256sum | cut -c1-16; }

project_stamp=$(stamp_of pyproject.toml)
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.install-stamp 2>/dev/null)" != "$project_stamp" ]; then
  echo "setup: installing the project into .venv (first time: several minutes, torch is large)"
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  .venv/bin/pip install -q --upgrade pip setuptools wheel
  .venv/bin/pip install -q -e '.[test]'
  echo "$project_stamp" > .venv/.install-stamp
fi

dvc_stamp=$(stamp_of scripts/requirements-dvc.txt)
if [ ! -x .venv-dvc/bin/dvc ] || [ "$(cat .venv-dvc/.install-stamp 2>/dev/null)" != "$dvc_stamp" ]; then
  echo "setup: installing DVC into its own environment .venv-dvc"
  [ -x .venv-dvc/bin/python ] || "$PYTHON" -m venv .venv-dvc
  .venv-dvc/bin/pip install -q -r scripts/requirements-dvc.txt
  echo "$dvc_stamp" > .venv-dvc/.install-stamp
fi
