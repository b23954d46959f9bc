"""VidSTG and ActivityNet-Entities in the lineage: the paper profile reads the official files, the demo profile
renders stand-ins; predictions and metrics per fine-tuned model, on the tiny profile's lineage (`tiny_demo`)."""

import json

import dagster as dg
import duckdb
import pytest

from orchestration.definitions import build_definitions, experiment_name
from orchestration.defs.common import FT_ONLY
from orchestration.defs.evaluation.grounding import metrics_file, predictions_file
from orchestration.profile import load_profile
from orchestration.resources import LAYOUT, MlflowResource, PipelinePaths

BENCHMARKS = ("vidstg", "anet_entities")


@pytest.mark.parametrize("profile_name", ["demo", "paper"])
def test_definitions_hold_predictions_and_metrics_of_both_benchmarks(profile_name, tmp_path):
    profile = load_profile(profile_name)
    graph = build_definitions(profile, tmp_path).resolve_asset_graph()
    source = "synthetic" if profile_name == "demo" else "official"
    for name in BENCHMARKS:
        benchmark, predictions, metrics = (dg.AssetKey(f"{name}_{kind}") for kind in ("benchmark", "predictions", "metrics"))
        assert {p.to_user_string() for p in graph.get(benchmark).parent_keys} == {f"{name}_{source}"}
        assert graph.get(dg.AssetKey(f"{name}_{source}")).is_materializable == (profile_name == "demo")
        assert set(graph.get(predictions).parent_keys) == {dg.AssetKey("finetuned_model"), benchmark}
        assert set(graph.get(metrics).parent_keys) == {predictions}
        for key in (predictions, metrics):
            assert graph.get(key).partitions_def.get_partition_keys() == [*profile.sizes, FT_ONLY]
        assert graph.get(predictions).pools == {"gpu"}


@pytest.fixture(scope="module")
def lineage(tiny_demo):
    result, root = tiny_demo
    instance = dg.DagsterInstance.from_config(str(root / LAYOUT["dagster_home"]))
    yield result, root, PipelinePaths(root=str(root)), instance
    instance.dispose()


def latest(instance, key, partition=None):
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(key), asset_partitions=[partition] if partition else None), limit=1).records
    assert records, f"{key}[{partition}] was never materialised"
    return records[0].asset_materialization


def test_the_demo_lineage_renders_and_converts_the_standins(lineage):
    from grove.data.dataset import load_dataset

    _, root, paths, instance = lineage
    standins = root / "raw" / "synthetic_benchmarks"
    assert (standins / "vidstg" / "test.json").is_file() and (standins / "anet_entities" / "split_ids_anet_entities.json").is_file()
    for name, split in (("vidstg", "test"), ("anet_entities", "val")):
        assert latest(instance, f"{name}_synthetic").metadata["clips"].value == 2
        dataset = load_dataset(paths.path("benchmarks", name))
        assert dataset.splits == [split] and dataset.clips.num_rows == 2
        assert all(dataset.video_file(p).is_file() for p in dataset.clips["video_path"].to_pylist())
    assert not list((root / "raw" / "synthetic").rglob("synth-vidstg-*"))  # the dataset (and the pool catalog) never see them


def test_every_fine_tuned_model_is_scored_on_both_benchmarks(lineage):
    result, root, paths, instance = lineage
    mlflow = MlflowResource.local(root, experiment_name(result.profile))
    for variant in ("s", FT_ONLY):
        vidstg = json.loads(predictions_file(paths, "vidstg", variant).read_text())
        assert len(vidstg) == 2 and all({"frame_ids", "boxes", "qtype", "sted", "temporal"} <= set(r) for r in vidstg.values())
        anet = json.loads(predictions_file(paths, "anet_entities", variant).read_text())
        assert anet["eval_mode"] == "gen" and sum(len(s) for s in anet["results"].values()) == 2
        for name, headline in (("vidstg", ["msIoU", "R1@0.3", "R1@0.5", "R1@0.7", "mIoU"]),
                               ("anet_entities", ["F1_all", "F1_all_per_sent", "F1_loc", "F1_loc_per_sent"])):
            report = json.loads(metrics_file(paths, name, variant).read_text())
            assert set(headline) <= set(report["metrics"]) and report["counts"]["scored"] == 2
            materialization = latest(instance, f"{name}_metrics", variant)
            assert materialization.metadata[headline[0]].value == report["metrics"][headline[0]]
            assert materialization.tags["dagster/data_version"]
            run = mlflow.latest_run(f"{name}_metrics", variant)
            assert run.data.metrics[headline[0]] == pytest.approx(report["metrics"][headline[0]])
            assert mlflow.latest_run(f"{name}_predictions", variant).data.params["benchmark"] == name
        anet_report = json.loads(metrics_file(paths, "anet_entities", variant).read_text())
        assert anet_report["protocol"]["preset"] == "official" and anet_report["protocol"]["class_match"].startswith("exact")
        head_noun = anet_report["other_protocols"]["head_noun"]  # the demo's option, beside the reference's numbers
        assert head_noun["protocol"]["class_match"].startswith("head_noun") and set(head_noun["intervals"]) == set(head_noun["metrics"])
        assert set(json.loads(metrics_file(paths, "vidstg", variant).read_text())["intervals"]) >= {"msIoU", "R1@0.5", "mIoU"}
    with duckdb.connect(str(paths.path("metrics", "metrics.duckdb")), read_only=True) as con:
        rows = con.execute("select benchmark, preset, count(distinct checkpoint), count(*) = count(ci_low) from metrics "
                           "where benchmark != 'iground' group by benchmark, preset order by benchmark, preset").fetchall()
    assert rows == [("anet_entities", "head_noun", 2, True), ("anet_entities", "official", 2, True), ("vidstg", "official", 2, True)]


def test_dvc_side_commands_rewrite_the_assets_files_byte_for_byte(lineage, tiny_profile, monkeypatch):
    """dvc.yaml's stages (`grove pipeline benchmark / predict-benchmark / evaluate-benchmark`) write exactly what
    the assets wrote: the converted benchmark, each variant's predictions and its metrics JSON."""
    from typer.testing import CliRunner

    from orchestration.cli import app

    _, root, paths, _ = lineage
    variant = tiny_profile.sizes[0]
    files = [p for name in BENCHMARKS for p in (*sorted(f for f in paths.path("benchmarks", name).rglob("*") if f.is_file()),
                                               predictions_file(paths, name, variant), metrics_file(paths, name, variant))]
    before = {path: path.read_bytes() for path in files}
    monkeypatch.setenv("GROVE_RUNS", str(root))
    params = ["--profile", "tiny", "--params", str(tiny_profile.params_file)]
    try:
        for name in BENCHMARKS:
            for command in (["benchmark"], ["predict-benchmark", "--variant", variant], ["evaluate-benchmark", "--variant", variant]):
                output = CliRunner().invoke(app, ["pipeline", command[0], "--benchmark", name, *command[1:], *params])
                assert output.exit_code == 0, output.output
        assert {path: path.read_bytes() for path in files} == before
    finally:
        for path, data in before.items():
            path.write_bytes(data)
    refused = CliRunner().invoke(app, ["pipeline", "predict-benchmark", "--benchmark", "vidstg", "--variant", "huge", *params])
    assert refused.exit_code == 1 and "no fine-tuned variant 'huge'" in refused.output
    refused = CliRunner().invoke(app, ["pipeline", "benchmark", "--benchmark", "kinetics", *params])
    assert refused.exit_code == 1 and "names no benchmark 'kinetics'" in refused.output
