import json

from typer.testing import CliRunner

from annotation.cli import parse_options
from orchestration.cli import app

runner = CliRunner()


def test_grove_annotate_then_quality(synthetic, tmp_path):
    out = tmp_path / "auto"
    result = runner.invoke(app, ["annotate", "--catalog", str(synthetic.catalog), "--out", str(out),
                                 "--shard-size", "6", "--stage1-option", "noise=low", "--stage3", "lexical"])
    assert result.exit_code == 0, result.output
    assert "annotated 11 clips (1 rejected)" in result.output and "stage 2:" in result.output
    assert json.loads((out / "dataset.json").read_text())["creator"]["config"]["stage1_options"] == {"noise": "low"}

    result = runner.invoke(app, ["annotate", "quality", "--auto", str(out), "--gt", str(synthetic.gt), "--json"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.output[result.output.index("{"):])
    assert set(row) >= {"METEOR", "CIDEr", "AP50", "Recall", "naive"}
    assert 0 <= row["METEOR"] <= 100 and row["CIDEr"] > 0


def test_bad_input_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["annotate", "--catalog", str(tmp_path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "not a catalog" in result.output
    result = runner.invoke(app, ["annotate", "--catalog", str(tmp_path)])
    assert result.exit_code == 2 and "--out" in result.output


def test_option_values_parse_as_json_where_they_can():
    assert parse_options(["noise=high", "seed=3", "check_video=false", "x=[1, 2]"], "--o") == {
        "noise": "high", "seed": 3, "check_video": False, "x": [1, 2]}
