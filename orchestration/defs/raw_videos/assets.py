"""Raw videos and their catalog: where the lineage starts.

Demo profile: the synthetic dataset renders the pre-training pool's videos (and the iGround-like
splits). Paper profile: the pool is a folder of HowTo100M clips named by $GROVE_POOL_VIDEOS, an
external asset that Dagster observes but does not make. Either way the catalog probes, hashes and
vets every video; bad files go to its rejects table.
"""

import os
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq

from orchestration.defs.common import OWNERS, code_version, log_progress, numeric_metadata, on_changed_inputs, table_preview, timed
from orchestration.profile import Profile
from orchestration.resources import DvcResource, PipelinePaths

GROUP = "raw_videos"
SYNTHETIC = dg.AssetKey("synthetic_dataset")
POOL_VIDEOS = dg.AssetKey("pool_videos")
CATALOG = dg.AssetKey("pool_catalog")
POOL_VIDEOS_ENV = "GROVE_POOL_VIDEOS"


def external_folder(env: str, what: str) -> Path:
    """A folder named by an environment variable; a clear error when it is unset or absent."""
    value = os.environ.get(env)
    if not value:
        raise FileNotFoundError(f"${env} is not set: point it at {what}")
    folder = Path(value)
    if not folder.is_dir():
        raise FileNotFoundError(f"${env}={folder}: no such folder ({what})")
    return folder


def uses_synthetic(profile: Profile) -> bool:
    return profile.get("raw_videos.source") == "synthetic"


def pool_videos_root(profile: Profile, paths: PipelinePaths) -> Path:
    """The folder the catalog scans: the synthetic dataset, or $GROVE_POOL_VIDEOS."""
    if uses_synthetic(profile):
        return paths.path("synthetic")
    return external_folder(POOL_VIDEOS_ENV, "the folder of pre-training pool videos (HowTo100M clips)")


def build(profile: Profile) -> list:
    assets: list = []
    if uses_synthetic(profile):

        @dg.asset(
            key=SYNTHETIC,
            group_name=GROUP,
            kinds={"python", "video", "parquet"},
            owners=OWNERS[GROUP],
            code_version=code_version(profile, "1", "seed", "synthetic", stage="synthesize"),
            description="Procedurally rendered grounded-video clips with exact ground truth "
            "(`grove data synth`): the pre-training pool plus iGround-like train/val/test splits, "
            "in canonical tables and the official GROVE pickles.",
        )
        def synthetic_dataset(context: dg.AssetExecutionContext, paths: PipelinePaths, dvc: DvcResource) -> dg.MaterializeResult:
            from grove.data.dataset import load_dataset
            from grove.data.synthetic import config_from_params, generate_dataset

            out = paths.path("synthetic")
            config = config_from_params(profile.params_file, profile.name)
            metadata: dict = {}
            with timed(metadata):
                summary = generate_dataset(out, config, progress=log_progress(context, "synth", 50))
            dataset = load_dataset(out)
            metadata |= numeric_metadata({"clips": summary.clips, "encoded": summary.encoded, **{
                f"clips_{split}": n for split, n in config.split_counts.items()}})
            metadata["path"] = dg.MetadataValue.path(str(out))
            metadata["preview"] = table_preview(dataset.clips, ["key", "split", "caption"])
            return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(dvc.record("synthesize", [out])))

        assets.append(synthetic_dataset)
        catalog_deps = [SYNTHETIC]
    else:
        assets.append(
            dg.AssetSpec(
                key=POOL_VIDEOS,
                group_name=GROUP,
                kinds={"video"},
                owners=OWNERS[GROUP],
                description=f"The pre-training pool's videos (HowTo100M clips), a folder named by ${POOL_VIDEOS_ENV}; "
                "made outside this pipeline. The new-videos sensor watches it.",
            )
        )
        catalog_deps = [POOL_VIDEOS]

    @dg.asset(
        key=CATALOG,
        deps=catalog_deps,
        group_name=GROUP,
        kinds={"python", "parquet", "duckdb"},
        owners=OWNERS[GROUP],
        code_version=code_version(profile, "1", "catalog", stage="ingest"),
        automation_condition=on_changed_inputs(),
        description="Every pool video probed (duration, fps, frames, size, codec) and content-hashed "
        "(`grove data ingest`); corrupt, truncated, empty, non-video, duplicate and missing files go to "
        "rejects.parquet with their reason. Re-runs probe only new or changed files.",
    )
    def pool_catalog(context: dg.AssetExecutionContext, paths: PipelinePaths, dvc: DvcResource) -> dg.MaterializeResult:
        from grove.data.catalog import build_catalog

        out = paths.path("catalog")
        metadata: dict = {}
        with timed(metadata):
            summary = build_catalog(
                pool_videos_root(profile, paths),
                out,
                timeout_s=float(profile.get("catalog.timeout_s", 60.0)),
                progress=log_progress(context, "probe", 200),
            )
        rejects = pq.read_table(out / "rejects.parquet")
        metadata |= numeric_metadata(
            {"videos": summary.videos, "clips": summary.clips, "rejects": rejects.num_rows, "reused": summary.reused}
        )
        metadata["rejects_by_reason"] = dg.MetadataValue.json(summary.rejects)
        metadata["rejects_preview"] = table_preview(rejects, ["path", "reason", "detail"])
        metadata["path"] = dg.MetadataValue.path(str(out))
        return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(dvc.record("ingest", [out])))

    assets.append(pool_catalog)
    return assets

