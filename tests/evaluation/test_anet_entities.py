"""ActivityNet-Entities grounding: hand-checked Acc, F1_all/F1_loc and the per-sentence denominator quirk."""

import http.server
import json
import threading

import numpy as np
import pytest

from evaluation.anet_entities import (
    CoreNLPLemmatizer,
    SpacyLemmatizer,
    evaluate_anet_entities,
    load_reference,
)
from evaluation.iou import iou_anet

FAR = [300, 300, 310, 310]


def _boxes(frame, box):
    """10 boxes (one per sampled frame): `box` on `frame`, far away elsewhere."""
    return [box if f == frame else FAR for f in range(10)]


REFERENCE = {"annotations": {
    "v1": {"segments": {
        "0": {"tokens": ["a", "man", "cuts", "an", "apple", "with", "a", "knife"], "process_idx": [[1], [4], [7]],
              "process_clss": [["man"], ["apple"], ["knife"]], "frame_ind": [2, 5, 7],
              "process_bnd_box": [[10, 10, 50, 50], [60, 60, 80, 80], [0, 0, 9, 9]]},
        "1": {"tokens": ["the", "dog", "runs"], "process_idx": [[1]], "process_clss": [["dog"]], "frame_ind": [0],
              "process_bnd_box": [[0, 0, 30, 30]]},
        "2": {"tokens": ["nothing"], "process_idx": [], "process_clss": [], "frame_ind": [], "process_bnd_box": []}}},
    "v2": {"segments": {
        "0": {"tokens": ["a", "man", "sits"], "process_idx": [[1]], "process_clss": [["man"]], "frame_ind": [9],
              "process_bnd_box": [[5, 5, 25, 25]]}}},
    "v3": {"segments": {"0": {"tokens": ["x"], "process_idx": [[0]], "process_clss": [["x"]], "frame_ind": [0],
                              "process_bnd_box": [[0, 0, 5, 5]]}}},
}}
SPLITS = {"validation": ["v1", "v2"], "training": ["v3"]}
LEMMAS = {"cuts": "cut", "cutting": "cut", "knives": "knife"}


def fake_lemmatizer(words):
    return [LEMMAS.get(w, w) for w in words]


@pytest.fixture()
def reference(tmp_path):
    (tmp_path / "ref.json").write_text(json.dumps(REFERENCE))
    (tmp_path / "split.json").write_text(json.dumps(SPLITS))
    return load_reference(tmp_path / "ref.json", tmp_path / "split.json", ["validation"])


GEN = {
    "v1": {"0": {"clss": ["man", "knife", "table", "knives", "cutting"],
                 "bbox_for_all_frames": [_boxes(2, [10, 10, 50, 50]), _boxes(7, [40, 40, 49, 49]), _boxes(0, FAR),
                                         _boxes(7, [0, 0, 9, 9]), _boxes(0, FAR)]}},
    "v2": {"0": {"clss": ["man"], "bbox_for_all_frames": [_boxes(9, [5, 5, 25, 25])]}},
    "v3": {"0": {"clss": ["x"], "bbox_for_all_frames": [_boxes(0, [0, 0, 5, 5])]}},  # outside the split
}


def test_generated_sentence_scores(reference):
    report = evaluate_anet_entities(reference, GEN, "gen", fake_lemmatizer, "fake")
    m = report.metrics
    # all: precision man [1, 1], knife [0], table [0], knives [0] ('cutting' lemmatises to an unannotated word: skipped)
    # over the 3 classes of the predicted segments (man, apple, knife); recall man [1, 1], apple [0], knife [0], dog [0]
    assert m["Prec_all"] == pytest.approx(1 / 3) and m["Rec_all"] == pytest.approx(1 / 3)
    assert m["F1_all"] == pytest.approx(1 / 3)
    # per sentence: v1/0 p = 1/4 (man 1; knife, table, knives 0), r = 1/3, so F1 = 2/7; v2/0 F1 = 1;
    # the sum is divided by the 3 submitted segments (v3, outside the split, counts too)
    assert m["F1_all_per_sent"] == pytest.approx((2 / 7 + 1) / 3)
    # loc: hallucinated words and unpredicted GT words are skipped: v1/0 p = r = 1/2
    assert m["Prec_loc"] == pytest.approx(1 / 3) and m["Rec_loc"] == pytest.approx(1 / 3)
    assert m["F1_loc_per_sent"] == pytest.approx((0.5 + 1) / 3)
    assert report.protocol["lemmatizer"] == "fake"
    assert [(p.item, p.kind) for p in report.problems] == [("v3", "unknown_video")]


def test_gt_sentence_accuracy(reference):
    submission = {"v1": {"0": {"clss": ["man", "knife"], "idx_in_sent": [1, 7],
                               "bbox_for_all_frames": [_boxes(2, [10, 10, 50, 50]), _boxes(6, [0, 0, 9, 9])]}},
                  "v2": {"0": {"clss": ["man"], "idx_in_sent": [1], "bbox_for_all_frames": [_boxes(9, [5, 5, 25, 25])]}}}
    report = evaluate_anet_entities(reference, submission, "GT")
    # man [1, 1], apple [0] (not grounded), knife [0] (right box, wrong frame), dog [0] (segment missing)
    assert report.metrics == {"Acc": pytest.approx(0.25)}


def test_malformed_segments_are_named_and_dropped(reference):
    bad = {"v1": {"0": {"clss": ["man"], "bbox_for_all_frames": [[[0, 0, 1, 1]] * 9]}}, "v2": GEN["v2"]}
    report = evaluate_anet_entities(reference, bad, "gen", fake_lemmatizer)
    assert [(p.item, p.kind) for p in report.problems] == [("v1/0", "invalid_prediction")]
    assert "10 finite boxes" in report.problems[0].message
    assert report.num_scored == 1


def test_plus_one_iou_and_degenerate_boxes():
    assert iou_anet(np.array([0, 0, 9, 9]), np.array([0, 0, 9, 9])) == 1.0
    assert iou_anet(np.array([0, 0, 10, 10]), np.array([0, 0, 10, 4])) == pytest.approx(55 / 121, rel=1e-6)
    assert iou_anet(np.array([0, 0, 9, 9]), np.array([4, 4, 4, 4])) == 0.0  # a one-pixel GT box
    assert iou_anet(np.array([4, 4, 4, 4]), np.array([4, 4, 4, 4])) == -1.0  # a one-pixel prediction
    assert iou_anet(np.array([0, 0, 9, 9]), np.array([0, 0, 9, 9]), same_frame=np.array(False)) == 0.0
    assert iou_anet(np.array([0, 0, 9, 9]), np.array([0, 0, 9, 9])).dtype == np.float32


def test_spacy_lemmatizer():
    assert SpacyLemmatizer()(["knives", "cutting", "men", ""]) == ["knife", "cut", "man", ""]


class _FakeCoreNLP(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's naming
        text = self.rfile.read(int(self.headers["Content-Length"])).decode()
        assert "lemma" in self.path
        body = json.dumps({"sentences": [{"tokens": [{"word": text, "lemma": LEMMAS.get(text, text)}]}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_corenlp_server_client_and_its_record(reference):
    server = http.server.HTTPServer(("127.0.0.1", 0), _FakeCoreNLP)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        lemmatizer = CoreNLPLemmatizer(f"http://127.0.0.1:{server.server_port}")
        assert lemmatizer(["cutting", "dog"]) == ["cut", "dog"]
        report = evaluate_anet_entities(reference, GEN, "gen", lemmatizer)
        assert report.protocol["lemmatizer"].startswith("Stanford CoreNLP server at http://127.0.0.1")
        assert report.metrics == evaluate_anet_entities(reference, GEN, "gen", fake_lemmatizer).metrics
    finally:
        server.shutdown()
    with pytest.raises(RuntimeError, match="CoreNLP server"):
        CoreNLPLemmatizer(f"http://127.0.0.1:{server.server_port}", timeout_s=2)(["x"])


def test_head_noun_class_matching_reads_phrases_as_their_head_nouns(reference):
    from evaluation.anet_entities import head_word

    assert [head_word(p) for p in ("a man in a red shirt", "two small knives", "the apple, cut", "", "with a knife")] == \
        ["man", "knives", "apple", "", "knife"]
    phrases = {
        "v1": {"0": {"clss": ["a tall man in a hat", "a big knives"], "bbox_for_all_frames": [_boxes(2, [10, 10, 50, 50]), _boxes(7, [0, 0, 9, 9])]}},
        "v2": {"0": {"clss": ["the man"], "bbox_for_all_frames": [_boxes(9, [5, 5, 25, 25])]}},
    }
    exact = evaluate_anet_entities(reference, phrases, "gen", fake_lemmatizer, "fake")
    assert exact.metrics["F1_all"] == 0.0 and exact.protocol["class_match"] == "exact (the reference)"
    heads = evaluate_anet_entities(reference, phrases, "gen", fake_lemmatizer, "fake", class_match="head_noun")
    words = {"v1": {"0": {"clss": ["man", "knife"], "bbox_for_all_frames": phrases["v1"]["0"]["bbox_for_all_frames"]}},
             "v2": {"0": {"clss": ["man"], "bbox_for_all_frames": phrases["v2"]["0"]["bbox_for_all_frames"]}}}
    assert heads.metrics == evaluate_anet_entities(reference, words, "gen", fake_lemmatizer, "fake").metrics
    assert heads.protocol["classes_mapped"] == 3 and heads.protocol["class_match"].startswith("head_noun")
    with pytest.raises(ValueError, match="class_match"):
        evaluate_anet_entities(reference, phrases, "GT", class_match="head_noun")


@pytest.mark.parametrize("mode", ["all", "loc"])
def test_segment_statistics_recompute_the_scores_and_give_intervals(reference, mode):
    from evaluation.anet_entities import clean_submission, generation_replicates, generation_scores, segment_statistics
    from evaluation.bootstrap import BootstrapSettings

    pred, _ = clean_submission(GEN, "gen")
    words = sorted({t for anns in reference.values() for a in anns["segments"].values() for t in a["tokens"]}
                   | {c for s in pred.values() for e in s.values() for c in e["clss"]})
    lemmas = dict(zip(words, fake_lemmatizer(words)))
    stats = segment_statistics(reference, pred, mode, lemmas)
    assert stats["keys"] == ["v1/0", "v1/1", "v1/2", "v2/0"] and stats["outside"] == 1  # v3 is submitted, not in val
    once = generation_replicates(stats, np.ones((1, 4)))
    assert {k: v[0] for k, v in once.items()} == pytest.approx(generation_scores(reference, pred, mode, lemmas), abs=1e-12)
    only_v2 = generation_replicates(stats, np.array([[0, 0, 0, 4]]))  # v2/0 drawn four times: its man is a hit
    assert only_v2[f"F1_{mode}"][0] == pytest.approx(1.0) and only_v2[f"F1_{mode}_per_sent"][0] == pytest.approx(4 / 5)
    report = evaluate_anet_entities(reference, GEN, "gen", fake_lemmatizer, "fake", bootstrap=BootstrapSettings(200, 3))
    interval = report.intervals[f"F1_{mode}"]
    assert interval.low <= report.metrics[f"F1_{mode}"] <= interval.high and interval.resamples == 200
    assert report.to_dict()["uncertainty"]["clips"] == 4
