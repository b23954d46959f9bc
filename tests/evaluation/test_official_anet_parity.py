"""ActivityNet-Entities F1 as GROVE's own `eval_anet.py` computes it, checked against that script run unmodified.

tests/fixtures/official_anet/ holds a reference file, split ids, a submission in the official layout (see
make_fixture.py for the cases) and `official_output.json`: the numbers the official script returned in `gen`
mode (`all` and `loc`) and in `GT` mode, written by scripts/official_parity/official_anet_eval.py with a lemma
table (lemmas.json) standing in for its Stanford CoreNLP server. The project's side uses the same table.
"""

import json
from pathlib import Path

import pytest

from evaluation.anet_entities import evaluate_anet_entities, load_reference

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "official_anet"
OURS = {"prec": "Prec_{}", "recall": "Rec_{}", "F1": "F1_{}", "prec_per_sent": "Prec_{}_per_sent",
        "recall_per_sent": "Rec_{}_per_sent", "F1_per_sent": "F1_{}_per_sent"}


@pytest.fixture(scope="module")
def official():
    return json.loads((FIXTURE / "official_output.json").read_text())["runs"]


@pytest.fixture(scope="module")
def inputs():
    lemmas = json.loads((FIXTURE / "lemmas.json").read_text())
    reference = load_reference(FIXTURE / "reference.json", FIXTURE / "split_ids.json", ["validation"])
    results = json.loads((FIXTURE / "submission.json").read_text())["results"]
    return reference, results, lambda words: [lemmas.get(w, w) for w in words]


def test_gen_mode_reproduces_every_number_of_the_official_script(official, inputs):
    reference, results, lemmatize = inputs
    report = evaluate_anet_entities(reference, results, "gen", lemmatize, "lemmas.json", split="validation")
    for mode in ("all", "loc"):
        values = official[f"gen_{mode}"]["unrounded"]
        assert set(values) == set(OURS)
        for name, value in values.items():
            assert report.metrics[OURS[name].format(mode)] == pytest.approx(value, abs=1e-12), (mode, name)
    assert 0 < report.metrics["F1_all"] < 1 and 0 < report.metrics["F1_loc_per_sent"] < 1  # the fixture is not degenerate


def test_gt_mode_reproduces_the_official_accuracy(official, inputs):
    reference, results, _ = inputs
    report = evaluate_anet_entities(reference, results, "GT", split="validation")
    assert report.metrics["Acc"] == pytest.approx(official["GT"]["unrounded"]["Acc"], abs=1e-12)


def test_the_printed_lines_agree_to_four_decimals(official, inputs):
    reference, results, lemmatize = inputs
    report = evaluate_anet_entities(reference, results, "gen", lemmatize, "lemmas.json", split="validation")
    for mode in ("all", "loc"):
        line = next(line for line in official[f"gen_{mode}"]["printed"] if line.startswith(f"The overall precision_{mode} /"))
        shown = " / ".join(f"{report.metrics[OURS[name].format(mode)]:.4f}" for name in ("prec", "recall", "F1"))
        assert line.endswith(shown), line
