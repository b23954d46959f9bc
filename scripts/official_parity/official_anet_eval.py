"""Run GROVE's official `eval_anet.py` (ActivityNet-Entities' `eval_grd_anet_entities.py`) UNMODIFIED, offline,
and write its numbers as JSON.

    .venv-official/bin/python scripts/official_parity/official_anet_eval.py --official /path/to/grove-checkout \\
        --fixture tests/fixtures/official_anet --out tests/fixtures/official_anet/official_output.json

FIXTURE holds reference.json, split_ids.json, submission.json and lemmas.json. The script file is executed as
`__main__` with `runpy.run_path`, three times: `--eval_mode gen --loc_mode all`, `--eval_mode gen --loc_mode loc`
and `--eval_mode GT`, each with `-r reference.json --split_file split_ids.json --split validation -s
submission.json`. Nothing of the official code is copied or edited; one shim is applied from outside:

(a) Lemmas: the script starts a Stanford CoreNLP server from a hard-coded path
    (`StanfordCoreNLP('/project/.../stanford-corenlp-4.5.7')`), which cannot exist offline. The module
    `stanfordcorenlp` is replaced by one whose `StanfordCoreNLP(...).annotate(text, properties)` answers
    CoreNLP's JSON (`sentences[0].tokens[0].lemma`) from lemmas.json (a word absent from it is its own lemma);
    `close()` does nothing. The project's side of the comparison uses the same table.

Output, per run: the lines the script printed and the unrounded values a `sys.settrace` hook reads when
`ANetGrdEval.grd_eval` returns (prec_cls, recall_cls, f1_cls, avg_prec, avg_rec, avg_f1) and when `gt_grd_eval`
returns (grd_accu).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import runpy
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

GEN_NAMES = ("prec", "recall", "F1", "prec_per_sent", "recall_per_sent", "F1_per_sent")


def corenlp_shim(lemmas: dict[str, str]) -> types.ModuleType:
    module = types.ModuleType("stanfordcorenlp")

    class StanfordCoreNLP:  # the one method and the constructor eval_anet.py calls
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        def annotate(self, text: str, properties: dict | None = None) -> str:
            return json.dumps({"sentences": [{"tokens": [{"word": text, "lemma": lemmas.get(text, text)}]}]})

        def close(self) -> None:
            pass

    module.StanfordCoreNLP = StanfordCoreNLP
    return module


def number(value: Any) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def run_once(script: Path, fixture: Path, mode_args: list[str]) -> dict[str, Any]:
    captured: dict[str, Any] = {}

    def tracer(frame, event, arg):  # noqa: ANN001 - sys.settrace's signature
        if event == "return" and frame.f_code.co_filename == str(script) and frame.f_code.co_name in ("grd_eval", "gt_grd_eval"):
            captured[frame.f_code.co_name] = arg
        return tracer

    argv = [str(script), "-r", str(fixture / "reference.json"), "--split_file", str(fixture / "split_ids.json"),
            "--split", "validation", "-s", str(fixture / "submission.json"), *mode_args]
    saved_argv, out = sys.argv, io.StringIO()
    sys.argv = argv
    sys.settrace(tracer)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):  # tqdm's bar
            runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.settrace(None)
        sys.argv = saved_argv
    if "grd_eval" in captured:
        values = {name: number(v) for name, v in zip(GEN_NAMES, captured["grd_eval"])}
    else:
        values = {"Acc": number(captured["gt_grd_eval"])}
    return {"args": mode_args, "printed": [line for line in out.getvalue().splitlines() if line.strip("-")], "unrounded": values}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="a checkout of the official GROVE repository")
    parser.add_argument("--fixture", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    fixture, script = args.fixture.resolve(), (args.official / "eval_anet.py").resolve()
    sys.modules["stanfordcorenlp"] = corenlp_shim(json.loads((fixture / "lemmas.json").read_text()))
    runs = {"gen_all": run_once(script, fixture, ["--eval_mode", "gen", "--loc_mode", "all"]),
            "gen_loc": run_once(script, fixture, ["--eval_mode", "gen", "--loc_mode", "loc"]),
            "GT": run_once(script, fixture, ["--eval_mode", "GT"])}
    commit = subprocess.run(["git", "-C", str(args.official), "rev-parse", "HEAD"], capture_output=True, text=True)
    record = {"official_script": "eval_anet.py", "official_commit": commit.stdout.strip() or None,
              "shims": ["stanfordcorenlp.StanfordCoreNLP answers lemmas from lemmas.json"], "runs": runs}
    args.out.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    for name, run in runs.items():
        print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in run["unrounded"].items()))


if __name__ == "__main__":
    main()
