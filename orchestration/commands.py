"""`grove demo`, `grove compare`, `grove report`, and `grove pipeline ...` (the lineage steps that belong to the
orchestration layer, so that DVC's stages can run them without Dagster)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

pipeline_app = typer.Typer(no_args_is_help=True, add_completion=False)

PROFILE_OPTION = typer.Option(None, "--profile", help="params.yaml profile (default: $GROVE_PROFILE, else the file's).")
PARAMS_OPTION = typer.Option(None, "--params", help="params.yaml to read (default: $GROVE_PARAMS, else the repository's).")


def _profile(name: Optional[str], params: Optional[Path]):
    from orchestration.profile import load_profile

    return load_profile(name, params)


def _paths(profile):
    from orchestration.profile import runs_root
    from orchestration.resources import PipelinePaths

    return PipelinePaths(root=str(runs_root(profile)))


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def ui_command(
    profile: Optional[str] = PROFILE_OPTION,
    params: Optional[Path] = PARAMS_OPTION,
    host: str = typer.Option("127.0.0.1", "--host", help="Address both UIs listen on (another than 127.0.0.1 exposes them, "
                             "unauthenticated, to the network)."),
    dagster_port: int = typer.Option(3000, "--dagster-port", help="Port of the Dagster UI."),
    mlflow_port: int = typer.Option(5000, "--mlflow-port", help="Port of the MLflow UI."),
    stop_timeout: float = typer.Option(10.0, "--stop-timeout", help="Seconds the servers get to stop after SIGTERM before SIGKILL."),
) -> None:
    """Open the Dagster UI (`dagster dev` on the profile's Dagster home) and the MLflow UI (its store) until Ctrl-C."""
    from orchestration.profile import runs_root
    from orchestration.ui import run_servers, ui_servers

    chosen = _profile(profile, params)
    servers = ui_servers(chosen, runs_root(chosen), host, dagster_port, mlflow_port)
    for server in servers:
        typer.echo(f"{server.name}: {server.url}")
    code = run_servers(servers, stop_timeout)
    if code:
        raise typer.Exit(code)


def demo_command(
    profile: str = typer.Option("demo", "--profile", help="params.yaml profile to run."),
    seeds: Optional[list[int]] = typer.Option(
        None, "--seed", help="Run the lineage once per seed (repeatable; default: the profile's `seeds`, else its `seed`) "
        "and print, across the seeds, each metric's mean and spread and which paired differences separate."),
) -> None:
    """Materialise the whole lineage on the demo profile (reusing what is up to date), then print the metric table."""
    import logging

    from rich.console import Console

    from orchestration.demo import run_demo
    from orchestration.seeds import print_summary, profile_seeds, run_seeds, summarize

    logging.getLogger("alembic").setLevel(logging.WARNING)  # MLflow's schema migrations, once per store
    console = Console()
    chosen = _profile(profile, None)
    seeds = list(dict.fromkeys(seeds)) if seeds else profile_seeds(chosen)
    try:
        results = [run_demo(chosen, console)] if seeds == [chosen.seed] else run_seeds(chosen, seeds, console)
    except Exception as exc:  # the message names the asset, file and problem; the traceback is in the Dagster UI
        _fail(f"{type(exc).__name__}: {exc}")
    for result in results:
        if len(results) > 1:
            console.print(f"seed {result.profile.seed}:", markup=False)
        result.print(console)
    if len(results) > 1:
        for protocol in results[0].rows[0].protocols if results[0].rows else []:
            print_summary(summarize(results, protocol), console)


def compare_command(
    asset: str = typer.Option("iground_metrics", "--asset", help="Asset whose MLflow runs to compare."),
    metric: Optional[list[str]] = typer.Option(None, "--metric", help="Metric column (repeatable; default: the profile's headline metrics)."),
    all_runs: bool = typer.Option(False, "--all", help="Every finished run, not only the newest per partition."),
    scale: Optional[float] = typer.Option(
        None, "--scale", help="Multiply the metric values (default: 100 for iground_metrics, whose runs hold fractions, "
        "as `grove demo` and the paper print them; else 1)."),
    protocol: Optional[str] = typer.Option(None, "--protocol", help=(
        "Which protocol's numbers (e.g. official, corrected; default: the one each run reports first).")),
    baseline: Optional[str] = typer.Option("auto", "--baseline", help=(
        "Partition to subtract from every row, paired on the same resamples of the test clips (auto: ft_only for "
        "iground_metrics; none: no differences).")),
    profile: Optional[str] = PROFILE_OPTION,
    params: Optional[Path] = PARAMS_OPTION,
) -> None:
    """A table of metrics with their intervals across MLflow runs, one row per partition (e.g. iGround metrics by
    pre-training size), and each partition's paired difference from a baseline partition."""
    from rich.console import Console

    from orchestration.compare import (
        PAIRED_ASSETS, comparison_rows, comparison_table, default_scale, difference_table, search_asset_runs)
    from orchestration.defs.common import FT_ONLY
    from orchestration.definitions import experiment_name
    from orchestration.profile import runs_root
    from orchestration.resources import MlflowResource

    chosen = _profile(profile, params)
    root = runs_root(chosen)
    mlflow = MlflowResource.from_env(root, experiment_name(chosen))
    if mlflow.is_local and not (root / "mlflow.db").exists():
        _fail(f"{root / 'mlflow.db'}: no MLflow store yet (run `grove demo` or materialise the lineage first)")
    client = mlflow.client()
    runs = search_asset_runs(client, mlflow.experiment_ids(client), asset)
    if not runs:
        _fail(f"no finished MLflow runs of asset '{asset}' in the experiments '{mlflow.experiment_name('*')}' ({mlflow.store_uri})")
    rows = comparison_rows(runs, order=[*chosen.sizes, FT_ONLY], latest_only=not all_runs)
    columns = metric or list(chosen.get("evaluation.metrics"))
    factor = default_scale(asset) if scale is None else scale
    experiments = sorted({client.get_experiment(row.experiment_id).name for row in rows})
    title = f"{asset}: MLflow experiment {', '.join(experiments)}" + (f" (x{factor:g})" if factor != 1 else "")
    title += f", {protocol} protocol" if protocol else ""
    console = Console()
    console.print(comparison_table(rows, columns, title, scale=factor, preset=protocol))
    if baseline == "auto":
        baseline = FT_ONLY if asset in PAIRED_ASSETS and not all_runs and any(r.partition == FT_ONLY for r in rows) else "none"
    if baseline != "none":
        try:
            console.print(difference_table(client, rows, columns, baseline, protocol, factor))
        except ValueError as exc:
            _fail(str(exc))


def report_command(
    out: Optional[Path] = typer.Option(None, "--out", help="HTML file to write (default: the runs root's reports/results.html)."),
    examples: int = typer.Option(3, "--examples", help="Test clips drawn with their predicted and true boxes."),
    dagster_url: str = typer.Option("http://127.0.0.1:3000", "--dagster-url", help="Where the Dagster UI serves, for the links."),
    profile: Optional[str] = PROFILE_OPTION,
    params: Optional[Path] = PARAMS_OPTION,
) -> None:
    """One self-contained HTML page of a run: benchmark tables with intervals, the scaling plot, the annotation's
    quality, grounded captions beside the ground truth; rows link to their MLflow runs and Dagster assets."""
    from orchestration.definitions import experiment_name
    from orchestration.profile import runs_root
    from orchestration.resources import MlflowResource
    from orchestration.results_page import write_results_page

    chosen = _profile(profile, params)
    root = runs_root(chosen)
    if not (root / "metrics").is_dir():
        _fail(f"{root / 'metrics'}: no metrics yet (run `grove demo` or materialise the lineage first)")
    mlflow = MlflowResource.from_env(root, experiment_name(chosen))
    mlflow = None if mlflow.is_local and not (root / "mlflow.db").exists() else mlflow
    page = write_results_page(chosen, root, out, mlflow=mlflow, examples=examples, dagster_url=dagster_url)
    typer.echo(f"results page: {page}")


@pipeline_app.command("iground")
def iground_command(profile: Optional[str] = PROFILE_OPTION, params: Optional[Path] = PARAMS_OPTION) -> None:
    """The iGround benchmark folder (the `iground_benchmark` asset)."""
    from orchestration.defs.benchmarks.assets import build_iground

    chosen = _profile(profile, params)
    paths = _paths(chosen)
    counts = build_iground(chosen, paths, paths.path("iground"))
    typer.echo(f"iGround benchmark: {paths.path('iground')} ({counts})")


@pipeline_app.command("subset")
def subset_command(
    size: str = typer.Option(..., "--size", help="Pre-training size (a key of scaling.sizes)."),
    profile: Optional[str] = PROFILE_OPTION,
    params: Optional[Path] = PARAMS_OPTION,
) -> None:
    """One nested, seeded pre-training subset (the `pretraining_subset` asset's partition)."""
    from orchestration.defs.scaling.assets import write_profile_subset

    chosen = _profile(profile, params)
    if size not in chosen.sizes:
        _fail(f"{chosen.params_file}: profile '{chosen.name}' has no size '{size}' (sizes: {', '.join(chosen.sizes)})")
    summary = write_profile_subset(chosen, _paths(chosen), size)
    typer.echo(f"subset {size}: {summary.clips} of {summary.pool_clips} pool clips -> {summary.out_dir}")


@pipeline_app.command("curve")
def curve_command(profile: Optional[str] = PROFILE_OPTION, params: Optional[Path] = PARAMS_OPTION) -> None:
    """The data-scaling plot and table from the metrics files (the `data_scaling_curve` asset)."""
    from orchestration.defs.evaluation.assets import write_curve

    chosen = _profile(profile, params)
    plot, table = write_curve(chosen, _paths(chosen))
    typer.echo(f"data-scaling curve: {plot} (table: {table})")


BENCHMARK_OPTION = typer.Option(..., "--benchmark", help="vidstg or anet_entities (a benchmark the profile names).")
VARIANT_OPTION = typer.Option(..., "--variant", help="Fine-tuned variant: a pre-training size or ft_only.")


def _benchmark(chosen, name: str) -> None:
    from orchestration.defs.evaluation.grounding import configured

    if name not in configured(chosen):
        _fail(f"{chosen.params_file}: profile '{chosen.name}' names no benchmark '{name}' (it names: {', '.join(configured(chosen)) or 'none'})")


def _benchmark_variant(profile: Optional[str], params: Optional[Path], benchmark: str, variant: str):
    """(profile, paths) after checking that the profile names the benchmark and the fine-tuned variant."""
    from orchestration.defs.common import FT_ONLY

    chosen = _profile(profile, params)
    _benchmark(chosen, benchmark)
    if variant not in (*chosen.sizes, FT_ONLY):
        _fail(f"{chosen.params_file}: profile '{chosen.name}' has no fine-tuned variant '{variant}' (variants: {', '.join([*chosen.sizes, FT_ONLY])})")
    return chosen, _paths(chosen)


@pipeline_app.command("standin")
def standin_command(benchmark: str = BENCHMARK_OPTION, profile: Optional[str] = PROFILE_OPTION, params: Optional[Path] = PARAMS_OPTION) -> None:
    """The synthetic stand-in of VidSTG or ActivityNet-Entities (the `<benchmark>_synthetic` asset)."""
    from orchestration.defs.benchmarks.assets import uses_standin, write_standin

    chosen = _profile(profile, params)
    _benchmark(chosen, benchmark)
    if not uses_standin(chosen, benchmark):
        _fail(f"{chosen.params_file}: benchmarks.{benchmark} of profile '{chosen.name}' reads official files, not a stand-in")
    summary = write_standin(chosen, _paths(chosen), benchmark)
    typer.echo(f"{benchmark} stand-in: {summary.root} ({summary.clips} clips)")


@pipeline_app.command("benchmark")
def benchmark_command(benchmark: str = BENCHMARK_OPTION, profile: Optional[str] = PROFILE_OPTION, params: Optional[Path] = PARAMS_OPTION) -> None:
    """VidSTG or ActivityNet-Entities in the canonical tables (the `<benchmark>_benchmark` asset)."""
    from orchestration.defs.benchmarks.assets import build_benchmark

    chosen = _profile(profile, params)
    _benchmark(chosen, benchmark)
    paths = _paths(chosen)
    counts = build_benchmark(chosen, paths, benchmark)
    typer.echo(f"{benchmark} benchmark: {paths.path('benchmarks', benchmark)} ({counts})")


@pipeline_app.command("predict-benchmark")
def predict_benchmark_command(
    benchmark: str = BENCHMARK_OPTION, variant: str = VARIANT_OPTION,
    profile: Optional[str] = PROFILE_OPTION, params: Optional[Path] = PARAMS_OPTION,
) -> None:
    """One fine-tuned variant's predictions on VidSTG or ActivityNet-Entities (the `<benchmark>_predictions` partition)."""
    from orchestration.defs.evaluation.grounding import prediction_extras
    from orchestration.pipes_benchmarks import run

    chosen, paths = _benchmark_variant(profile, params, benchmark, variant)
    extras = prediction_extras(chosen, paths, benchmark, variant)
    metadata = run(extras)
    typer.echo(f"{benchmark} predictions of {variant}: {metadata['clips']} clips -> {extras['out']}")


@pipeline_app.command("evaluate-benchmark")
def evaluate_benchmark_command(
    benchmark: str = BENCHMARK_OPTION, variant: str = VARIANT_OPTION,
    profile: Optional[str] = PROFILE_OPTION, params: Optional[Path] = PARAMS_OPTION,
) -> None:
    """One variant's metrics on VidSTG or ActivityNet-Entities, with intervals (the `<benchmark>_metrics` partition's JSON)."""
    from orchestration.defs.evaluation.grounding import metrics_file, write_metrics

    chosen, paths = _benchmark_variant(profile, params, benchmark, variant)
    report, _ = write_metrics(chosen, paths, benchmark, variant)
    shown = ", ".join(f"{name} {value:.4f}" for name, value in report.metrics.items() if isinstance(value, float))
    typer.echo(f"{benchmark} metrics of {variant}: {shown} -> {metrics_file(paths, benchmark, variant)}")
