"""`grove eval vidstg --protocol grove` reproduces what GROVE's own `eval_vidstg.py` computed on a fixed fixture.

tests/fixtures/official_vidstg/ holds a TubeDETR-layout annotation file and predictions in the layout GROVE's
`infer_vidstg.py` pickles (see make_fixture.py for the cases), and `official_output.json`: what the UNMODIFIED
official script printed and returned, and its per-sentence values, written by
scripts/official_parity/official_vidstg_eval.py. No official checkout is needed here.
"""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from evaluation.vidstg import evaluate_vidstg, load_vidstg_gt
from grove.data.safe_pickle import safe_load
from orchestration.cli import app

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "official_vidstg"
GT, PRED = FIXTURE / "test.json", FIXTURE / "pred_official.pkl"


@pytest.fixture(scope="module")
def official():
    return json.loads((FIXTURE / "official_output.json").read_text())


def ours_name(official_name: str) -> str:
    """eval_vidstg.py's `<qtype>_gt_viou[@R]` is GROVE's msIoU of that sentence type."""
    return official_name.replace("gt_viou", "msIoU")


def test_every_returned_number_is_reproduced_by_the_cli(official):
    result = CliRunner().invoke(app, ["eval", "vidstg", "--gt", str(GT), "--pred", str(PRED), "--protocol", "grove", "--json"])
    assert result.exit_code == 0, result.output
    ours = json.loads(result.stdout.strip().splitlines()[-1])
    assert ours["counts"]["scored"] == len(official["per_video"]) == 14 and not ours["problems"]
    assert set(ours["metrics"]) == {ours_name(name) for name in official["unrounded"]}
    for name, value in official["unrounded"].items():
        assert ours["metrics"][ours_name(name)] == pytest.approx(value, abs=1e-12), name
    printed = [line for line in official["printed"] if ":" in line and not line.startswith("{")]
    for line in printed:  # "declarative gt_viou@0.3: 0.8571"
        label, text = line.rsplit(": ", 1)
        qtype, name = label.split(" ")
        assert f"{ours['metrics'][ours_name(f'{qtype}_{name}')]:.4f}" == text, line


def test_every_sentence_scores_as_the_official_script_scores_it(official):
    report = evaluate_vidstg(load_vidstg_gt(GT), safe_load(PRED), "grove")
    assert set(report.per_item) == set(official["per_video"])
    for key, expected in official["per_video"].items():
        for name in ("gt_viou", "gt_viou@0.3", "gt_viou@0.5"):
            assert report.per_item[key][ours_name(name)] == pytest.approx(expected[name], abs=1e-12), (key, name)
    # the strict threshold on the edge cases: mean IoU a hair around 0.3 and 0.5
    edges = {key: value["gt_viou"] for key, value in official["per_video"].items() if abs(value["gt_viou"] - 0.3) < 1e-3 or abs(value["gt_viou"] - 0.5) < 1e-3}
    assert len(edges) >= 4
