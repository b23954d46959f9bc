"""The code location: definitions load for both profiles, the asset graph is snapshotted, and dvc.yaml
describes the same lineage (stage names, output paths) as the assets."""

import json
import subprocess
import sys

import dagster as dg
import pytest
import yaml

from orchestration.definitions import build_definitions, defs, dvc_enabled
from orchestration.jobs import STAGES
from orchestration.lineage import lineage_groups
from orchestration.defs.benchmarks.assets import benchmark_source
from orchestration.defs.common import FT_ONLY, dvc_stage, stage_code
from orchestration.defs.evaluation.grounding import configured, dvc_grounding_stage, metrics_file, predictions_file
from orchestration.profile import REPO_ROOT, load_profile
from orchestration.resources import LAYOUT, PipelinePaths, TorchrunLauncher

GROUPS = {"raw_videos", "annotation", "benchmarks", "scaling", "models", "evaluation", "reports"}
GPU_ASSETS = {"pretrained_model", "finetuned_model", "iground_predictions", "vidstg_predictions", "anet_entities_predictions"}


def graph_summary(definitions: dg.Definitions) -> list[dict]:
    """What the snapshot pins: every asset's group, partitioning, parents, kinds, pool and checks."""
    graph = definitions.resolve_asset_graph()
    checks_by_asset: dict[str, list[str]] = {}
    for check in graph.asset_check_keys:
        checks_by_asset.setdefault(check.asset_key.to_user_string(), []).append(check.name)
    rows = []
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        partitions = node.partitions_def
        if isinstance(partitions, dg.DynamicPartitionsDefinition):
            partitioning = f"dynamic:{partitions.name}"
        elif partitions is not None:
            partitioning = "static:" + ",".join(partitions.get_partition_keys())
        else:
            partitioning = None
        rows.append(
            {
                "key": key.to_user_string(),
                "group": node.group_name,
                "materializable": node.is_materializable,
                "partitions": partitioning,
                "parents": sorted(p.to_user_string() for p in node.parent_keys),
                "kinds": sorted(node.kinds),
                "pools": sorted(node.pools or []),
                "code_version": bool(node.code_version),
                "automation": node.automation_condition.get_label() if node.automation_condition else None,
                "checks": sorted(checks_by_asset.get(key.to_user_string(), [])),
            }
        )
    return rows


@pytest.mark.parametrize("profile_name", ["demo", "paper"])
def test_asset_graph_snapshot(profile_name, snapshot, tmp_path):
    definitions = build_definitions(load_profile(profile_name), tmp_path)
    assert graph_summary(definitions) == snapshot


@pytest.mark.parametrize("profile_name", ["demo", "paper"])
def test_every_asset_is_described_owned_grouped_and_versioned(profile_name, tmp_path):
    definitions = build_definitions(load_profile(profile_name), tmp_path)
    graph = definitions.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.group_name in GROUPS, key
        assert node.description and len(node.description) > 40, key
        assert node.owners, key
        if node.is_materializable:
            assert node.code_version, key
            assert (set(node.pools or []) == {"gpu"}) == (key.to_user_string() in GPU_ASSETS), (key, node.pools)


@pytest.mark.parametrize("profile_name", ["demo", "paper"])
def test_the_lineage_is_named_jobs_that_hold_every_asset_once(profile_name, tmp_path):
    definitions = build_definitions(load_profile(profile_name), tmp_path)
    groups = lineage_groups(definitions)
    assert [g.job for g in groups] == [stage.name for stage in STAGES]
    keys = [key for group in groups for key in group.keys]
    materializable = [k for k in definitions.resolve_asset_graph().get_all_asset_keys()
                      if definitions.resolve_assets_def(k).is_materializable]
    assert len(keys) == len(set(keys)) == len(materializable)
    for group in groups:  # each resolves: one partitioning per job
        assert definitions.resolve_job_def(group.job).partitions_def == group.partitions_def


def test_an_edit_of_a_stage_code_dependency_changes_the_code_version(tmp_path):
    stage = {"foreach": ["small"], "do": {"cmd": "grove train", "deps": ["runs/demo/subsets/${item}", "grove/model", "grove/train.py"]}}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"pretrain": stage, "curve": {"cmd": "c", "deps": ["runs/x"]}}}))
    (tmp_path / "grove" / "model").mkdir(parents=True)
    (tmp_path / "grove" / "model" / "heads.py").write_text("HIDDEN = 256\n")
    (tmp_path / "grove" / "train.py").write_text("STEPS = 10\n")
    before = stage_code("pretrain", tmp_path)
    (tmp_path / "grove" / "train.py").write_text("STEPS = 11\n")
    after = stage_code("pretrain", tmp_path)
    (tmp_path / "grove" / "model" / "heads.py").write_text("HIDDEN = 512\n")
    assert len({before, after, stage_code("pretrain", tmp_path)}) == 3
    assert stage_code("curve", tmp_path) == ""  # no code dependency: nothing to add
    with pytest.raises(KeyError, match="no stage 'finetune'"):
        stage_code("finetune", tmp_path)


def test_training_assets_carry_the_code_that_dvc_yaml_lists_for_their_stages(tmp_path):
    graph = build_definitions(load_profile("demo"), tmp_path).resolve_asset_graph()
    for key, stage in [("pretrained_model", "pretrain"), ("finetuned_model", "finetune"), ("iground_metrics", "evaluate")]:
        assert graph.get(dg.AssetKey(key)).code_version.endswith(f"+code:{stage_code(stage)}")


def test_orchestration_uses_no_private_dagster_module():
    sources = sorted((REPO_ROOT / "orchestration").rglob("*.py"))
    assert sources
    offending = [str(path.relative_to(REPO_ROOT)) for path in sources if "dagster._" in path.read_text()]
    assert offending == []


def test_scaling_partitions_come_from_the_profile(tmp_path):
    for name, sizes in (("demo", ["small", "medium", "full"]), ("paper", ["1k", "10k", "100k", "1m"])):
        graph = build_definitions(load_profile(name), tmp_path).resolve_asset_graph()
        assert graph.get(dg.AssetKey("pretraining_subset")).partitions_def.get_partition_keys() == sizes
        assert graph.get(dg.AssetKey("finetuned_model")).partitions_def.get_partition_keys() == [*sizes, FT_ONLY]


def test_resources_executor_and_dvc_switch(tmp_path):
    profile = load_profile("demo")
    definitions = build_definitions(profile, tmp_path)
    assert isinstance(definitions.resources["launcher"], TorchrunLauncher)
    assert definitions.resources["paths"].root == str(tmp_path)
    assert definitions.resources["mlflow"].tracking_uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}?timeout=60"
    assert not definitions.resources["dvc"].enabled  # dvc.yaml describes runs/demo, not this folder
    assert dvc_enabled(profile, REPO_ROOT / "runs" / "demo")
    executor = definitions.executor
    config = executor.apply_config_mapping({}).value["config"]
    assert executor.name == "multiprocess" and config["max_concurrent"] == profile.get("orchestration.max_concurrent")


def test_the_module_level_definitions_load_for_dagster_dev():
    assert defs.resolve_asset_graph().get_all_asset_keys()
    workspace = yaml.safe_load((REPO_ROOT / "workspace.yaml").read_text())
    assert workspace["load_from"][0]["python_module"]["module_name"] == "orchestration.definitions"
    # `dagster dev` imports it in a fresh process: no GPU-only module, no network, nothing heavy.
    code = "import sys, orchestration.definitions as d; print(sorted(m for m in ('torch', 'mlflow', 'vllm') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_dvc_yaml_mirrors_the_assets_stages_and_outputs():
    profile = load_profile("demo")
    listed = subprocess.run(
        [str(REPO_ROOT / ".venv-dvc" / "bin" / "dvc"), "stage", "list"], capture_output=True, text=True, cwd=REPO_ROOT, check=True
    ).stdout
    stages = {line.split()[0]: line.split(None, 2)[2] for line in listed.splitlines() if line.strip()}
    expected = {"synthesize", "ingest", "annotate", "quality", "iground", "curve"}
    for size in profile.sizes:
        expected |= {dvc_stage(kind, size) for kind in ("subset", "pretrain")}
    for variant in [*profile.sizes, FT_ONLY]:
        expected |= {dvc_stage(kind, variant) for kind in ("finetune", "predict", "evaluate")}
    for name in configured(profile):
        expected |= {f"standin@{name}", f"benchmark@{name}"}
        expected |= {dvc_grounding_stage(kind, name, variant) for kind in ("predict", "evaluate") for variant in [*profile.sizes, FT_ONLY]}
    assert set(stages) == expected

    def out_of(stage: str) -> str:
        return stages[stage].replace("Outputs ", "").replace("Reports ", "").split(",")[0]

    demo = "runs/demo/"
    assert out_of("synthesize") == demo + LAYOUT["synthetic"]
    assert out_of("ingest") == demo + LAYOUT["catalog"]
    assert out_of("annotate") == demo + LAYOUT["annotation"]
    assert out_of("iground") == demo + LAYOUT["iground"]
    assert out_of("subset@small") == demo + LAYOUT["subsets"] + "/small"
    assert out_of("pretrain@small") == demo + LAYOUT["pretrained"] + "/small"
    assert out_of("finetune_ft_only") == demo + LAYOUT["finetuned"] + "/ft_only"
    assert out_of("predict@full") == demo + LAYOUT["predictions"] + "/full.json"
    assert out_of("evaluate@medium") == demo + LAYOUT["metrics"] + "/iground/medium.json"
    paths = PipelinePaths(root="runs/demo")
    assert out_of("standin@vidstg") == benchmark_source(profile, paths, "vidstg").folder.as_posix()
    assert out_of("benchmark@anet_entities") == paths.path("benchmarks", "anet_entities").as_posix()
    assert out_of("predict_grounding@vidstg-small") == predictions_file(paths, "vidstg", "small").as_posix()
    assert out_of("evaluate_grounding_ft_only@anet_entities") == metrics_file(paths, "anet_entities", FT_ONLY).as_posix()


FLAG_OF = {"num_workers": "--workers"}  # TrainConfig field -> `grove train` flag, where the names differ


def test_dvc_training_stages_pass_every_training_parameter_of_the_profile():
    """The Dagster assets build TrainConfig from model.<phase>; DVC's `grove train` must get the same values."""
    profile = load_profile("demo")
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    commands = {"pretrain": stages["pretrain"]["do"]["cmd"], "finetune": stages["finetune"]["do"]["cmd"],
                "finetune_ft_only": stages["finetune_ft_only"]["cmd"]}
    for stage, command in commands.items():
        phase = stage.split("_")[0]
        for field in profile.get(f"model.{phase}"):
            flag = FLAG_OF.get(field, "--" + field.replace("_", "-"))
            assert f"{flag} ${{demo.model.{phase}.{field}}}" in command, (stage, field)


def test_dvc_predict_stages_pass_every_inference_parameter_of_the_profile():
    """The predictions asset sends inference.* to the Pipes process; DVC's `grove infer` must get the same values."""
    profile = load_profile("demo")
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    flag_of = {"objectness_threshold": "--threshold"}
    for command in (stages["predict"]["do"]["cmd"], stages["predict_ft_only"]["cmd"]):
        for field in profile.get("inference"):
            assert f"{flag_of.get(field, '--' + field)} ${{demo.inference.{field}}}" in command, field


def test_dvc_evaluate_stages_pass_the_bootstrap_settings_of_the_profile():
    """The metrics asset draws intervals with evaluation.bootstrap; DVC's `grove eval iground` must draw the same."""
    profile = load_profile("demo")
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    flag_of = {"resamples": "--bootstrap-resamples", "seed": "--bootstrap-seed", "confidence": "--confidence"}
    for stage in (stages["evaluate"]["do"], stages["evaluate_ft_only"]):
        assert "demo.evaluation.bootstrap" in stage["params"]
        for field in profile.get("evaluation.bootstrap"):
            assert f"{flag_of[field]} ${{demo.evaluation.bootstrap.{field}}}" in stage["cmd"], field


def test_dvc_plots_show_draws_the_scaling_curve_the_curve_stage_writes(tmp_path):
    # a repository with the project's dvc.yaml and a scaling file in the curve stage's layout
    plot = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["plots"][0]
    (path, spec), = plot.items()
    curve_outs = [next(iter(o)) if isinstance(o, dict) else o for o in yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]["curve"]["outs"]]
    assert path in curve_outs and spec["x"] == "clips"
    dvc = str(REPO_ROOT / ".venv-dvc" / "bin" / "dvc")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([dvc, "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"plots": [plot]}))
    rows = [{"row": f"{name} ({clips})", "clips": clips, "protocol": "official", "CIDEr": c, "METEOR": m, "AP50": a, "Recall": 0.0}
            for name, clips, c, m, a in [("small", 60, 0.2, 0.13, 0.018), ("full", 240, 0.27, 0.128, 0.047)]]
    (tmp_path / path).parent.mkdir(parents=True)
    (tmp_path / path).write_text(json.dumps(rows))
    shown = subprocess.run([dvc, "plots", "show", "--json"], capture_output=True, text=True, cwd=tmp_path, check=True).stdout
    assert '"clips": 240' in shown.replace('"clips":240', '"clips": 240') and "CIDEr" in shown
