"""What every domain's assets share: code versions, data versions from DVC hashes, metadata helpers."""

from __future__ import annotations

import functools
import hashlib
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import dagster as dg
import pyarrow as pa
import yaml

from orchestration.profile import REPO_ROOT, Profile
from orchestration.resources import RunDataset

# The team that owns each group's data on disk (Dagster `owners`).
OWNERS = {
    "raw_videos": ["team:grove-data"],
    "annotation": ["team:grove-annotation"],
    "benchmarks": ["team:grove-data"],
    "scaling": ["team:grove-training"],
    "models": ["team:grove-training"],
    "evaluation": ["team:grove-evaluation"],
    "reports": ["team:grove-evaluation"],
}

# Partitions of the fine-tuned models and their evaluation: one per pre-training size, plus the
# model fine-tuned without pre-training (the "FT-only" row of the paper's tables).
FT_ONLY = "ft_only"


def on_changed_inputs() -> dg.AutomationCondition:
    """Automation for every asset of the lineage: like `eager()`, but a parent counts only when its
    data version changed (re-running it with the same output, e.g. the same DVC hash, retrains
    nothing), and never before the parents' blocking checks have passed."""
    inputs_changed = dg.AutomationCondition.any_deps_match(dg.AutomationCondition.data_version_changed())
    return (
        dg.AutomationCondition.in_latest_time_window()
        & (dg.AutomationCondition.newly_missing() | inputs_changed).since_last_handled()
        & ~dg.AutomationCondition.any_deps_missing()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
        & dg.AutomationCondition.all_deps_blocking_checks_passed()
    ).with_label("on_changed_inputs")


def dvc_stage(kind: str, partition: str) -> str:
    """The dvc.yaml stage that makes one partition: `kind@size` (a foreach stage), or `kind_ft_only`."""
    return f"{kind}_{FT_ONLY}" if partition == FT_ONLY else f"{kind}@{partition}"


def code_version(profile: Profile, body_version: str, *param_keys: str, stage: str | None = None) -> str:
    """`body_version` (bumped by hand when an asset body changes) + a hash of the params it reads +
    a digest of the code that dvc.yaml's `stage` depends on.

    A changed parameter, or an edit of that code, then marks the asset, and everything downstream
    of it, stale in Dagster, as the same edit does in DVC.
    """
    version = f"{body_version}+{profile.fingerprint(*param_keys)}" if param_keys else body_version
    code = stage_code(stage) if stage else ""
    return f"{version}+code:{code}" if code else version


def stage_code(stage: str, repo: Path = REPO_ROOT) -> str:
    """A digest of the code paths a dvc.yaml stage depends on (its deps outside runs/; "" for none): one
    list, dvc.yaml's, says which code each step depends on, for DVC and for Dagster alike."""
    dvc_file = repo / "dvc.yaml"
    if not dvc_file.exists():
        raise FileNotFoundError(f"{dvc_file}: missing; it lists the code each asset depends on")
    paths = _code_deps(dvc_file, dvc_file.stat().st_mtime_ns).get(stage)
    if paths is None:
        raise KeyError(f"{dvc_file}: no stage '{stage}'")
    if not paths:
        return ""
    digest = hashlib.md5()
    for relative in paths:
        for file in _files(repo / relative):
            digest.update(file.relative_to(repo).as_posix().encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()[:12]


@functools.lru_cache(maxsize=4)
def _code_deps(dvc_file: Path, mtime_ns: int) -> dict[str, list[str]]:
    """Stage name → its code dependencies (templated and runs/ paths left out); read once per version of the file."""
    stages = yaml.load(dvc_file.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)).get("stages", {})
    code = {}
    for name, stage in stages.items():
        deps = stage["do"].get("deps", []) if "do" in stage else stage.get("deps", [])
        code[name] = [str(d) for d in deps if "${" not in str(d) and not str(d).startswith("runs/")]
    return code


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: a code dependency in dvc.yaml that does not exist")
    return sorted(f for f in path.rglob("*") if f.is_file() and "__pycache__" not in f.parts)


def data_version(hash_value: str) -> dg.DataVersion:
    return dg.DataVersion(hash_value)


def storage_metadata(path: Path) -> dict[str, Any]:
    """Definition metadata naming where the asset's data lives."""
    return {"storage": dg.MetadataValue.path(str(path))}


def table_preview(table: pa.Table, columns: Sequence[str], rows: int = 5) -> dg.MetadataValue:
    """A few rows as a Markdown table, for the Dagster UI."""
    head = table.select([c for c in columns if c in table.column_names]).slice(0, rows).to_pylist()
    if not head:
        return dg.MetadataValue.md("*(empty)*")
    names = list(head[0])
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    for row in head:
        lines.append("| " + " | ".join(_cell(row[name]) for name in names) + " |")
    return dg.MetadataValue.md("\n".join(lines))


def _cell(value: Any) -> str:
    text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
    text = text.replace("|", "\\|").replace("\n", " ")
    # Long cells lose their middle: a caption keeps its start, a path its file name.
    return text if len(text) <= 80 else text[:38] + "…" + text[-41:]


@contextmanager
def timed(into: dict[str, Any], name: str = "seconds") -> Iterator[None]:
    """Adds the block's wall time (s) to the metadata dict `into`."""
    start = time.perf_counter()
    try:
        yield
    finally:
        into[name] = dg.MetadataValue.float(round(time.perf_counter() - start, 3))


def numeric_metadata(values: Mapping[str, Any]) -> dict[str, Any]:
    """Numbers as Dagster float/int metadata (plotted over time in the UI); other values as text."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, bool) or value is None:
            out[key] = dg.MetadataValue.text(str(value))
        elif isinstance(value, int):
            out[key] = dg.MetadataValue.int(value)
        elif isinstance(value, float):
            out[key] = dg.MetadataValue.float(value)
        else:
            out[key] = dg.MetadataValue.text(str(value))
    return out


def log_progress(context: dg.AssetExecutionContext, what: str, every: int) -> Callable[[int, int], None]:
    """A library progress callback that logs every `every` items (and the last) to the Dagster run."""

    def progress(done: int, total: int) -> None:
        if done == total or done % every == 0:
            context.log.info(f"{what}: {done}/{total}")

    return progress


def upstream_data_version(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str | None = None) -> str:
    """The data version (a DVC hash here) of an upstream asset's latest materialisation, '' if none."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition else None), limit=1
    ).records
    if not records:
        return ""
    return records[0].event_log_entry.tags.get("dagster/data_version", "")


def input_versions(context: dg.AssetExecutionContext, inputs: Mapping[str, tuple[dg.AssetKey, str | None]]) -> dict[str, str]:
    """MLflow tags `dvc.input.<name>`: the data versions of the inputs a run was made from."""
    return {f"dvc.input.{name}": upstream_data_version(context.instance, key, partition) for name, (key, partition) in inputs.items()}


def input_dataset(context: dg.AssetExecutionContext, key: dg.AssetKey, partition: str | None, path: Path, usage: str,
                  split: str | None = None) -> RunDataset:
    """An input of the run as an MLflow dataset: named `<asset>[<partition>]:<split>`, its folder or file as
    the source, its data version (the DVC hash, as in the `dvc.input.*` tags) as the digest, `usage` its context
    (training, validation, evaluation)."""
    name = key.to_user_string() + (f"[{partition}]" if partition else "") + (f":{split}" if split else "")
    return RunDataset(name, str(path), upstream_data_version(context.instance, key, partition), usage)
