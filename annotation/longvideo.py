"""Long videos (the Video ReCap capability): clip captions -> segment descriptions -> a video summary.

A video longer than a clip is annotated as consecutive clips (`AnnotatorConfig.clip_seconds`); their
stage-2 captions are aggregated, recursively and with the same engines, into one description per
segment of `segment_clips` clips and one summary per video:
- `consensus`: a level's items are read like stage 2 reads frames (their tagged phrases are the
  entities, their clauses the actions), so what persists across the items and what it does most
  often becomes the description;
- `vllm` / `transformers`: prompts/summary.txt, answer `{'CAPTION': ...}`; an unusable answer gets one
  repair prompt, then the consensus description.
Written as `hierarchy.parquet` (video_id, level, index, start/end frame, caption, source) and as
`hierarchy.json` ({level: {id: caption}}, the layout `grove eval temporal recap` scores).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa

from annotation.engines import InvalidAnswer, make_generator, parse_dict_answer, repair_prompt, string_schema
from annotation.records import ClipFrames, FrameAnnotation, VideoCaption
from annotation.stage2 import CAPTION_KEY, Stage2, load_prompt, strip_tags
from grove.data.schema import write_table
from grove.io import atomic_write_json

HIERARCHY_SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("level", pa.string(), nullable=False),  # clip | segment | video
        pa.field("id", pa.string(), nullable=False),
        pa.field("index", pa.int32(), nullable=False),
        pa.field("start_frame", pa.int64(), nullable=False),
        pa.field("end_frame", pa.int64(), nullable=False),
        pa.field("caption", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
    ]
)


@dataclass
class Item:
    id: str
    start_frame: int
    end_frame: int
    caption: str
    tagged_caption: str
    phrases: list[str]
    source: str


class Summariser:
    """Aggregates a list of item captions into one, with the stage-2 engine of the annotation."""

    def __init__(self, engine: str = "consensus", options: dict[str, Any] | None = None, stage2: Stage2 | None = None) -> None:
        options = dict(options or {})
        self.stage2 = stage2 or Stage2("consensus", clause_frames=0)
        self.generator = None if engine == "consensus" else make_generator(engine, options)
        self.template = load_prompt("summary.txt")

    def consensus(self, group_id: str, items: Sequence[Item]) -> VideoCaption | None:
        frames = ClipFrames(group_id, [FrameAnnotation(i, it.start_frame, it.caption, list(it.phrases))
                                       for i, it in enumerate(items)])
        clauses = self.stage2.clip_clauses(frames)
        result = self.stage2.consensus.caption(frames, clauses)
        return result if isinstance(result, VideoCaption) else None

    def summarise(self, groups: Sequence[tuple[str, Sequence[Item]]], what: str) -> list[tuple[str, str, str, list[str], str]]:
        """(caption, tagged caption, source) per group; LLM answers in one call for all groups."""
        fallback = [self.consensus(gid, items) for gid, items in groups]
        results = []
        answers: list[str | None] = [None] * len(groups)
        if self.generator is not None:
            prompts = [self.template.replace("{what}", what).replace(
                "{parts}", "\n".join(f"{i + 1}: {it.caption}" for i, it in enumerate(items))) for _, items in groups]
            schema = string_schema(CAPTION_KEY)
            first = self.generator.generate(prompts, [schema] * len(prompts))
            bad = {}
            for i, text in enumerate(first):
                try:
                    answers[i] = _plain_caption(text)
                except InvalidAnswer as exc:
                    bad[i] = str(exc)
            retry = sorted(bad)
            second = self.generator.generate([repair_prompt(prompts[i], first[i], bad[i], CAPTION_KEY) for i in retry],
                                             [schema] * len(retry)) if retry else []
            for i, text in zip(retry, second):
                try:
                    answers[i] = _plain_caption(text)
                except InvalidAnswer:
                    pass
        for (gid, items), answer, consensus in zip(groups, answers, fallback):
            if answer is not None:
                results.append((answer, answer, "llm", [], gid))
            elif consensus is not None:
                source = "consensus" if self.generator is None else "consensus-fallback"
                results.append((consensus.caption, consensus.tagged_caption, source, consensus.phrases, gid))
            else:  # nothing persists across the items: their captions in order
                text = " ".join(it.caption for it in items)
                results.append((text, text, "concatenation", [], gid))
        return results


def _plain_caption(text: str) -> str:
    value = parse_dict_answer(text, CAPTION_KEY)
    if not isinstance(value, str) or not strip_tags(value).strip():
        raise InvalidAnswer("CAPTION is not a non-empty string")
    return strip_tags(value).strip()


def build_hierarchy(clips: pa.Table, segment_clips: int, summariser: Summariser) -> list[dict[str, Any]]:
    """Rows of the caption hierarchy for every video with more than one clip."""
    videos: dict[str, list[dict[str, Any]]] = {}
    for row in clips.to_pylist():
        videos.setdefault(row["video_id"], []).append(row)
    rows: list[dict[str, Any]] = []
    segment_groups, owners = [], []
    for video_id, video_clips in sorted(videos.items()):
        if len(video_clips) < 2:
            continue
        video_clips.sort(key=lambda r: r["clip_start_frame"])
        items = [Item(c["key"], c["clip_start_frame"], c["clip_end_frame"], c["caption"], c["tagged_caption"],
                      list(c["phrases"]), "stage2") for c in video_clips]
        rows += [_row(video_id, "clip", i, it) for i, it in enumerate(items)]
        for s, start in enumerate(range(0, len(items), segment_clips)):
            segment_groups.append((f"{video_id}_seg{s}", items[start : start + segment_clips]))
            owners.append(video_id)
    segments: dict[str, list[Item]] = {}
    for (gid, members), (caption, tagged, source, phrases, _), video_id in zip(
            segment_groups, summariser.summarise(segment_groups, "one- or two-sentence description of this segment"), owners):
        item = Item(gid, members[0].start_frame, members[-1].end_frame, caption, tagged, phrases, source)
        segments.setdefault(video_id, []).append(item)
        rows.append(_row(video_id, "segment", len(segments[video_id]) - 1, item))
    video_groups = sorted(segments.items())
    for (video_id, members), (caption, tagged, source, phrases, _) in zip(
            video_groups, summariser.summarise(video_groups, "short summary of the whole video")):
        rows.append(_row(video_id, "video", 0, Item(video_id, members[0].start_frame, members[-1].end_frame,
                                                    caption, tagged, phrases, source)))
    return rows


def _row(video_id: str, level: str, index: int, item: Item) -> dict[str, Any]:
    return {"video_id": video_id, "level": level, "id": item.id, "index": index, "start_frame": item.start_frame,
            "end_frame": item.end_frame, "caption": item.caption, "source": item.source}


def write_hierarchy(out_dir: str | Path, clips: pa.Table, config: Any) -> dict[str, Any]:
    """hierarchy.parquet and hierarchy.json in `out_dir`; returns counts for the manifest."""
    options = config.stage2_options if config.stage2 != "consensus" else {}
    summariser = Summariser(config.stage2, {k: v for k, v in options.items() if k != "clause_frames"})
    rows = build_hierarchy(clips, max(1, config.segment_clips), summariser)
    table = pa.Table.from_pylist(rows, schema=HIERARCHY_SCHEMA).sort_by(
        [("video_id", "ascending"), ("level", "ascending"), ("index", "ascending")])
    out = Path(out_dir)
    write_table(table, out / "hierarchy.parquet", HIERARCHY_SCHEMA)
    levels: dict[str, dict[str, str]] = {"clip": {}, "segment": {}, "video": {}}
    for row in table.to_pylist():
        levels[row["level"]][row["id"]] = row["caption"]
    atomic_write_json(out / "hierarchy.json", levels)
    return {level: len(items) for level, items in levels.items()}
