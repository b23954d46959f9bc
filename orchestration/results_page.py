"""`grove report`: one self-contained HTML page of a run's results.

The page holds, for one profile's runs root:
- a table per benchmark (iGround, and VidSTG and ActivityNet-Entities where the lineage scored them)
  and per protocol: each fine-tuned model's metrics (x100) with their bootstrap intervals, each row
  linked to its MLflow run and its Dagster asset partition;
- the data-scaling plot;
- the automatic annotation: its quality against ground truth where there is one, and what each
  stage did (fallbacks, repairs, rejects);
- a few grounded captions of test clips: frames with a coloured box per phrase, the prediction
  beside the ground truth.

Images are embedded (base64 PNG), so the file can be mailed or attached to an MLflow run as it is.
Everything is read from the files the lineage wrote; a part whose files are missing says so.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from grove.io import atomic_write_text
from orchestration.defs.common import FT_ONLY
from orchestration.profile import Profile

logger = logging.getLogger(__name__)

PAGE = "results.html"
BENCHMARK_TITLES = {"iground": "iGround", "vidstg": "VidSTG", "anet_entities": "ActivityNet-Entities"}
DAGSTER_URL = "http://127.0.0.1:3000"
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3em 0.7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
td .ci { color: #777; font-size: 0.85em; }
.missing { color: #a00; }
figure { display: inline-block; margin: 0 1em 1em 0; vertical-align: top; }
figcaption { font-size: 0.85em; max-width: 40em; }
img { max-width: 100%; }
"""


@dataclass
class MetricCell:
    value: float | None
    low: float | None = None
    high: float | None = None


@dataclass
class ResultRow:
    variant: str
    cells: dict[str, MetricCell]
    links: dict[str, str] = field(default_factory=dict)  # link text -> URL


@dataclass
class ResultTable:
    benchmark: str
    protocol: str
    metrics: list[str]
    rows: list[ResultRow]
    note: str = ""


# ------------------------------------------------------------------------------------------ reading
def protocol_sections(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A metrics file's protocols by name: its own first, then `other_protocols` (same layout)."""
    own = str((report.get("protocol") or {}).get("preset", "reported"))
    return {own: report, **report.get("other_protocols", {})}


def metric_cells(section: dict[str, Any], scale: float) -> dict[str, MetricCell]:
    intervals = section.get("intervals", {})
    cells = {}
    for name, value in section.get("metrics", {}).items():
        interval = intervals.get(name) or {}
        scaled = lambda v: None if v is None else scale * float(v)  # noqa: E731
        cells[name] = MetricCell(scaled(value), scaled(interval.get("low")), scaled(interval.get("high")))
    return cells


def variant_order(profile: Profile, variants: Sequence[str]) -> list[str]:
    """Pre-training sizes smallest first, then FT-only, then anything else by name."""
    known = [*profile.sizes, FT_ONLY]
    return [v for v in known if v in variants] + sorted(v for v in variants if v not in known)


def benchmark_tables(profile: Profile, metrics_dir: Path, links: "RunLinks | None" = None) -> list[ResultTable]:
    """One table per benchmark folder under `metrics_dir` and per protocol found in its files."""
    wanted = list(profile.get("evaluation.metrics"))
    tables = []
    for benchmark in [b for b in BENCHMARK_TITLES if (metrics_dir / b).is_dir()]:
        reports = {p.stem: json.loads(p.read_text()) for p in sorted((metrics_dir / benchmark).glob("*.json"))}
        by_protocol: dict[str, list[ResultRow]] = {}
        for variant in variant_order(profile, list(reports)):
            for protocol, section in protocol_sections(reports[variant]).items():
                row_links = links.for_partition(benchmark, variant) if links is not None else {}
                by_protocol.setdefault(protocol, []).append(ResultRow(variant, metric_cells(section, 100.0), row_links))
        for protocol, rows in by_protocol.items():
            names = sorted({name for row in rows for name in row.cells})
            columns = [m for m in wanted if m in names] if benchmark == "iground" else names
            tables.append(ResultTable(benchmark, protocol, columns, rows))
    return tables


class RunLinks:
    """MLflow run and Dagster asset links of the metric asset partitions (asset `<benchmark>_metrics`)."""

    def __init__(self, mlflow: Any | None, dagster_url: str = DAGSTER_URL) -> None:
        self.mlflow, self.dagster_url = mlflow, dagster_url
        self._runs: dict[str, dict[str, str]] = {}

    def _mlflow_runs(self, asset_key: str) -> dict[str, str]:
        if self.mlflow is None:
            return {}
        if asset_key not in self._runs:
            from orchestration.compare import comparison_rows, search_asset_runs

            try:
                client = self.mlflow.client()
                rows = comparison_rows(search_asset_runs(client, self.mlflow.experiment_ids(client), asset_key))
                self._runs[asset_key] = {row.partition: self.mlflow.run_url(row.experiment_id, row.run_id) for row in rows}
            except Exception as exc:  # an unreadable store costs the links, not the page
                logger.warning("no MLflow links for %s: %s", asset_key, exc)
                self._runs[asset_key] = {}
        return self._runs[asset_key]

    def for_partition(self, benchmark: str, partition: str) -> dict[str, str]:
        asset_key = f"{benchmark}_metrics"
        links = {"Dagster": f"{self.dagster_url}/assets/{asset_key}?partition={partition}"}
        if partition in self._mlflow_runs(asset_key):
            links["MLflow"] = self._mlflow_runs(asset_key)[partition]
        return links


# ------------------------------------------------------------------------------------------ pictures
def png_data_uri(image: Any) -> str:
    """A PIL image or a PNG file as a data: URI."""
    if isinstance(image, (str, Path)):
        data = Path(image).read_bytes()
    else:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data = buffer.getvalue()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


@dataclass
class Example:
    key: str
    predicted_caption: str
    reference_caption: str
    predicted_png: str  # data URI
    reference_png: str


def grounded_examples(benchmark_dir: Path, predictions_file: Path, split: str, count: int = 3,
                      max_frames: int = 4) -> list[Example]:
    """The first `count` clips (by key) of the split that have a prediction: frames with each phrase's
    boxes, predicted and ground truth (raw boxes), on the 5 fps frames the predictions are on."""
    import tempfile

    import numpy as np
    import pyarrow.compute as pc

    from grove.data.dataset import load_dataset
    from grove.data.frames import annotated_frame_ids
    from grove.data.loader import decode_frames
    from grove.data.predictions import load_predictions
    from grove.visualize import render_grid

    predictions, _ = load_predictions(predictions_file)
    dataset = load_dataset(benchmark_dir, processed=False, split=split)
    rows = sorted((r for r in dataset.clips.to_pylist() if r["key"] in predictions), key=lambda r: r["key"])[:count]
    examples = []
    with tempfile.TemporaryDirectory() as scratch:
        for row in rows:
            prediction = predictions[row["key"]]
            frame_ids = annotated_frame_ids(row["fps"], row["clip_start_frame"], row["clip_end_frame"], row["num_frames"] or None)
            frames = decode_frames(dataset.video_file(row["video_path"]), frame_ids)[: prediction.num_frames]
            boxes = dataset.boxes.filter(pc.equal(dataset.boxes["key"], row["key"])).to_pylist()
            truth = [[(b["x1"], b["y1"], b["x2"], b["y2"]) for b in boxes if b["frame_id"] == f] for f in frame_ids[: len(frames)]]
            truth_labels = [[b["phrase"] for b in boxes if b["frame_id"] == f] for f in frame_ids[: len(frames)]]
            predicted_boxes = [np.asarray(b).reshape(-1, 4).tolist() for b in prediction.pred_bboxes[: len(frames)]]
            pictures = {}
            for name, frame_boxes, labels, phrases, caption in (
                ("pred", predicted_boxes, prediction.pred_labels[: len(frames)], prediction.pred_phrases, prediction.pred_text),
                ("gt", truth, truth_labels, list(row["phrases"]), row["caption"]),
            ):
                path = render_grid(frames, frame_boxes, labels, phrases, Path(scratch) / f"{name}.png",
                                   max_frames=max_frames, columns=max_frames)
                pictures[name] = png_data_uri(path)
            examples.append(Example(row["key"], prediction.pred_text, row["caption"], pictures["pred"], pictures["gt"]))
    return examples


# ------------------------------------------------------------------------------------------ the page
def _cell_html(cell: MetricCell | None) -> str:
    if cell is None or cell.value is None:
        return "-"
    text = f"{cell.value:.2f}"
    if cell.low is not None and cell.high is not None:
        text += f' <span class="ci">[{cell.low:.2f}, {cell.high:.2f}]</span>'
    return text


def table_html(table: ResultTable, labels: dict[str, str]) -> str:
    head = "".join(f"<th>{html.escape(m)}</th>" for m in table.metrics)
    rows = []
    for row in table.rows:
        links = " ".join(f'<a href="{html.escape(url)}">{html.escape(name)}</a>' for name, url in row.links.items())
        cells = "".join(f"<td>{_cell_html(row.cells.get(m))}</td>" for m in table.metrics)
        rows.append(f"<tr><td>{html.escape(labels.get(row.variant, row.variant))}</td>{cells}<td>{links}</td></tr>")
    title = f"{BENCHMARK_TITLES[table.benchmark]}, {html.escape(table.protocol)} protocol (x100, bootstrap intervals)"
    return f"<h3>{title}</h3><table><tr><th>model</th>{head}<th></th></tr>{''.join(rows)}</table>"


def annotation_html(annotation_dir: Path, quality_file: Path) -> str:
    parts = []
    if quality_file.exists():
        quality = json.loads(quality_file.read_text())
        names = [m for m in ("METEOR", "CIDEr", "AP50", "Recall") if m in quality]
        rows = [(quality.get("variant", "automatic"), quality), *(
            [(quality["naive"].get("variant", "naive"), quality["naive"])] if "naive" in quality else [])]
        body = "".join(f"<tr><td>{html.escape(str(label))}</td>" + "".join(f"<td>{r.get(m, '-')}</td>" for m in names)
                       + "</tr>" for label, r in rows)
        parts.append("<p>Against the synthetic ground truth (x100):</p><table><tr><th>annotation</th>"
                     + "".join(f"<th>{m}</th>" for m in names) + f"</tr>{body}</table>")
    manifest = annotation_dir / "dataset.json"
    if manifest.exists():
        stats = json.loads(manifest.read_text()).get("stats", {})
        items = [("clips", stats.get("clips")), ("raw boxes", stats.get("boxes_raw")), ("rejected clips", stats.get("rejects"))]
        for stage in ("stage2", "stage3"):
            for key, value in sorted((stats.get(stage) or {}).items()):
                if not isinstance(value, dict):
                    items.append((f"{stage} {key}", value))
        parts.append("<table>" + "".join(f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in items) + "</table>")
    return "".join(parts) or '<p class="missing">No annotation outputs in this run.</p>'


def render_page(title: str, tables: Sequence[ResultTable], labels: dict[str, str], plot: Path | None,
                annotation: str, examples: Sequence[Example]) -> str:
    body = [f"<h1>{html.escape(title)}</h1>", "<h2>Benchmarks</h2>"]
    body += [table_html(t, labels) for t in tables] or ['<p class="missing">No metric files in this run.</p>']
    body.append("<h2>Data scaling</h2>")
    body.append(f'<img alt="data-scaling plot" src="{png_data_uri(plot)}">' if plot is not None and plot.exists()
                else '<p class="missing">No data-scaling plot in this run.</p>')
    body += ["<h2>Automatic annotation</h2>", annotation, "<h2>Grounded captions</h2>"]
    for example in examples:
        body.append(
            f"<h3>{html.escape(example.key)}</h3>"
            f'<figure><img alt="prediction" src="{example.predicted_png}"><figcaption>prediction: '
            f"{html.escape(example.predicted_caption)}</figcaption></figure>"
            f'<figure><img alt="ground truth" src="{example.reference_png}"><figcaption>ground truth: '
            f"{html.escape(example.reference_caption)}</figcaption></figure>")
    if not examples:
        body.append('<p class="missing">No predictions in this run.</p>')
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>")


def write_results_page(profile: Profile, root: Path, out: Path | None = None, mlflow: Any | None = None,
                       examples: int = 3, dagster_url: str = DAGSTER_URL) -> Path:
    """The page of the run under `root` (a profile's runs root), written to `out` (default reports/results.html)."""
    from orchestration.resources import PipelinePaths

    paths = PipelinePaths(root=str(root))
    tables = benchmark_tables(profile, paths.path("metrics"), RunLinks(mlflow, dagster_url))
    best = _example_variant(profile, paths.path("predictions"))
    pictures = grounded_examples(paths.path("iground"), paths.path("predictions", f"{best}.json"),
                                 str(profile.get("inference.split")), examples) if best and examples else []
    labels = {size: f"{size} pre-training + FT" for size in profile.sizes} | {FT_ONLY: "FT-only"}
    page = render_page(f"GROVE results: profile '{profile.name}'", tables, labels,
                       paths.path("reports", "data_scaling.png"),
                       annotation_html(paths.path("annotation"), paths.path("reports", "annotation_quality.json")), pictures)
    out = Path(out) if out is not None else paths.path("reports", PAGE)
    atomic_write_text(out, page)
    return out


def _example_variant(profile: Profile, predictions_dir: Path) -> str | None:
    """The model whose captions the page shows: the largest pre-training size with predictions, else FT-only."""
    for variant in [*reversed(profile.sizes), FT_ONLY]:
        if (predictions_dir / f"{variant}.json").exists():
            return variant
    return None
