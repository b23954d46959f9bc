from grove.data.boxes import boxes_by_key, merge_same_phrase_boxes
from grove.data.schema import box_table


def _b(key, frame, idx, phrase_index, phrase, x1, y1, x2, y2, score=None):
    return dict(key=key, frame_index=frame, frame_id=frame * 2, box_index=idx, phrase_index=phrase_index,
                phrase=phrase, x1=x1, y1=y1, x2=x2, y2=y2, score=score)


def test_union_of_same_phrase_instances():
    raw = box_table([
        _b("a", 0, 0, 0, "hands", 0, 0, 10, 10),
        _b("a", 0, 1, 1, "a knife", 5, 5, 8, 8),
        _b("a", 0, 2, 0, "hands", 20, 2, 30, 12),
        _b("a", 1, 0, 0, "hands", 1, 1, 2, 2),
        _b("b", 0, 0, 0, "cup", 3, 3, 4, 4, 0.5),
        _b("b", 0, 1, 0, "cup", 2, 5, 6, 9, 0.9),
    ])
    merged = merge_same_phrase_boxes(raw).to_pylist()
    assert [(m["key"], m["frame_index"], m["box_index"], m["phrase"]) for m in merged] == [
        ("a", 0, 0, "hands"), ("a", 0, 1, "a knife"), ("a", 1, 0, "hands"), ("b", 0, 0, "cup")]
    assert (merged[0]["x1"], merged[0]["y1"], merged[0]["x2"], merged[0]["y2"]) == (0, 0, 30, 12)
    assert merged[3]["score"] == 0.9 and (merged[3]["x1"], merged[3]["y2"]) == (2, 9)
    assert merged[0]["frame_id"] == 0 and merged[2]["frame_id"] == 2


def test_boxes_by_key_slices():
    raw = box_table([_b("b", 0, 0, 0, "x", 0, 0, 1, 1), _b("a", 0, 0, 0, "y", 0, 0, 1, 1), _b("b", 1, 0, 0, "x", 0, 0, 1, 1)])
    split = boxes_by_key(raw)
    assert sorted(split) == ["a", "b"] and split["b"].num_rows == 2
    assert merge_same_phrase_boxes(box_table([])).num_rows == 0
