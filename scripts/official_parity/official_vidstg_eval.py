"""Run GROVE's official `eval_vidstg.py` UNMODIFIED on a VidSTG annotation file and official-layout predictions,
and write its numbers as JSON.

    .venv-official/bin/python scripts/official_parity/official_vidstg_eval.py --official /path/to/grove-checkout \\
        --vidstg tests/fixtures/official_vidstg --pred tests/fixtures/official_vidstg/pred_official.pkl \\
        --out tests/fixtures/official_vidstg/official_output.json

The script file is executed as `__main__` with `runpy.run_path` and
`--vidstg_path DIR --subset test --video_predictions PRED` (it reads DIR/test.json). Nothing of the official code
is copied or edited, and no shim is needed: it is numpy only. Its `main` prints the summary dict; a
`sys.settrace` hook reads, when `VidSTGEvaluator.summarize` returns, its `self.results` (per sentence: qtype,
gt_viou, gt_viou@0.3, gt_viou@0.5) and the returned dict, unrounded.

Output: `printed` (the lines the script printed), `unrounded` (the returned dict), `per_video` (per sentence),
and the official commit when DIR is a git checkout.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any


def run_official(official: Path, vidstg: Path, pred: Path) -> dict[str, Any]:
    script = official / "eval_vidstg.py"
    captured: dict[str, Any] = {}

    def tracer(frame, event, arg):  # noqa: ANN001 - sys.settrace's signature
        if event == "return" and frame.f_code.co_name == "summarize" and frame.f_code.co_filename == str(script):
            captured["results"] = frame.f_locals["self"].results
            captured["summary"] = arg
        return tracer

    argv = [str(script), "--vidstg_path", str(vidstg), "--subset", "test", "--video_predictions", str(pred)]
    saved_argv, out = sys.argv, io.StringIO()
    sys.argv = argv
    sys.settrace(tracer)
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.settrace(None)
        sys.argv = saved_argv
    per_video = {str(key): {"qtype": value["qtype"], **{name: float(value[name]) for name in value if name.startswith("gt_viou")}}
                 for key, value in captured["results"].items()}
    return {"argv": argv[1:], "printed": out.getvalue().splitlines(),
            "unrounded": {name: float(value) for name, value in captured["summary"].items()}, "per_video": per_video}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="a checkout of the official GROVE repository")
    parser.add_argument("--vidstg", type=Path, required=True, help="folder holding test.json")
    parser.add_argument("--pred", type=Path, required=True, help="predictions pickle in the official layout")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    record = run_official(args.official.resolve(), args.vidstg.resolve(), args.pred.resolve())
    commit = subprocess.run(["git", "-C", str(args.official), "rev-parse", "HEAD"], capture_output=True, text=True)
    record = {"official_script": "eval_vidstg.py", "official_commit": commit.stdout.strip() or None, **record}
    record["argv"] = [Path(a).name if "/" in a else a for a in record["argv"]]  # no machine paths in the fixture
    args.out.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    print(f"official numbers -> {args.out}: " + ", ".join(f"{k} {v:.4f}" for k, v in record["unrounded"].items()))


if __name__ == "__main__":
    main()
