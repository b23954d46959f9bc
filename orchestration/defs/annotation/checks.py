"""Asset checks on every annotation shard: schema, non-empty captions, boxes inside the frame, and the
stage-2 fallback rate under the profile's limit.

They are the stage assets' own check specs, evaluated in the asset body for the shard just written,
so each partition gets its own results (stable Dagster API; standalone partitioned checks are still
a preview feature). The schema checks block: a shard with a broken table never reaches the next stage.
"""

import json
from pathlib import Path
from typing import Any, Mapping

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from orchestration.defs.annotation.partitions import shard_files
from orchestration.defs.common import table_preview

BOX_TOLERANCE_PX = 1.0  # boxes may touch the border after rounding


def stage_schemas(stage: int) -> dict[str, pa.Schema]:
    from annotation.records import CAPTION_SCHEMA, FAILURE_SCHEMA, FRAME_SCHEMA
    from grove.data.schema import BOX_SCHEMA, CLIP_SCHEMA

    tables = {1: {"frames.parquet": FRAME_SCHEMA}, 2: {"captions.parquet": CAPTION_SCHEMA},
              3: {"clips.parquet": CLIP_SCHEMA, "boxes_raw.parquet": BOX_SCHEMA}}[stage]
    return {**tables, shard_files(stage)[-1]: FAILURE_SCHEMA}


def schema_problems(folder: Path, schemas: Mapping[str, pa.Schema]) -> list[str]:
    """One message per file that is absent, unreadable, or not castable to its canonical schema."""
    from grove.data.schema import SchemaError, read_table

    problems = []
    for name, schema in schemas.items():
        try:
            read_table(folder / name, schema)
        except (SchemaError, FileNotFoundError) as exc:
            problems.append(str(exc))
    return problems


def empty_captions(clips: pa.Table) -> list[str]:
    """Keys of clips whose caption is empty or blank, or that tag no phrase."""
    blank = pc.equal(pc.utf8_trim_whitespace(clips["caption"]), "")
    no_phrase = pc.equal(pc.list_value_length(clips["phrases"]), 0)
    return clips.filter(pc.or_(blank, no_phrase))["key"].to_pylist()


def boxes_outside_frame(clips: pa.Table, boxes: pa.Table, tolerance: float = BOX_TOLERANCE_PX) -> pa.Table:
    """Boxes that are inverted or leave their clip's frame by more than `tolerance` pixels."""
    sized = boxes.join(clips.select(["key", "width", "height"]), "key", join_type="left outer")
    w, h = pc.cast(sized["width"], pa.float64()), pc.cast(sized["height"], pa.float64())
    bad = pc.or_kleene(
        pc.or_kleene(pc.less(sized["x1"], -tolerance), pc.less(sized["y1"], -tolerance)),
        pc.or_kleene(
            pc.or_kleene(pc.greater(sized["x2"], pc.add(w, tolerance)), pc.greater(sized["y2"], pc.add(h, tolerance))),
            pc.or_kleene(pc.less(sized["x2"], sized["x1"]), pc.less(sized["y2"], sized["y1"])),
        ),
    )
    bad = pc.or_kleene(bad, pc.is_null(sized["width"]))  # a box of a clip the shard does not have
    return sized.filter(pc.fill_null(bad, True))


def fallback_rate(stats: Mapping[str, Any]) -> float:
    clips = int(stats.get("clips", 0))
    return int(stats.get("fallbacks", 0)) / clips if clips else 0.0


CHECKS = {
    1: ("schema",),
    2: ("schema", "fallback_rate"),
    3: ("schema", "captions_non_empty", "boxes_inside_frame"),
}
DESCRIPTIONS = {
    "schema": "Every table of the shard reads and casts to its canonical schema (blocking: a broken shard "
    "never reaches the next stage).",
    "fallback_rate": "The share of clips whose stage-2 engine fell back to consensus is at most {limit:.0%}.",
    "captions_non_empty": "Every annotated clip has a non-empty caption that tags at least one phrase.",
    "boxes_inside_frame": f"Every box lies inside its clip's frame (±{BOX_TOLERANCE_PX:g} px) and is not inverted.",
}


def check_name(stage: int, check: str) -> str:
    return f"stage{stage}_{check}"


def shard_check_specs(asset_key: dg.AssetKey, stage: int, fallback_limit: float) -> list[dg.AssetCheckSpec]:
    """The checks evaluated with every materialisation of a stage's shard (in the asset body, per partition)."""
    return [
        dg.AssetCheckSpec(
            check_name(stage, check),
            asset=asset_key,
            blocking=check == "schema",
            description=DESCRIPTIONS[check].format(limit=fallback_limit),
        )
        for check in CHECKS[stage]
    ]


def shard_check_results(stage: int, folder: Path, fallback_limit: float) -> list[dg.AssetCheckResult]:
    """Evaluate a stage's checks on its shard folder; later checks are skipped when the schema is broken."""
    problems = schema_problems(folder, stage_schemas(stage))
    results = [
        dg.AssetCheckResult(
            check_name=check_name(stage, "schema"),
            passed=not problems,
            metadata={"problems": dg.MetadataValue.json(problems)},
        )
    ]
    if problems:
        return results + [
            dg.AssetCheckResult(check_name=check_name(stage, check), passed=False, metadata={"skipped": "schema check failed"})
            for check in CHECKS[stage][1:]
        ]
    if stage == 2:
        from annotation.shards import DONE

        stats = json.loads((folder / DONE).read_text()).get("stats", {})
        rate = fallback_rate(stats)
        results.append(
            dg.AssetCheckResult(
                check_name=check_name(2, "fallback_rate"),
                passed=rate <= fallback_limit,
                metadata={"fallback_rate": rate, "limit": fallback_limit, "fallbacks": int(stats.get("fallbacks", 0)),
                          "reasons": dg.MetadataValue.json(stats.get("fallback_reasons", {}))},
            )
        )
    if stage == 3:
        clips, boxes = pq.read_table(folder / "clips.parquet"), pq.read_table(folder / "boxes_raw.parquet")
        empty = empty_captions(clips)
        outside = boxes_outside_frame(clips, boxes)
        results += [
            dg.AssetCheckResult(
                check_name=check_name(3, "captions_non_empty"),
                passed=not empty,
                metadata={"clips": clips.num_rows, "empty": len(empty), "examples": dg.MetadataValue.json(empty[:10])},
            ),
            dg.AssetCheckResult(
                check_name=check_name(3, "boxes_inside_frame"),
                passed=outside.num_rows == 0,
                metadata={"boxes": boxes.num_rows, "outside": outside.num_rows,
                          "examples": table_preview(outside, ["key", "frame_index", "x1", "y1", "x2", "y2", "width", "height"])},
            ),
        ]
    return results
