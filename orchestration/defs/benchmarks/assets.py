"""Benchmark annotations in the canonical tables: iGround (the fine-tuning and test benchmark), and in
the paper profile VidSTG and ActivityNet-Entities.

The official iGround pickles (raw boxes) are converted with `grove data convert`, split by split,
into one dataset folder. In the demo profile they are the pickles the synthetic dataset writes
(its train/val/test splits); in the paper profile they come from $GROVE_IGROUND_DIR. Clip video
paths are rewritten to resolve from the benchmark folder, which is then a dataset folder of its own.
"""

import shutil
from pathlib import Path
from typing import Any, Mapping

import dagster as dg

from orchestration.defs.common import OWNERS, code_version, numeric_metadata, table_preview, timed
from orchestration.defs.raw_videos.assets import SYNTHETIC, external_folder
from orchestration.defs.scaling.subsets import rebase_video_paths
from orchestration.profile import Profile
from orchestration.resources import DvcResource, PipelinePaths, dvc_md5

GROUP = "benchmarks"
IGROUND = dg.AssetKey("iground_benchmark")
IGROUND_SOURCE = dg.AssetKey("iground_official")
IGROUND_ENV = "GROVE_IGROUND_DIR"
EXTERNAL = ("vidstg", "anet_entities")  # benchmarks a profile may name besides iGround


def iground_source(profile: Profile, paths: PipelinePaths) -> tuple[Path, Path]:
    """(folder of the official pickles, root their video paths resolve against)."""
    if profile.get("benchmarks.iground.source") == "synthetic":
        return paths.path("synthetic", "official"), paths.path("synthetic")
    folder = external_folder(IGROUND_ENV, "the iGround release (iGround_{train,val,test}_set_raw.pkl and its videos)")
    return folder, folder


def official_pickle(folder: Path, split: str) -> Path:
    return folder / f"iGround_{split}_set_raw.pkl"


def convert_splits(
    fmt: str, sources: Mapping[str, Path], out: Path, dataset: str, video_root: Path, **options: Any
) -> dict[str, int]:
    """Convert each split's official file into a fresh dataset folder `out` whose video paths resolve
    from the folder itself (a staging copy replaces `out` only when complete)."""
    from grove.data.convert import convert_to_dataset

    staging = out.parent / f".{out.name}.building"
    shutil.rmtree(staging, ignore_errors=True)
    counts = {}
    for split, source in sources.items():
        summary = convert_to_dataset(fmt, source, staging, split=split, dataset=dataset, **options)
        counts[f"clips_{split}"] = summary.clips
        counts[f"raw_boxes_{split}"] = summary.raw_boxes or 0
    rebase_video_paths(staging, video_root, home=out)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return counts


def build_iground(profile: Profile, paths: PipelinePaths, out: Path) -> dict[str, int]:
    """The profile's iGround splits as a dataset folder (see `convert_splits`)."""
    pickles, video_root = iground_source(profile, paths)
    sources = {split: official_pickle(pickles, split) for split in profile.get("benchmarks.iground.splits")}
    return convert_splits("howtoground", sources, out, "iground", video_root)


def _external_benchmark(profile: Profile, name: str) -> list:
    """VidSTG or ActivityNet-Entities (paper profile): its official files, in a folder named by
    `benchmarks.<name>.env`, converted split by split into the canonical tables."""
    settings = profile.get(f"benchmarks.{name}")
    env, fmt = settings["env"], settings["format"]
    source_key, key = dg.AssetKey(f"{name}_official"), dg.AssetKey(f"{name}_benchmark")
    source = dg.AssetSpec(
        key=source_key,
        group_name=GROUP,
        kinds={"json"},
        owners=OWNERS[GROUP],
        description=f"The official {name} annotation files ({', '.join(settings['files'].values())}) and videos, in ${env}.",
    )

    @dg.asset(
        key=key,
        deps=[source_key],
        group_name=GROUP,
        kinds={"python", "parquet"},
        owners=OWNERS[GROUP],
        code_version=code_version(profile, "1", f"benchmarks.{name}"),
        automation_condition=dg.AutomationCondition.eager(),
        description=f"{name}'s splits ({', '.join(settings['files'])}) converted from the official {fmt} files "
        "into the canonical clip and box tables (`grove data convert`).",
    )
    def external_benchmark(context: dg.AssetExecutionContext, paths: PipelinePaths) -> dg.MaterializeResult:
        from grove.data.dataset import load_dataset

        folder = external_folder(env, f"the {name} release (annotation files and videos)")
        options: dict[str, Any] = {}
        if settings.get("split_ids"):
            options["split_ids"] = folder / settings["split_ids"]
        out = paths.path("benchmarks", name)
        sources = {split: folder / file for split, file in settings["files"].items()}
        metadata: dict = {}
        with timed(metadata):
            counts = convert_splits(fmt, sources, out, name, folder, **options)
        metadata |= numeric_metadata(counts)
        metadata["preview"] = table_preview(load_dataset(out).clips, ["key", "split", "tagged_caption"])
        metadata["path"] = dg.MetadataValue.path(str(out))
        return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(dvc_md5(out)))

    return [source, external_benchmark]


def build(profile: Profile) -> list:
    synthetic = profile.get("benchmarks.iground.source") == "synthetic"
    source_specs = [] if synthetic else [
        dg.AssetSpec(
            key=IGROUND_SOURCE,
            group_name=GROUP,
            kinds={"pickle"},
            owners=OWNERS[GROUP],
            description=f"The official iGround release (raw-box pickles per split and the videos), in ${IGROUND_ENV}.",
        )
    ]

    @dg.asset(
        key=IGROUND,
        deps=[SYNTHETIC] if synthetic else [IGROUND_SOURCE],
        group_name=GROUP,
        kinds={"python", "parquet"},
        owners=OWNERS[GROUP],
        code_version=code_version(profile, "1", "benchmarks.iground"),
        automation_condition=dg.AutomationCondition.eager(),
        description="iGround's train/val/test splits converted from the official raw pickles into the "
        "canonical clip and box tables (raw and union-merged processed boxes).",
    )
    def iground_benchmark(context: dg.AssetExecutionContext, paths: PipelinePaths, dvc: DvcResource) -> dg.MaterializeResult:
        from grove.data.dataset import load_dataset

        out = paths.path("iground")
        metadata: dict = {}
        with timed(metadata):
            counts = build_iground(profile, paths, out)
        metadata |= numeric_metadata(counts)
        metadata["preview"] = table_preview(load_dataset(out).clips, ["key", "split", "tagged_caption"])
        metadata["path"] = dg.MetadataValue.path(str(out))
        return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(dvc.record("iground", [out])))

    external = [asset for name in EXTERNAL if profile.get(f"benchmarks.{name}", None) for asset in _external_benchmark(profile, name)]
    return source_specs + [iground_benchmark] + external
