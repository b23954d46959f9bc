"""`grove data convert` / `grove data export`: official files -> dataset folder -> official pickle."""

import json
import pickle

from typer.testing import CliRunner

from grove.data.cli import app
from grove.data.dataset import load_dataset
from tests.data.test_anet_entities import SPLITS
from tests.data.test_anet_entities import _annotation as anet_annotation
from tests.data.test_howtoground import assert_identical, processed_of, raw_iground
from tests.data.test_vidstg import _annotation as vidstg_annotation

runner = CliRunner()


def _run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _pickle(path, obj):
    path.write_bytes(pickle.dumps(obj))
    return path


def test_convert_then_export_round_trips_raw_and_processed(tmp_path):
    records = raw_iground()
    source = _pickle(tmp_path / "iGround_val_set_raw.pkl", records)
    out = tmp_path / "iground"
    result = _run("convert", "--format", "howtoground", "--input", source, "--out", out)
    assert result.exit_code == 0, result.output
    assert "split val: 3 clips, 10 raw / 9 processed boxes" in result.output
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["splits"] == {"val": 3} and manifest["sources"]["val"]["format"] == "howtoground"
    assert manifest["sources"]["val"]["input"] == "../iGround_val_set_raw.pkl"  # relative to the dataset folder
    data = load_dataset(out, processed=False, split="val")
    assert set(data.clips["dataset"].to_pylist()) == {"iground"}

    assert _run("export", "--dataset", out, "--split", "val", "--out", tmp_path / "raw.pkl").exit_code == 0
    assert_identical(records, pickle.loads((tmp_path / "raw.pkl").read_bytes()))
    assert _run("export", "--dataset", out, "--split", "val", "--out", tmp_path / "p.pkl", "--processed").exit_code == 0
    assert pickle.loads((tmp_path / "p.pkl").read_bytes()) == processed_of(records)


def test_splits_accumulate_and_reconversion_replaces(tmp_path):
    records = raw_iground()
    out = tmp_path / "iground"
    val = _pickle(tmp_path / "iGround_val_set_raw.pkl", {k: records[k] for k in list(records)[:2]})
    test = _pickle(tmp_path / "iGround_test_set_raw.pkl", {"a_b_c_0": records["a_b_c_0"]})
    for source in (val, test, val):
        assert _run("convert", "--format", "howtoground", "--input", source, "--out", out).exit_code == 0
    data = load_dataset(out, processed=False)
    assert sorted(data.clips["key"].to_pylist()) == sorted(records)
    assert data.boxes.num_rows == 10  # val's boxes once, not twice
    assert json.loads((out / "dataset.json").read_text())["splits"] == {"test": 1, "val": 2}
    clash = _run("convert", "--format", "howtoground", "--input", test, "--out", out, "--split", "train")
    assert clash.exit_code == 1 and "already belong to another split" in clash.output


def test_processed_input_has_no_raw_export(tmp_path):
    processed = processed_of(raw_iground())
    source = _pickle(tmp_path / "HowToGround1M.pkl", processed)
    out = tmp_path / "htg"
    result = _run("convert", "--format", "howtoground", "--input", source, "--out", out, "--processed", "--split", "pool")
    assert result.exit_code == 0 and "no raw / 9 processed" in result.output
    refused = _run("export", "--dataset", out, "--split", "pool", "--out", tmp_path / "raw.pkl")
    assert refused.exit_code == 1 and "no raw box table" in refused.output
    # another split brings a raw table; the processed-only split still has no raw boxes to export
    val = _pickle(tmp_path / "iGround_val_set_raw.pkl", {"v_0": raw_iground()["a_b_c_0"]})
    assert _run("convert", "--format", "howtoground", "--input", val, "--out", out).exit_code == 0
    refused = _run("export", "--dataset", out, "--split", "pool", "--out", tmp_path / "raw.pkl")
    assert refused.exit_code == 1 and "split 'pool' was converted from ['processed'] boxes only" in refused.output
    assert _run("export", "--dataset", out, "--split", "pool", "--out", tmp_path / "p.pkl", "--processed").exit_code == 0
    assert_identical(processed, pickle.loads((tmp_path / "p.pkl").read_bytes()))


def test_per_clip_directory_with_key_list(tmp_path):
    records = raw_iground()
    directory = tmp_path / "annotations"
    directory.mkdir()
    for key, record in records.items():
        _pickle(directory / f"{key}.pkl", record)
    keys = tmp_path / "train_keys.pkl"
    _pickle(keys, ["kTNXW1FpOyk_13", "kTNXW1FpOyk_12"])
    out = tmp_path / "ds"
    result = _run("convert", "--format", "howtoground", "--input", directory, "--keys", keys, "--split", "train", "--out", out)
    assert result.exit_code == 0, result.output
    assert _run("export", "--dataset", out, "--split", "train", "--out", tmp_path / "clips", "--per-clip").exit_code == 0
    for key in ("kTNXW1FpOyk_13", "kTNXW1FpOyk_12"):
        assert_identical(records[key], pickle.loads((tmp_path / "clips" / f"{key}.pkl").read_bytes()))
    assert not (tmp_path / "clips" / "a_b_c_0.pkl").exists()


def test_vidstg_and_anet(tmp_path):
    vidstg = tmp_path / "test.json"
    vidstg.write_text(json.dumps(vidstg_annotation()))
    assert _run("convert", "--format", "vidstg", "--input", vidstg, "--out", tmp_path / "vidstg").exit_code == 0
    data = load_dataset(tmp_path / "vidstg", processed=True, split="test")
    assert data.clips.num_rows == 3 and data.boxes.num_rows == 7 + 8 + 2

    ann = tmp_path / "anet.json"
    ann.write_text(json.dumps(anet_annotation()))
    ids = tmp_path / "split_ids.json"
    ids.write_text(json.dumps(SPLITS))
    result = _run("convert", "--format", "anet", "--input", ann, "--split-ids", ids, "--split", "train",
                  "--fps", "25", "--out", tmp_path / "anet")
    assert result.exit_code == 0, result.output
    data = load_dataset(tmp_path / "anet", processed=False, split="train")
    assert data.clips.num_rows == 3 and data.boxes.num_rows == 6
    no_split = _run("convert", "--format", "anet", "--input", ann, "--split-ids", ids, "--out", tmp_path / "anet2")
    assert no_split.exit_code == 1 and "--split is needed" in no_split.output


def test_bad_inputs_are_reported_and_write_nothing(tmp_path):
    class Evil:
        def __reduce__(self):
            return (exec, ("raise SystemExit",))

    evil = _pickle(tmp_path / "iGround_val_set_raw.pkl", {"x_1": Evil()})
    result = _run("convert", "--format", "howtoground", "--input", evil, "--out", tmp_path / "ds")
    assert result.exit_code == 1
    assert f"{evil}: refused to load global 'builtins.exec'" in result.output
    assert not (tmp_path / "ds" / "clips.parquet").exists()

    records = raw_iground()
    del records["a_b_c_0"]["caption"]
    broken = _pickle(tmp_path / "broken_val.pkl", records)
    result = _run("convert", "--format", "howtoground", "--input", broken, "--out", tmp_path / "ds")
    assert result.exit_code == 1 and f"{broken}: clip 'a_b_c_0': missing field(s) ['caption']" in result.output

    text = tmp_path / "notes.pkl"
    text.write_text("hello")
    result = _run("convert", "--format", "howtoground", "--input", text, "--out", tmp_path / "ds")
    assert result.exit_code == 1 and f"{text}: not a readable pickle" in result.output
    result = _run("export", "--dataset", tmp_path / "ds", "--split", "val", "--out", tmp_path / "o.pkl")
    assert result.exit_code == 1 and "no raw box table" in result.output
