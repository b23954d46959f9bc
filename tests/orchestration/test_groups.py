"""Every asset group materialised on tiny inputs: `grove demo`'s lineage on the tiny profile (a few
2-second synthetic clips, one-step training) into a temporary runs root with its own Dagster home
and MLflow store. One session-wide run (the `tiny_demo` fixture); each test checks one group."""

import json
import os
import subprocess
import sys

import dagster as dg
import duckdb
import pyarrow.parquet as pq
import pytest
from rich.console import Console
from typer.testing import CliRunner

from grove.data.dataset import load_dataset
from grove.train import read_train_config
from orchestration.cli import app
from orchestration.definitions import build_definitions, experiment_name
from orchestration.demo import run_demo
from orchestration.profile import REPO_ROOT
from orchestration.resources import LAYOUT, MlflowResource, PipelinePaths

HEADLINE = ("METEOR", "CIDEr", "AP50", "Recall")


@pytest.fixture(scope="module")
def lineage(tiny_demo):
    result, root = tiny_demo
    instance = dg.DagsterInstance.from_config(str(root / LAYOUT["dagster_home"]))
    yield result, root, PipelinePaths(root=str(root)), instance
    instance.dispose()


def latest(instance: dg.DagsterInstance, key: str, partition: str | None = None) -> dg.AssetMaterialization:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(key), asset_partitions=[partition] if partition else None), limit=1
    ).records
    assert records, f"{key}[{partition}] was never materialised"
    return records[0].asset_materialization


def check_passed(instance: dg.DagsterInstance, key: str, name: str, partition: str | None = None) -> bool:
    history = instance.event_log_storage.get_asset_check_execution_history(dg.AssetCheckKey(dg.AssetKey(key), name), limit=20)
    evaluations = [r.event.asset_check_evaluation for r in history if r.event and r.event.asset_check_evaluation]
    evaluations = [e for e in evaluations if partition is None or e.partition == partition] or evaluations
    assert evaluations, f"check {key}:{name} never ran"
    return evaluations[0].passed


def test_raw_videos_group(lineage):
    _, _, paths, instance = lineage
    synthetic = load_dataset(paths.path("synthetic"))
    assert sorted(synthetic.splits) == ["pool", "test", "train", "val"] and synthetic.clips.num_rows == 13
    catalog = latest(instance, "pool_catalog")
    assert catalog.metadata["videos"].value == 13 and catalog.metadata["rejects"].value == 0
    assert pq.read_table(paths.path("catalog") / "catalog.parquet").num_rows == 13
    assert latest(instance, "synthetic_dataset").tags["dagster/data_version"].endswith(".dir")  # a DVC hash


def test_annotation_group_partitions_by_shard_and_checks_every_shard(lineage):
    _, _, paths, instance = lineage
    shards = instance.get_dynamic_partitions("annotation_shards")
    assert shards == ["shard-00000", "shard-00001"]  # 13 clips, 8 a shard
    for shard in shards:
        stage3 = latest(instance, "stage3_grounded_clips", shard)
        assert stage3.metadata["clips"].value >= 1
        for check in ("stage3_schema", "stage3_captions_non_empty", "stage3_boxes_inside_frame"):
            assert check_passed(instance, "stage3_grounded_clips", check, shard)
        assert check_passed(instance, "stage2_video_captions", "stage2_fallback_rate", shard)
    pool = load_dataset(paths.path("annotation"))
    assert pool.clips.num_rows == latest(instance, "annotated_pool").metadata["clips"].value > 0
    quality = json.loads(paths.path("reports", "annotation_quality.json").read_text())
    assert all(quality[name] is not None for name in HEADLINE) and "naive" in quality


def test_benchmarks_group_is_a_dataset_folder_of_its_own(lineage):
    _, _, paths, _ = lineage
    iground = load_dataset(paths.path("iground"))
    assert sorted(iground.splits) == ["test", "train", "val"]
    assert all(iground.video_file(p).exists() for p in iground.clips["video_path"].to_pylist())


def test_scaling_group_draws_nested_subsets_of_the_pool_split(lineage):
    _, _, paths, instance = lineage
    subset = load_dataset(paths.path("subsets", "s"))
    assert subset.clips.num_rows == 4 and subset.splits == ["pool"]
    assert set(subset.clips["key"].to_pylist()) <= set(load_dataset(paths.path("annotation")).clips["key"].to_pylist())
    assert all(subset.video_file(p).exists() for p in subset.clips["video_path"].to_pylist())
    assert latest(instance, "pretraining_subset", "s").metadata["clips"].value == 4


def test_models_group_trains_through_pipes_into_mlflow(lineage):
    result, root, paths, instance = lineage
    mlflow = MlflowResource.local(root, experiment_name(result.profile))
    for key, partition in (("pretrained_model", "s"), ("finetuned_model", "s"), ("finetuned_model", "ft_only")):
        materialization = latest(instance, key, partition)
        assert (paths.path("pretrained" if key == "pretrained_model" else "finetuned", partition) / "train_config.json").exists()
        assert materialization.metadata["steps"].value == 1  # reported by the Pipes process
        run = mlflow.latest_run(key, partition)
        assert run.data.tags["dagster.code_version"] and run.data.tags["dvc.output"] == materialization.tags["dagster/data_version"]
        assert run.data.params["max_steps"] == "1"
        assert mlflow.client().get_metric_history(run.info.run_id, "train/loss")  # the curve the training process logged
    finetune_config = json.loads((paths.path("finetuned", "s") / "train_config.json").read_text())
    assert finetune_config["init"] == "../../pretrain/s"  # paths relative to the training folder: no absolute path
    assert read_train_config(paths.path("finetuned", "s")).init == str(paths.path("finetuned", "s") / "../../pretrain/s")
    assert json.loads((paths.path("finetuned", "ft_only") / "train_config.json").read_text())["init"] is None
    champion = mlflow.client().get_model_version_by_alias(mlflow.registered_model, "champion")
    assert champion.tags["partition"] == latest(instance, "champion_model").metadata["chosen"].value


def test_evaluation_group_scores_every_variant_and_draws_the_curve(lineage, tiny_profile):
    result, _, paths, instance = lineage
    bootstrap = tiny_profile.get("evaluation.bootstrap")
    for variant in ("s", "ft_only"):
        report = json.loads(paths.path("metrics", "iground", f"{variant}.json").read_text())
        assert set(HEADLINE) <= set(report["metrics"]) and report["counts"]["scored"] == 2
        assert check_passed(instance, "iground_metrics", "metrics_finite_in_range", variant)
        # both protocols, labelled, each metric with its interval and what drew it
        corrected = report["other_protocols"]["corrected"]
        assert report["protocol"]["preset"] == "official" and corrected["protocol"]["preset"] == "corrected"
        for part in (report, corrected):
            assert set(HEADLINE) <= set(part["intervals"]) and len(part["clip_statistics"]["keys"]) == 2
            assert all((i["resamples"], i["seed"], i["confidence"]) == (bootstrap["resamples"], bootstrap["seed"],
                                                                         bootstrap["confidence"]) for i in part["intervals"].values())
        metadata = latest(instance, "iground_metrics", variant).metadata
        assert {"CIDEr", "CIDEr.ci_low", "CIDEr.ci_high", "corrected.Recall.ci_high"} <= set(metadata)
        assert "| corrected |" in metadata["metrics"].value
    with duckdb.connect(str(paths.path("metrics", "metrics.duckdb")), read_only=True) as con:
        assert con.execute("select count(distinct checkpoint) from metrics").fetchone()[0] == 2
        rows = con.execute("select preset, count(*), count(ci_low) from metrics where benchmark = 'iground' group by preset order by preset").fetchall()
        assert [(preset, n == bounded) for preset, n, bounded in rows] == [("corrected", True), ("official", True)]
    assert result.plot.exists() and result.plot.stat().st_size > 1000
    assert [row.label for row in result.rows] == ["s (4)", "FT-only"]
    assert [row.protocols for row in result.rows] == [["official", "corrected"]] * 2
    curve = latest(instance, "data_scaling_curve").metadata
    assert "vs FT-only (official)" in curve and "| s (4) |" in curve["vs FT-only (corrected)"].value


def test_a_second_demo_reuses_everything(lineage, tiny_profile):
    result, root, _, _ = lineage
    again = run_demo(tiny_profile, root=root)
    assert again.report.materialised == 0 and again.report.reused == len(again.report.outcomes)
    assert [row.metrics for row in again.rows] == [row.metrics for row in result.rows]


def test_the_demo_prints_the_table_the_plot_the_experiment_and_working_ui_commands(lineage):
    result, root, _, _ = lineage
    console = Console(record=True, width=400)
    result.print(console)
    text = console.export_text()
    headers = [line for line in text.splitlines() if "METEOR" in line]
    assert [cell.strip() for cell in headers[0].split("┃")[1:6]] == ["pre-training", *HEADLINE]
    # per protocol: the table (sizes, then FT-only; x100 with intervals), then the sizes' paired differences
    lines = text.splitlines()
    for protocol in ("official", "corrected"):
        title = next(i for i, line in enumerate(lines) if f"{protocol} protocol (" in line)
        for row in result.rows:  # the first row of that label after the protocol's title: its table's
            line = next(line for line in lines[title:] if line.startswith(f"│ {row.label} "))
            cells = [cell.strip() for cell in line.split("│")[2:6]]
            part = row.under(protocol)
            assert cells == [f"{100 * part.metrics[m]:.2f} [{100 * part.intervals[m][0]:.2f}, {100 * part.intervals[m][1]:.2f}]"
                             for m in HEADLINE]
        (difference,) = result.differences[protocol]
        assert difference[0] == "s (4)"
        assert all(difference[1][m].value == pytest.approx(100 * (result.rows[0].under(protocol).metrics[m]
                                                                  - result.rows[1].under(protocol).metrics[m])) for m in HEADLINE)
    assert "[low, high]: 95% percentile interval over the test clips, 1000 resamples, seed 0" in text
    # the paper's other two tables: VidSTG msIoU (and the query's temporal grounding), ActivityNet-Entities F1
    assert [title for title, _, _ in result.grounding] == ["VidSTG test", "ActivityNet-Entities val"]
    assert "VidSTG test (x100), official protocol" in text and "ActivityNet-Entities val (x100), official protocol" in text
    (_, vidstg_columns, vidstg_rows), (_, anet_columns, anet_rows) = result.grounding
    assert vidstg_columns[0] == "msIoU" and anet_columns[0] == "F1_all"
    assert [row.label for row in vidstg_rows] == [row.label for row in anet_rows] == [row.label for row in result.rows]
    assert f"data-scaling plot: {result.plot}" in text and "grove-tiny/evaluation" in result.experiments
    assert f"MLflow experiments: {', '.join(result.experiments)} in sqlite:///{root}" in text
    assert "experiment 'grove-tiny/evaluation', Chart view, a scatter chart of METEOR/CIDEr/AP50/Recall (y) against pretrain_clips" in text
    dagster_dev, mlflow_ui = result.ui_commands()
    assert dagster_dev in text and mlflow_ui in text and mlflow_ui.endswith(f"ui --backend-store-uri sqlite:///{root / 'mlflow.db'} --port 5000")
    # The Dagster command's environment loads this very lineage: the tiny profile, its params file and runs root.
    env = dict(token.split("=", 1) for token in dagster_dev.split(" && ")[1].split() if "=" in token)
    assert env["DAGSTER_HOME"] == str(root / LAYOUT["dagster_home"]) and env["GROVE_PROFILE"] == "tiny"
    code = ("import orchestration.definitions as d; r = d.defs.resources; "
            "print(r['paths'].root, r['mlflow'].experiment, len(d.defs.resolve_asset_graph().get_all_asset_keys()))")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    assets = build_definitions(result.profile, root).resolve_asset_graph().get_all_asset_keys()
    assert out.stdout.split() == [str(root), "grove-tiny", str(len(assets))]


def test_compare_prints_metrics_by_partition(lineage, tiny_profile, monkeypatch):
    _, root, _, _ = lineage
    monkeypatch.setenv("GROVE_RUNS", str(root))
    monkeypatch.setenv("COLUMNS", "200")  # cells hold intervals: one line each on a wide terminal
    output = CliRunner().invoke(app, ["compare", "--profile", "tiny", "--params", str(tiny_profile.params_file)])
    assert output.exit_code == 0, output.output
    lines = [line for line in output.output.splitlines() if line.strip()]
    assert all(name in output.output for name in HEADLINE) and "(x100)" in output.output
    result = lineage[0]
    for row, partition in zip(result.rows, ("s", "ft_only")):  # the same values as grove demo's table (x100)
        line = [line for line in lines if f" {partition} " in line][0]
        cells = [cell.strip() for cell in line.split("│")[2:6]]
        assert cells == [str(row.cells(100.0)[name]) for name in HEADLINE], (partition, cells)
    # the paired differences from FT-only: the same as the demo's
    assert "minus ft_only, paired on the same resamples" in output.output and "[low, high]: 95% interval" in output.output
    assert "Downloading artifacts" not in output.output
    (line,) = [line for line in lines if line.startswith("│ s ") and "[" in line][1:]
    assert [cell.strip() for cell in line.split("│")[2:6]] == [str(result.differences["official"][0][1][m]) for m in HEADLINE]
    corrected = CliRunner().invoke(app, ["compare", "--profile", "tiny", "--params", str(tiny_profile.params_file),
                                         "--protocol", "corrected", "--baseline", "none"])
    assert corrected.exit_code == 0 and "corrected protocol" in corrected.output and "minus" not in corrected.output
    line = [line for line in corrected.output.splitlines() if line.startswith("│ s ")][0]
    assert [cell.strip() for cell in line.split("│")[2:6]] == [str(result.rows[0].under("corrected").cells(100.0)[m]) for m in HEADLINE]


def test_dvc_side_commands_rebuild_byte_identical_subsets_and_the_same_curve(lineage, tiny_profile, monkeypatch):
    """`grove pipeline ...` (what dvc.yaml runs) writes what the assets wrote: same seed, same subset."""
    _, root, paths, _ = lineage
    subset_files = {name: (paths.path("subsets", "s") / name).read_bytes() for name in ("clips.parquet", "boxes_processed.parquet")}
    table = json.loads(paths.path("reports", "data_scaling.json").read_text())
    monkeypatch.setenv("GROVE_RUNS", str(root))
    params = ["--profile", "tiny", "--params", str(tiny_profile.params_file)]
    for command in (["pipeline", "subset", "--size", "s"], ["pipeline", "curve"]):
        output = CliRunner().invoke(app, [*command, *params])
        assert output.exit_code == 0, output.output
    assert {name: (paths.path("subsets", "s") / name).read_bytes() for name in subset_files} == subset_files
    assert json.loads(paths.path("reports", "data_scaling.json").read_text()) == table
    # dvc.yaml's `evaluate` stage: `grove eval iground --json > metrics/iground/<variant>.json`, byte for byte the asset's file.
    profile = tiny_profile
    bootstrap = profile.get("evaluation.bootstrap")
    evaluate = ["eval", "iground", "--gt", str(paths.path("iground")), "--pred", str(paths.path("predictions", "s.json")),
                "--split", str(profile.get("inference.split")), "--threshold", str(profile.get("inference.objectness_threshold")),
                "--bootstrap-resamples", str(bootstrap["resamples"]), "--bootstrap-seed", str(bootstrap["seed"]),
                "--confidence", str(bootstrap["confidence"]), "--json"]
    output = CliRunner().invoke(app, evaluate)
    assert output.exit_code == 0, output.output
    assert output.stdout == paths.path("metrics", "iground", "s.json").read_text()
    refused = CliRunner().invoke(app, ["pipeline", "subset", "--size", "huge", *params])
    assert refused.exit_code == 1 and "has no size 'huge'" in refused.output
