"""Bit for bit: the tiny profile's lineage run in two runs roots at different places gives byte-identical
outputs wherever dvc.yaml versions one (so `dvc.lock` made in one checkout matches a run in another),
and no such output records where it was made (no absolute path). The session's `tiny_demo` is the first
run; this module adds one more, in a folder of another depth and name."""

import itertools
import re
from pathlib import Path

import dagster as dg
import pytest
import yaml

from orchestration.demo import run_demo
from orchestration.profile import REPO_ROOT
from orchestration.resources import LAYOUT, dvc_ignore_patterns, dvc_md5

DEMO = "runs/demo/"


def dvc_outputs(profile) -> list[str]:
    """Every output and metric path of dvc.yaml (`runs/demo/...`), foreach stages expanded over the
    profile's values (`${demo.scaling.sizes}` -> the tiny profile's sizes), relative to the runs root."""
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    outputs = []
    def values(spec):  # a literal list, or `${demo.<key>}` (the profile's list)
        if isinstance(spec, list):
            return spec
        (key,) = re.fullmatch(r"\$\{demo\.(.+)\}", spec).groups()
        return list(profile.get(key))

    for stage in stages.values():
        items: list[dict[str, str]] = [{}]
        if "foreach" in stage:
            items, stage = [{"item": str(value)} for value in values(stage["foreach"])], stage["do"]
        elif "matrix" in stage:
            axes = {name: values(spec) for name, spec in stage["matrix"].items()}
            items = [{f"item.{name}": str(value) for name, value in zip(axes, combination)}
                     for combination in itertools.product(*axes.values())]
        for entry in [*stage.get("outs", []), *stage.get("metrics", [])]:
            path = entry if isinstance(entry, str) else next(iter(entry))
            for item in items:
                resolved = path
                for name, value in item.items():
                    resolved = resolved.replace("${" + name + "}", value)
                assert resolved.startswith(DEMO) and "${" not in resolved, resolved
                outputs.append(resolved[len(DEMO):])
    return sorted(set(outputs))


def tracked_files(root: Path, outputs: list[str]) -> dict[str, bytes]:
    """Each file DVC hashes under the runs root (folders walked, .dvcignore'd names left out), by relative path."""
    patterns = dvc_ignore_patterns()
    files = {}
    for output in outputs:
        path = root / output
        assert path.exists(), f"{output}: dvc.yaml versions it, the lineage did not make it"
        found = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        for file in found:
            relative = file.relative_to(root).as_posix()
            if not any(Path(part).match(pattern) for part in relative.split("/") for pattern in patterns):
                files[relative] = file.read_bytes()
    return files


def data_versions(root: Path) -> dict[tuple[str, str | None], str]:
    """The newest data version of every materialised asset partition in the runs root's Dagster home."""
    instance = dg.DagsterInstance.from_config(str(root / LAYOUT["dagster_home"]))
    try:
        versions = {}
        for key in instance.get_asset_keys():
            records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=1000).records
            for record in reversed(records):  # oldest first: the newest of each partition wins
                materialization = record.asset_materialization
                versions[(key.to_user_string(), materialization.partition)] = materialization.tags.get("dagster/data_version")
        return versions
    finally:
        instance.dispose()


@pytest.fixture(scope="module")
def two_roots(tiny_demo, tiny_profile, tmp_path_factory):
    _, first = tiny_demo
    second = tmp_path_factory.mktemp("elsewhere") / "a" / "much" / "deeper" / "checkout" / "runs"
    run_demo(tiny_profile, root=second)
    return first, second


def test_dvc_versioned_outputs_are_byte_identical_in_another_folder(two_roots, tiny_profile):
    first, second = two_roots
    outputs = dvc_outputs(tiny_profile)
    # every kind of output: data, annotation, subsets, checkpoints, predictions, metric files, reports
    for node in ("synthetic", "catalog", "annotation", "iground", "subsets", "pretrained", "finetuned", "predictions", "metrics"):
        assert any(output.startswith(LAYOUT[node]) for output in outputs), node
    ours, theirs = tracked_files(first, outputs), tracked_files(second, outputs)
    assert sorted(ours) == sorted(theirs)
    assert [name for name in ours if ours[name] != theirs[name]] == []
    for output in outputs:  # the hashes dvc.lock would record (and Dagster's data versions) are equal
        assert dvc_md5(first / output) == dvc_md5(second / output), output


def _holding(roots: tuple[Path, Path], outputs: list[str], where: str) -> list[str]:
    return sorted({name for root in roots for name, data in tracked_files(root, outputs).items() if where.format(root=root).encode() in data})


def test_no_dvc_versioned_output_records_its_runs_root(two_roots, tiny_profile):
    outputs = dvc_outputs(tiny_profile)
    assert _holding(two_roots, outputs, "{root}") == []


def test_no_dvc_versioned_output_records_the_checkout_folder(two_roots, tiny_profile):
    outputs = dvc_outputs(tiny_profile)
    assert _holding(two_roots, outputs, str(REPO_ROOT)) == []


def test_dagster_data_versions_agree_between_the_two_runs(two_roots):
    first, second = two_roots
    ours, theirs = data_versions(first), data_versions(second)
    assert ours.keys() == theirs.keys()
    assert {key: (ours[key], theirs[key]) for key in ours if ours[key] != theirs[key]} == {}
