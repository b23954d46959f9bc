"""Nested, seeded subsets of the auto-annotated pool, one partition per pre-training size."""

import json

import dagster as dg

from orchestration.defs.annotation.assets import POOL
from orchestration.defs.raw_videos.assets import pool_videos_root
from orchestration.defs.common import FT_ONLY, OWNERS, code_version, numeric_metadata, on_changed_inputs, timed
from orchestration.defs.scaling.partitions import size_partitions
from orchestration.defs.scaling.subsets import SubsetSummary, write_subset
from orchestration.profile import Profile
from orchestration.resources import DvcResource, PipelinePaths

GROUP = "scaling"
SUBSET = dg.AssetKey("pretraining_subset")


def write_profile_subset(profile: Profile, paths: PipelinePaths, size: str) -> SubsetSummary:
    """The subset of `size` as the profile defines it (seed, clips, pool split), from the annotated pool."""
    return write_subset(
        paths.path("annotation"),
        paths.path("subsets", size),
        profile.size_clips(size),
        profile.seed,
        split=profile.get("scaling.pool_split", None),
        # The annotated pool's video paths are those of the catalog: relative to its videos root.
        video_root=pool_videos_root(profile, paths),
    )


def subset_clips(paths: PipelinePaths, size: str) -> int:
    """How many clips the subset of `size` holds (its manifest), the x of the scaling curve."""
    manifest = json.loads((paths.path("subsets", size) / "dataset.json").read_text())
    return int(sum(manifest["splits"].values()))


def pretrain_clips(paths: PipelinePaths, variant: str) -> int:
    """The pre-training clips behind a model variant (a size, or FT-only: 0), as its MLflow runs log them."""
    return 0 if variant == FT_ONLY else subset_clips(paths, variant)


def build(profile: Profile) -> list:
    @dg.asset(
        key=SUBSET,
        deps=[POOL],
        partitions_def=size_partitions(profile),
        group_name=GROUP,
        kinds={"python", "parquet"},
        owners=OWNERS[GROUP],
        code_version=code_version(profile, "1", "seed", "scaling", stage="subset"),
        automation_condition=on_changed_inputs(),
        description="The first N clips of the pool in a seeded hash order: nested across sizes "
        "(small ⊂ medium ⊂ full), identical on any machine for the same seed and pool.",
    )
    def pretraining_subset(context: dg.AssetExecutionContext, paths: PipelinePaths, dvc: DvcResource) -> dg.MaterializeResult:
        size = context.partition_key
        out = paths.path("subsets", size)
        metadata: dict = {}
        with timed(metadata):
            summary = write_profile_subset(profile, paths, size)
        metadata |= numeric_metadata({"clips": summary.clips, "boxes": summary.boxes, "pool_clips": summary.pool_clips, "seed": summary.seed})
        metadata["path"] = dg.MetadataValue.path(str(out))
        return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(dvc.record(f"subset@{size}", [out])))

    return [pretraining_subset]
