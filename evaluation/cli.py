"""`grove eval ...`: score predictions against ground truth in the official layouts.

Each command prints a summary (or, with --json, one JSON object), records the run in a DuckDB metric
database when given --db and --checkpoint, and exits 0 when at least one item was scored. Items with
bad input are named and counted in the report. Exit statuses: 1 nothing could be scored; 2 an input
file cannot be read (or a bad option); 3 a Java scorer failed; 4 (`iground`) some GT clips have
predictions that cannot be read or aligned and `--skip-bad-clips` was not given (the report is still
printed, with those clips listed and counted); 5 an unexpected internal error (a bug: the message
names the exception). `iground` reports the official and the corrected protocol side by side, every
metric with its bootstrap interval over the scored clips and the per-clip statistics it was drawn from
(evaluation/bootstrap.py), so that two models' JSON files can be compared pairwise later.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any, Callable, Optional

import click
import typer

from evaluation.report import EvalReport

log = logging.getLogger(__name__)

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Evaluate predictions: iGround, VidSTG, ActivityNet-Entities, temporal and peer benchmarks.")

JSON_OPTION = typer.Option(False, "--json", help="Print the result as one JSON object.")
DB_OPTION = typer.Option(None, "--db", help="DuckDB metric database to append this run to (needs --checkpoint).")
CHECKPOINT_OPTION = typer.Option(None, "--checkpoint", help="Model or checkpoint id the predictions come from.")
PRETRAIN_OPTION = typer.Option(None, "--pretrain-size", help="Pre-training set size of the checkpoint (for scaling curves).")
RESAMPLES_OPTION = typer.Option(1000, "--bootstrap-resamples", help=(
    "Bootstrap resamples of the scored clips for each metric's interval (0: no intervals)."))
SEED_OPTION = typer.Option(0, "--bootstrap-seed", help="Seed of the bootstrap resamples (recorded with every interval).")
CONFIDENCE_OPTION = typer.Option(0.95, "--confidence", help="Two-sided confidence of the percentile intervals.")


def _read_json_or_pickle(path: Path) -> Any:
    if path.suffix.lower() in (".pkl", ".pickle"):
        from grove.data.safe_pickle import safe_load

        return safe_load(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc


def _log_progress(stage: str, done: int, total: int) -> None:
    log.info("%s: %d/%d", stage, done, total)


def _finish(report: EvalReport, as_json: bool, db: Optional[Path], checkpoint: Optional[str],
            pretrain_size: Optional[int], per_item: bool = False, fail_on_errors: bool = False) -> None:
    """Print the report; record it in the metric database unless the command fails. `fail_on_errors`:
    items with bad input (severity "error") make the command fail (status 4) after printing."""
    out = report.to_dict(per_item=per_item)
    bad = report.error_items if fail_on_errors else []
    if db is not None:
        if not checkpoint:
            raise ValueError("--db needs --checkpoint (the id the metrics are recorded under)")
        if not bad and report.num_scored:
            from evaluation.tables import record_report

            out["recorded"] = record_report(db, report, checkpoint, pretrain_size)["run_id"]
    if as_json:
        typer.echo(json.dumps(out, default=str))
    else:
        typer.echo("\n".join(report.summary_lines()))
    if report.num_scored == 0:
        typer.echo(f"error: no {report.benchmark} item could be scored (see the problems above)", err=True)
        raise typer.Exit(1)
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        typer.echo(f"error: {len(bad)} of {report.num_items} {report.benchmark} items have predictions that cannot be "
                   f"scored ({shown}); the numbers above leave them out and were not recorded. Fix them, or pass "
                   "--skip-bad-clips to accept the reduced set.", err=True)
        raise typer.Exit(4)


def _guarded(command: Callable[..., None]) -> Callable[..., None]:
    """Turn input and Java failures into one clear line and an exit status instead of a traceback."""
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        from evaluation.captions import JavaError

        try:
            command(*args, **kwargs)
        except (typer.Exit, click.exceptions.ClickException, click.exceptions.Abort):
            raise  # click's own exits and usage errors (Exit is a RuntimeError): let them through untouched
        except JavaError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(3) from None
        except (FileNotFoundError, ValueError, KeyError, RuntimeError, OSError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        except Exception as exc:  # a bug: still one clear line and a status, never a bare traceback
            log.debug("internal error", exc_info=True)
            typer.echo(f"error: internal error ({type(exc).__name__}: {exc}); please report it with the input that "
                       "caused it", err=True)
            raise typer.Exit(5) from None
    return wrapper


@app.command("iground")
@_guarded
def iground(
    gt: Path = typer.Option(..., "--gt", help="Raw GT: official iGround pickle (or per-clip pickle folder), or a dataset folder."),
    pred: Path = typer.Option(..., "--pred", help="Predictions in GROVE's layout (.pkl or .json)."),
    split: str = typer.Option("test", "--split", help="Split to evaluate (filters a dataset folder; labels a pickle)."),
    preset: str = typer.Option("official", "--protocol", help="official (reproduces GROVE's numbers) or corrected."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help=(
        "Re-filter boxes at this objectness threshold (default: none, the records as written, filtered at inference). "
        "All-query records (with all_bboxes) take any value, 0 keeps every box; kept-only records (the official "
        "layout) can only lose boxes: a threshold that a dropped query would pass is an error for that clip.")),
    pairing: Optional[str] = typer.Option(None, "--pairing", help="official | by_query"),
    ap_scores: Optional[str] = typer.Option(None, "--ap-scores", help="constant | objectness"),
    recall_boxes: Optional[str] = typer.Option(None, "--recall-boxes", help="xywh_as_xyxy | xyxy"),
    empty_gt_videos: Optional[str] = typer.Option(None, "--empty-gt-videos", help="include | exclude"),
    missing: Optional[str] = typer.Option(None, "--missing", help="skip (official, reported) | zero: clips without a prediction or with an empty one"),
    embedding_model: str = typer.Option("auto", "--embedding-model", help=(
        "auto | bert-base-uncased | all-MiniLM-L6-v2 | PATH: a local BERT-style model folder (e.g. a copy of "
        "bert-base-uncased), pooled as the official get_bert_embedding (mean of all tokens, cosine).")),
    skip_bad_clips: bool = typer.Option(False, "--skip-bad-clips", help=(
        "Score the other clips when some predictions cannot be read or aligned (they are still listed and "
        "counted); without it such clips make the command exit with status 4.")),
    captions: bool = typer.Option(True, "--captions/--no-captions", help="Caption metrics (need Java)."),
    recall: bool = typer.Option(True, "--recall/--no-recall", help="Recall (needs the phrase-embedding model)."),
    other_protocol: str = typer.Option("auto", "--other-protocol", help=(
        "Also score the predictions under this preset, side by side in the report (auto: the preset not chosen by "
        "--protocol; none: only one protocol). --threshold applies to both; the other options to --protocol's only.")),
    per_clip: bool = typer.Option(False, "--per-clip", help="Include per-clip metrics in the JSON output."),
    resamples: int = RESAMPLES_OPTION, seed: int = SEED_OPTION, confidence: float = CONFIDENCE_OPTION,
    as_json: bool = JSON_OPTION, db: Optional[Path] = DB_OPTION, checkpoint: Optional[str] = CHECKPOINT_OPTION,
    pretrain_size: Optional[int] = PRETRAIN_OPTION,
) -> None:
    """iGround grounded captioning: METEOR, CIDEr (and BLEU, ROUGE-L), AP50, Recall, each with a bootstrap
    interval over the test clips, under the official protocol and the corrected one side by side."""
    from evaluation.bootstrap import BootstrapSettings, add_intervals
    from evaluation.iground import evaluate_iground_files, protocols_side_by_side

    overrides = {"pairing": pairing, "ap_scores": ap_scores, "recall_boxes": recall_boxes,
                 "empty_gt_videos": empty_gt_videos, "missing_predictions": missing}
    protocols = protocols_side_by_side(preset, other_protocol, threshold, **{k: v for k, v in overrides.items() if v is not None})
    bootstrap = BootstrapSettings(resamples, seed, confidence)
    report = evaluate_iground_files(gt, pred, split, protocols, embedding_model, captions, recall, _log_progress)
    add_intervals(report, bootstrap)
    if skip_bad_clips:  # recorded only when given, so the report stays what the evaluation asset writes
        report.protocol["skip_bad_clips"] = True
    _finish(report, as_json, db, checkpoint, pretrain_size, per_clip, fail_on_errors=not skip_bad_clips)


@app.command("vidstg")
@_guarded
def vidstg(
    gt: Path = typer.Option(..., "--gt", help="TubeDETR-style VidSTG annotation JSON (e.g. test.json)."),
    pred: Path = typer.Option(..., "--pred", help="{video_id: {frame_ids, boxes, sted?}} as JSON or pickle."),
    protocol: str = typer.Option("grove", "--protocol", help="grove (msIoU) | tubedetr (m_tIoU, m_vIoU, vIoU@R)."),
    split: str = typer.Option("test", "--split"),
    as_json: bool = JSON_OPTION, db: Optional[Path] = DB_OPTION, checkpoint: Optional[str] = CHECKPOINT_OPTION,
    pretrain_size: Optional[int] = PRETRAIN_OPTION,
) -> None:
    """VidSTG spatio-temporal grounding, per sentence type."""
    from evaluation.vidstg import evaluate_vidstg, load_vidstg_gt

    predictions = _read_json_or_pickle(pred)
    if not isinstance(predictions, dict):
        raise ValueError(f"{pred}: expected a dict keyed by video_id")
    report = evaluate_vidstg(load_vidstg_gt(gt), predictions, protocol, split)  # type: ignore[arg-type]
    _finish(report, as_json, db, checkpoint, pretrain_size)


@app.command("anet")
@_guarded
def anet(
    reference: Path = typer.Option(..., "--reference", help="anet_entities_cleaned_class_thresh50_trainval.json"),
    split_file: Path = typer.Option(..., "--split-file", help="split_ids_anet_entities.json"),
    submission: Path = typer.Option(..., "--submission", help="Submission JSON ({'results': {vid: {seg: ...}}})."),
    split: list[str] = typer.Option(["validation"], "--split", help="Split(s) to evaluate."),
    mode: str = typer.Option("gen", "--mode", help="gen (F1_all, F1_loc, per-sentence) | GT (Acc)."),
    corenlp_url: Optional[str] = typer.Option(None, "--corenlp-url", help="Lemmatise with this Stanford CoreNLP server instead of spaCy."),
    as_json: bool = JSON_OPTION, db: Optional[Path] = DB_OPTION, checkpoint: Optional[str] = CHECKPOINT_OPTION,
    pretrain_size: Optional[int] = PRETRAIN_OPTION,
) -> None:
    """ActivityNet-Entities grounding, exactly as the official script."""
    from evaluation.anet_entities import CoreNLPLemmatizer, evaluate_anet_entities, load_reference

    results = _read_json_or_pickle(submission)
    if not isinstance(results, dict) or "results" not in results:
        raise ValueError(f"{submission}: a submission is a JSON object with a 'results' field")
    lemmatizer = CoreNLPLemmatizer(corenlp_url) if corenlp_url else None
    report = evaluate_anet_entities(load_reference(reference, split_file, split), results["results"], mode,
                                    lemmatizer, split="+".join(split))
    _finish(report, as_json, db, checkpoint, pretrain_size)


TASKS = ("grounding", "nextgqa", "dense", "soda", "recap", "pointing")


@app.command("temporal")
@_guarded
def temporal(
    task: str = typer.Argument(..., help="grounding | nextgqa | dense | soda | recap | pointing"),
    gt: list[Path] = typer.Option(..., "--gt", help="Ground truth (several --gt for dense/soda reference files)."),
    pred: Path = typer.Option(..., "--pred", help="Predictions (JSON or pickle)."),
    answers: Optional[Path] = typer.Option(None, "--answers", help="nextgqa: QA predictions {vid_qid: {answer, prediction}}."),
    missing: Optional[str] = typer.Option(None, "--missing", help="dense/soda: zero | skip for unpredicted videos."),
    split: str = typer.Option("test", "--split"),
    as_json: bool = JSON_OPTION, db: Optional[Path] = DB_OPTION, checkpoint: Optional[str] = CHECKPOINT_OPTION,
    pretrain_size: Optional[int] = PRETRAIN_OPTION,
) -> None:
    """Temporal grounding (R1@m, mIoU), NExT-GQA, dense captioning (METEOR, SODA_c), Video ReCap, pointing.

    Inputs: grounding {query: {timestamp, duration}} vs {query: [s, e] or generated text};
    nextgqa gsub_*.json vs {vid_qid: [s, e]}; dense/soda ActivityNet Captions references vs
    {"results": {vid: [{timestamp, sentence}]}}; recap {level: {id: caption}} on both sides;
    pointing {clip: [box or null per frame]} on both sides.
    """
    from evaluation import dense_captioning, hierarchical, pointing
    from evaluation import temporal as temporal_metrics

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
    truth = [_read_json_or_pickle(p) for p in gt]
    predictions = _read_json_or_pickle(pred)
    if task == "grounding":
        report = temporal_metrics.grounding_metrics(truth[0], predictions, split=split)
    elif task == "nextgqa":
        qa = _read_json_or_pickle(answers) if answers else None
        report = temporal_metrics.nextgqa_metrics(truth[0], predictions, qa, split)
    elif task in ("dense", "soda"):
        results = predictions.get("results", predictions) if isinstance(predictions, dict) else predictions
        if task == "dense":
            report = dense_captioning.dense_captioning_meteor(results, truth, missing_videos=missing or "zero", split=split)
        else:
            report = dense_captioning.soda_c(results, truth, missing_videos=missing or "skip", split=split)
    elif task == "recap":
        from evaluation.captions import MeteorScorer

        with MeteorScorer() as meteor:
            levels = [hierarchical.recap_level_metrics(truth[0][level], predictions.get(level, {}), level, meteor, split)
                      for level in truth[0]]
        metrics = {f"{r.protocol['level']}_{name}": value for r in levels for name, value in r.metrics.items()}
        report = EvalReport("recap", split, metrics, {"levels": [r.protocol for r in levels]},
                            num_items=sum(r.num_items for r in levels), num_scored=sum(r.num_scored for r in levels),
                            problems=[p for r in levels for p in r.problems])
    else:
        report = pointing.pointing_accuracy(truth[0], predictions, split=split)
    _finish(report, as_json, db, checkpoint, pretrain_size)
