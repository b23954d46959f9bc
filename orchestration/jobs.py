"""The lineage's named asset jobs: one per stage, in lineage order, each over assets of one partitioning.

A Dagster run covers one partition of one partitioning, so the whole lineage is these jobs run in
order, partition by partition: `grove demo` does that (orchestration/lineage.py), and the UI's
"Materialize all" does it as a backfill. Each job is what `dagster job launch -j <name>` and the
UI's job page run, and the demo's runs are listed under these names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import dagster as dg

from orchestration.defs.annotation.partitions import SHARDS
from orchestration.defs.models.partitions import variant_partitions
from orchestration.defs.scaling.partitions import size_partitions
from orchestration.profile import Profile


@dataclass(frozen=True)
class Stage:
    name: str
    description: str
    groups: frozenset[str]          # Dagster asset groups it takes assets from
    partitioning: str               # "" (unpartitioned), "shards", "sizes" or "variants"


STAGES = (
    Stage("ingest_job", "Raw video catalogs, benchmark splits in the project's layout, synthetic stand-ins",
          frozenset({"raw_videos", "benchmarks"}), ""),
    Stage("annotation_job", "The three automatic annotation stages, one shard of the pool per run",
          frozenset({"annotation"}), "shards"),
    Stage("annotated_pool_job", "The annotated pool merged from its shards, and its quality against ground truth",
          frozenset({"annotation"}), ""),
    Stage("pretraining_job", "A nested subset of the pool and the model pre-trained on it, one size per run",
          frozenset({"scaling", "models"}), "sizes"),
    Stage("finetuning_job", "A pre-trained model (or none: FT-only) fine-tuned on iGround, one variant per run",
          frozenset({"models"}), "variants"),
    Stage("evaluation_job", "Predictions and metrics of one fine-tuned model on every benchmark",
          frozenset({"evaluation"}), "variants"),
    Stage("reports_job", "The champion model, the data-scaling curve and the results page",
          frozenset({"models", "evaluation", "reports"}), ""),
)


class LineageJobError(ValueError):
    """An asset belongs to no lineage job, or to several."""


def _partitioning(asset: dg.AssetsDefinition, profile: Profile) -> str:
    partitions = asset.partitions_def
    if partitions is None:
        return ""
    for name, known in (("shards", SHARDS), ("sizes", size_partitions(profile)), ("variants", variant_partitions(profile))):
        if partitions == known:
            return name
    raise LineageJobError(f"{asset.key.to_user_string()}: partitioned by {partitions}, which no lineage stage runs")


def stage_keys(assets: Sequence[dg.AssetsDefinition | dg.AssetSpec], profile: Profile) -> dict[str, list[dg.AssetKey]]:
    """Each stage's asset keys; every asset of `assets` in exactly one stage (else LineageJobError)."""
    keys: dict[str, list[dg.AssetKey]] = {stage.name: [] for stage in STAGES}
    for asset in assets:
        if not isinstance(asset, dg.AssetsDefinition) or not asset.is_materializable:
            continue  # external assets (AssetSpec): nothing to run
        partitioning = _partitioning(asset, profile)
        for key in asset.keys:
            group = asset.group_names_by_key[key]
            stages = [s.name for s in STAGES if group in s.groups and s.partitioning == partitioning]
            if len(stages) != 1:
                raise LineageJobError(f"{key.to_user_string()} (group '{group}', partitions '{partitioning or 'none'}') "
                                      f"is in {len(stages)} lineage stages: {stages}")
            keys[stages[0]].append(key)
    return keys


def lineage_jobs(assets: Sequence[dg.AssetsDefinition | dg.AssetSpec], profile: Profile) -> list[Any]:
    """The named jobs (`define_asset_job`'s, resolved by Definitions), in lineage order; stages without
    assets in this profile are left out."""
    by_stage = stage_keys(assets, profile)
    return [
        dg.define_asset_job(stage.name, selection=dg.AssetSelection.assets(*by_stage[stage.name]),
                            description=stage.description, tags={"grove/stage": stage.name.removesuffix("_job")})
        for stage in STAGES
        if by_stage[stage.name]
    ]
