"""Benchmark annotations in the canonical tables: iGround (the fine-tuning and test benchmark),
VidSTG and ActivityNet-Entities.

The official iGround pickles (raw boxes) are converted with `grove data convert`, split by split,
into one dataset folder. In the demo profile they are the pickles the synthetic dataset writes
(its train/val/test splits); in the paper profile they come from $GROVE_IGROUND_DIR. Clip video
paths are rewritten to resolve from the benchmark folder, which is then a dataset folder of its own.

VidSTG and ActivityNet-Entities are converted the same way from their official files: in the paper
profile from the folders named by $GROVE_VIDSTG_DIR / $GROVE_ANET_DIR (external assets), in the
demo profile (`source: synthetic`) from the stand-ins that the synthetic generator renders in the
official layouts (grove.data.synthetic_benchmarks; assets `vidstg_synthetic`, `anet_entities_synthetic`).
"""

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import dagster as dg

from orchestration.defs.common import OWNERS, code_version, log_progress, numeric_metadata, on_changed_inputs, table_preview, timed
from orchestration.defs.raw_videos.assets import SYNTHETIC, external_folder
from orchestration.defs.scaling.subsets import rebase_video_paths
from orchestration.profile import Profile
from orchestration.resources import DvcResource, PipelinePaths

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
    from grove.data.dataset import read_manifest, write_manifest

    staging = out.parent / f".{out.name}.building"
    shutil.rmtree(staging, ignore_errors=True)
    counts = {}
    for split, source in sources.items():
        summary = convert_to_dataset(fmt, source, staging, split=split, dataset=dataset, **options)
        counts[f"clips_{split}"] = summary.clips
        counts[f"raw_boxes_{split}"] = summary.raw_boxes or 0
    rebase_video_paths(staging, video_root, home=out)
    manifest = read_manifest(staging)  # named after the folder it was built in: name the one it becomes
    write_manifest(staging, manifest | {"name": out.name})
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return counts


def build_iground(profile: Profile, paths: PipelinePaths, out: Path) -> dict[str, int]:
    """The profile's iGround splits as a dataset folder (see `convert_splits`)."""
    pickles, video_root = iground_source(profile, paths)
    sources = {split: official_pickle(pickles, split) for split in profile.get("benchmarks.iground.splits")}
    return convert_splits("howtoground", sources, out, "iground", video_root)


def benchmark_key(name: str) -> dg.AssetKey:
    """The converted benchmark (canonical tables) of VidSTG or ActivityNet-Entities."""
    return dg.AssetKey(f"{name}_benchmark")


def standin_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(f"{name}_synthetic")


def uses_standin(profile: Profile, name: str) -> bool:
    return profile.get(f"benchmarks.{name}.source", None) == "synthetic"


@dataclass(frozen=True)
class BenchmarkSource:
    """Where a benchmark's official files are: the folder (videos resolve from it), each split's
    annotation file, and ActivityNet-Entities' split-id file."""

    folder: Path
    files: dict[str, Path]
    split_ids: Path | None


def benchmark_source(profile: Profile, paths: PipelinePaths, name: str) -> BenchmarkSource:
    """The stand-in folder (`source: synthetic`), else the folder named by `benchmarks.<name>.env`."""
    settings = profile.get(f"benchmarks.{name}")
    if uses_standin(profile, name):
        from grove.data import synthetic_benchmarks as standins

        folder = standins.standins_folder(paths.path("synthetic")) / name
        if name == "vidstg":
            return BenchmarkSource(folder, {standins.VIDSTG_SPLIT: folder / standins.VIDSTG_FILE}, None)
        return BenchmarkSource(folder, {standins.ANET_SPLIT: folder / standins.ANET_FILE}, folder / standins.ANET_SPLIT_IDS)
    folder = external_folder(settings["env"], f"the {name} release (annotation files and videos)")
    split_ids = folder / settings["split_ids"] if settings.get("split_ids") else None
    return BenchmarkSource(folder, {split: folder / file for split, file in settings["files"].items()}, split_ids)


def write_standin(profile: Profile, paths: PipelinePaths, name: str, progress: Any = None) -> Any:
    """Render the demo's stand-in of VidSTG or ActivityNet-Entities (`benchmarks.<name>.clips` clips) into its
    folder; the generator's summary. The asset and `grove pipeline standin` (DVC's stage) both run this."""
    from grove.data.synthetic import config_from_params
    from grove.data.synthetic_benchmarks import DEFAULT_CLIPS, generate_standin

    clips = int(profile.get(f"benchmarks.{name}.clips", DEFAULT_CLIPS[name]))
    return generate_standin(benchmark_source(profile, paths, name).folder, config_from_params(profile.params_file, profile.name),
                            name, clips, progress=progress)


def build_benchmark(profile: Profile, paths: PipelinePaths, name: str) -> dict[str, int]:
    """VidSTG or ActivityNet-Entities converted from the profile's official files (or stand-in) into
    benchmarks/<name> (see `convert_splits`); the clip and box counts per split."""
    source = benchmark_source(profile, paths, name)
    options: dict[str, Any] = {"split_ids": source.split_ids} if source.split_ids is not None else {}
    return convert_splits(profile.get(f"benchmarks.{name}.format"), source.files, paths.path("benchmarks", name), name,
                          source.folder, **options)


def _standin_asset(profile: Profile, name: str) -> dg.AssetsDefinition:
    """The demo's stand-in of VidSTG or ActivityNet-Entities, rendered in the official layout."""
    what = {"vidstg": "VidSTG-like split (one query sentence and its tube per clip; test.json in TubeDETR's layout)",
            "anet_entities": "ActivityNet-Entities-like split (a captioned segment per video with boxed object words; "
            "the cleaned annotation file and split ids)"}[name]

    @dg.asset(
        key=standin_key(name),
        group_name=GROUP,
        kinds={"python", "video", "json"},
        owners=OWNERS[GROUP],
        code_version=code_version(profile, "1", "seed", "synthetic", f"benchmarks.{name}.clips", stage="standin"),
        description=f"A synthetic {what}, rendered by the synthetic dataset's generator from its own seed stream "
        "(`grove data synth`), in the official files that the paper profile reads from its release.",
    )
    def standin(context: dg.AssetExecutionContext, paths: PipelinePaths, dvc: DvcResource) -> dg.MaterializeResult:
        folder = benchmark_source(profile, paths, name).folder
        metadata: dict = {}
        with timed(metadata):
            summary = write_standin(profile, paths, name, progress=log_progress(context, f"{name} stand-in", 50))
        metadata |= numeric_metadata({"clips": summary.clips, "encoded": summary.encoded})
        metadata["path"] = dg.MetadataValue.path(str(folder))
        return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(dvc.record(f"standin@{name}", [folder])))

    return standin


def _external_benchmark(profile: Profile, name: str) -> list:
    """VidSTG or ActivityNet-Entities: its official files (paper profile: in a folder named by
    `benchmarks.<name>.env`; demo: the synthetic stand-in), converted split by split into the canonical tables."""
    settings = profile.get(f"benchmarks.{name}")
    fmt, synthetic = settings["format"], uses_standin(profile, name)
    key = benchmark_key(name)
    if synthetic:
        source_key, upstream = standin_key(name), [_standin_asset(profile, name)]
        where = "the synthetic stand-in"
    else:
        source_key = dg.AssetKey(f"{name}_official")
        upstream = [dg.AssetSpec(
            key=source_key,
            group_name=GROUP,
            kinds={"json"},
            owners=OWNERS[GROUP],
            description=f"The official {name} annotation files ({', '.join(settings['files'].values())}) and videos, in ${settings['env']}.",
        )]
        where = f"${settings['env']}"
    conversion_keys = [f"benchmarks.{name}.{field}" for field in ("source", "format", "env", "files", "split_ids", "clips")]

    @dg.asset(
        key=key,
        deps=[source_key],
        group_name=GROUP,
        kinds={"python", "parquet"},
        owners=OWNERS[GROUP],
        code_version=code_version(profile, "2", *conversion_keys, stage="benchmark"),
        automation_condition=on_changed_inputs(),
        description=f"{name}'s splits converted from the official {fmt} files ({where}) into the canonical clip "
        "and box tables (`grove data convert`).",
    )
    def external_benchmark(context: dg.AssetExecutionContext, paths: PipelinePaths, dvc: DvcResource) -> dg.MaterializeResult:
        from grove.data.dataset import load_dataset

        out = paths.path("benchmarks", name)
        metadata: dict = {}
        with timed(metadata):
            counts = build_benchmark(profile, paths, name)
        metadata |= numeric_metadata(counts)
        metadata["preview"] = table_preview(load_dataset(out).clips, ["key", "split", "tagged_caption"])
        metadata["path"] = dg.MetadataValue.path(str(out))
        stage = f"benchmark@{name}" if synthetic else None  # dvc.yaml holds the demo's lineage only
        return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(dvc.record(stage, [out])))

    return [*upstream, external_benchmark]


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
        code_version=code_version(profile, "2", "benchmarks.iground", stage="iground"),
        automation_condition=on_changed_inputs(),
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
