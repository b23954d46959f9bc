"""The three-stage automatic annotation (HowToGround1M's data engine), one partition per shard.

Stage 1 captions and grounds every 5 fps frame; stage 2 aggregates a video-level caption with
tagged noun phrases; stage 3 ties each frame's boxes to those phrases. Each stage's code version is
its annotator stage version (a hash of backends, models, prompts and parameters, chained through
the earlier stages), so a changed prompt or model marks that stage and everything after it stale.
The merge makes the HowToGround1M-format dataset the scaling subsets draw from.

A partition is a shard of the annotation folder's shard plan: its clips are fixed once planned, so
a new catalog adds partitions and never re-annotates a finished one. Within a partition, a stage
runs in batches and a killed run resumes at its first unfinished batch (`annotation.batch_size`).
"""

import json
from pathlib import Path
from typing import Any

import dagster as dg

from orchestration.defs.annotation.checks import shard_check_results, shard_check_specs
from orchestration.defs.annotation.partitions import (
    SHARDS,
    annotator_config,
    batch_size,
    planned_shards,
    shard_files,
    shard_spec,
)
from grove.io import atomic_write_json
from orchestration.defs.common import OWNERS, code_version, input_dataset, input_versions, numeric_metadata, on_changed_inputs, table_preview, timed
from orchestration.defs.raw_videos.assets import CATALOG, SYNTHETIC, uses_synthetic
from orchestration.profile import Profile
from orchestration.resources import DvcResource, MlflowResource, PipelinePaths, combine_versions, dvc_md5

GROUP = "annotation"
STAGE_KEYS = {
    1: dg.AssetKey("stage1_frame_captions"),
    2: dg.AssetKey("stage2_video_captions"),
    3: dg.AssetKey("stage3_grounded_clips"),
}
POOL = dg.AssetKey("annotated_pool")
QUALITY = dg.AssetKey("annotation_quality")
QUALITY_REPORT = "annotation_quality.json"
QUALITY_METRICS = ("METEOR", "CIDEr", "AP50", "Recall")

STAGE_DESCRIPTIONS = {
    1: "Stage 1: frame-level grounded captions (caption, phrases, boxes) for every 5 fps frame of the "
    "shard's clips, from the configured image grounded-captioner.",
    2: "Stage 2: one video-level caption per clip with <p>…</p>-tagged noun phrases, aggregated from the "
    "frames' subject-verb-object triplets; LLM output that stays invalid after one repair falls back "
    "to consensus (counted).",
    3: "Stage 3: every frame-level phrase assigned to a video-level phrase or none ('tracking by "
    "language'): canonical clip and raw box tables of the shard.",
}
PREVIEW_COLUMNS = {
    1: ("frames.parquet", ["key", "frame_index", "caption", "phrases"]),
    2: ("captions.parquet", ["key", "tagged_caption", "source"]),
    3: ("clips.parquet", ["key", "tagged_caption", "phrases"]),
}


# One annotator per process (see `process_annotator`), keyed by what it was built from.
_ANNOTATORS: dict[tuple, Any] = {}


def process_annotator(config: Any, catalog_dir: Path, out_dir: Path, batch: int | None = None) -> Any:
    """The process's Annotator for this configuration, catalog, output folder and batch size.

    Its engines (the stage-1 captioner, spaCy for stages 2 and 3) load once and serve every stage
    and shard this process runs, instead of once per `run_stage` call. A rewritten catalog (other
    size or mtime of its files) or another configuration gets a fresh one, and the old one is
    dropped. Safe to share: each stage's output depends only on the shard (per-clip seeds).
    """
    from annotation.shards import DEFAULT_BATCH_SIZE, Annotator

    batch = batch or DEFAULT_BATCH_SIZE
    files = [catalog_dir / name for name in ("clips.parquet", "catalog.json", "catalog.parquet")]
    stamps = tuple((f.stat().st_mtime_ns, f.stat().st_size) if f.exists() else None for f in files)
    key = (json.dumps(config.resolved(), sort_keys=True, default=str), str(catalog_dir.resolve()), str(out_dir.resolve()),
           stamps, batch)
    if key not in _ANNOTATORS:
        _ANNOTATORS.clear()
        _ANNOTATORS[key] = Annotator(config, catalog_dir, out_dir, batch_size=batch)
    return _ANNOTATORS[key]


def stage_code_version(profile: Profile, stage: int) -> str:
    from annotation.shards import stage_version

    return stage_version(annotator_config(profile), stage)


def _stage_asset(profile: Profile, stage: int) -> dg.AssetsDefinition:
    deps = [CATALOG] if stage == 1 else [STAGE_KEYS[stage - 1]]
    fallback_limit = float(profile.get("annotation.max_stage2_fallback_rate"))

    @dg.asset(
        key=STAGE_KEYS[stage],
        deps=deps,
        partitions_def=SHARDS,
        group_name=GROUP,
        kinds={"python", "parquet"},
        owners=OWNERS[GROUP],
        code_version=stage_code_version(profile, stage),
        # No automation condition: the shard sensor (new and re-planned shards) and the re-annotation
        # schedule (an older annotator) request shard runs. Eager automation would request new shards a
        # second time, and every shard again (1,000 in `paper`) whenever a new catalog lands.
        automation_condition=None,
        description=STAGE_DESCRIPTIONS[stage],
        check_specs=shard_check_specs(STAGE_KEYS[stage], stage, fallback_limit),
    )
    def stage_shard(context: dg.AssetExecutionContext, paths: PipelinePaths) -> dg.MaterializeResult:
        import pyarrow.parquet as pq

        from annotation.shards import run_stage, shard_dir

        shard = shard_spec(profile, paths, context.partition_key)
        out, catalog, config = paths.path("annotation"), paths.path("catalog"), annotator_config(profile)
        metadata: dict = {}
        with timed(metadata):
            annotator = process_annotator(config, catalog, out, batch_size(profile))
            result = run_stage(stage, shard, out, config, catalog, annotator=annotator)
        folder = shard_dir(out, stage, shard)
        preview_file, preview_columns = PREVIEW_COLUMNS[stage]
        metadata |= numeric_metadata(
            {"clips": result.clips, "failures": result.failures, "reused": result.skipped, "stage_seconds": result.seconds,
             # batches an interrupted run had finished, which this one kept instead of redoing
             "batches": result.batches, "resumed_batches": result.resumed_batches}
        )
        metadata["stats"] = dg.MetadataValue.json(result.stats)
        metadata["keys_hash"] = dg.MetadataValue.text(shard.keys_hash)
        if shard.retired:  # clips a later catalog changed or removed: kept here, left out of the pool
            metadata["retired_clips"] = dg.MetadataValue.int(len(shard.retired))
        metadata["path"] = dg.MetadataValue.path(str(folder))
        metadata["preview"] = table_preview(pq.read_table(folder / preview_file), preview_columns)
        # The shard's data files only: done.json also holds run statistics, which must not make an
        # identical shard look new to everything downstream.
        version = combine_versions([dvc_md5(folder / name) for name in shard_files(stage)])
        return dg.MaterializeResult(
            metadata=metadata,
            data_version=dg.DataVersion(version),
            check_results=shard_check_results(stage, folder, fallback_limit),
        )

    return stage_shard


def build(profile: Profile) -> list:
    from annotation.shards import annotator_version

    @dg.asset(
        key=POOL,
        deps=[STAGE_KEYS[3]],
        group_name=GROUP,
        kinds={"python", "parquet"},
        owners=OWNERS[GROUP],
        code_version=annotator_version(annotator_config(profile)),
        automation_condition=on_changed_inputs(),
        description="The auto-annotated pool in the HowToGround1M format: every shard's stage-3 tables "
        "merged into one dataset folder (raw and union-merged processed boxes, rejected clips with "
        "their reasons, the annotator version in its manifest); clips a later catalog changed or "
        "removed are left out. Only shards new or changed since the last merge are read again.",
    )
    def annotated_pool(context: dg.AssetExecutionContext, paths: PipelinePaths, dvc: DvcResource) -> dg.MaterializeResult:
        import pyarrow.parquet as pq

        from annotation.merge import merge_pool
        from annotation.shards import REJECTS
        from grove.data.dataset import load_dataset, read_manifest

        out = paths.path("annotation")
        shards = list(planned_shards(profile, paths).values())
        metadata: dict = {}
        with timed(metadata):
            merged = merge_pool(out, shards, annotator_config(profile))
        dataset = load_dataset(out, processed=False)
        manifest = read_manifest(out)
        rejects = pq.read_table(out / REJECTS)
        metadata |= numeric_metadata(
            {"shards": len(shards), "clips": dataset.clips.num_rows, "boxes_raw": dataset.boxes.num_rows, "rejects": rejects.num_rows}
        )
        # the shards read again (new or changed since the last merge); the others' rows were kept
        metadata |= numeric_metadata({"shards_read": len(merged.read)})
        metadata["merge"] = dg.MetadataValue.text("whole: " + merged.reason if merged.whole else "incremental")
        metadata["annotator_version"] = dg.MetadataValue.text(manifest["creator"]["annotator_version"])
        metadata["stats"] = dg.MetadataValue.json(manifest.get("stats", {}))
        metadata["splits"] = dg.MetadataValue.json(manifest.get("splits", {}))
        metadata["preview"] = table_preview(dataset.clips, ["key", "split", "tagged_caption"])
        metadata["path"] = dg.MetadataValue.path(str(out))
        return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(dvc.record("annotate", [out])))

    assets = [_stage_asset(profile, stage) for stage in (1, 2, 3)] + [annotated_pool]
    if uses_synthetic(profile):
        assets.append(_quality_asset(profile))
    return assets


def _quality_asset(profile: Profile) -> dg.AssetsDefinition:
    split = profile.get("scaling.pool_split", None)

    @dg.asset(
        key=QUALITY,
        deps=[POOL, SYNTHETIC],
        group_name=GROUP,
        kinds={"python", "mlflow"},
        owners=OWNERS[GROUP],
        code_version=code_version(profile, "1", "scaling.pool_split", stage="annotate"),
        automation_condition=on_changed_inputs(),
        description="The automatic annotation scored against the synthetic ground truth with the iGround "
        "metrics (x100), next to naively labelled stage-1 boxes: the paper's 'automatic annotation' row.",
    )
    def annotation_quality(context: dg.AssetExecutionContext, paths: PipelinePaths, mlflow: MlflowResource, dvc: DvcResource) -> dg.MaterializeResult:
        from annotation.quality import score_annotation

        out = paths.path("reports", QUALITY_REPORT)
        with mlflow.start_run(context, concern="annotation", params={"split": split or "all"},
                              tags=input_versions(context, {"pool": (POOL, None)})) as run:
            run.log_inputs([input_dataset(context, POOL, None, paths.path("annotation"), "evaluation", split)])
            row = score_annotation(paths.path("annotation"), paths.path("synthetic"), split=split)
            atomic_write_json(out, row)
            run.log_metrics({name: row[name] for name in QUALITY_METRICS if row.get(name) is not None})
            naive = row.get("naive") or {}
            run.log_metrics({f"naive.{name}": naive[name] for name in QUALITY_METRICS if naive.get(name) is not None})
            run.log_dict(row, "annotation_quality.json")
            version = dvc.record("quality", [out])
        metadata = numeric_metadata({name: row[name] for name in QUALITY_METRICS if row.get(name) is not None})
        metadata |= numeric_metadata({f"naive_{name}": naive[name] for name in QUALITY_METRICS if naive.get(name) is not None})
        metadata["mlflow_run"] = dg.MetadataValue.url(run.url)
        metadata["path"] = dg.MetadataValue.path(str(out))
        return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(version))

    return annotation_quality
