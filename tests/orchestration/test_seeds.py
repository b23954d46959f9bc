"""Several seeds of a profile: the lineage once per seed (the profile's seed in its own runs root, the others in
`<root>-seed<N>` with their params file), each metric's mean and spread, and per-seed marks of every paired
difference; `grove demo --seed ... --seed ...` prints them."""

import statistics

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from orchestration.cli import app
from orchestration.profile import read_params
from orchestration.seeds import print_summary, profile_seeds, run_seeds, seed_root, seeded_profile, summarize


def test_profile_seeds_default_to_the_seed_and_put_it_first(tiny_profile, tmp_path):
    assert profile_seeds(tiny_profile) == [tiny_profile.seed]
    params = read_params(tiny_profile.params_file)
    params["tiny"]["seeds"] = [7, tiny_profile.seed, 1, 7]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    from orchestration.profile import load_profile

    assert profile_seeds(load_profile("tiny", tmp_path / "params.yaml")) == [tiny_profile.seed, 7, 1]
    params["tiny"]["seeds"] = []
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ValueError, match="empty 'seeds'"):
        profile_seeds(load_profile("tiny", tmp_path / "params.yaml"))


def test_a_seeded_profile_changes_the_seed_only(tiny_profile, tmp_path):
    root = seed_root(tiny_profile, 5, tmp_path / "runs")
    assert root == tmp_path / "runs-seed5" and seed_root(tiny_profile, tiny_profile.seed, tmp_path / "runs") == tmp_path / "runs"
    seeded = seeded_profile(tiny_profile, 5, root)
    assert seeded.seed == 5 and seeded.params_file == root / "params.yaml"
    assert {k: v for k, v in seeded.params.items() if k != "seed"} == {k: v for k, v in tiny_profile.params.items() if k != "seed"}
    assert seeded_profile(tiny_profile, tiny_profile.seed, root) is tiny_profile


@pytest.fixture(scope="module")
def two_seeds(tiny_demo, tiny_profile):
    _, root = tiny_demo
    other = tiny_profile.seed + 1
    return run_seeds(tiny_profile, [tiny_profile.seed, other], root=root), root, other


def test_each_seed_runs_the_lineage_in_its_own_root(two_seeds, tiny_profile):
    (first, second), root, other = two_seeds
    assert first.root == root and first.report.materialised == 0  # the profile's seed: the session's lineage, reused
    assert second.root == root.parent / f"{root.name}-seed{other}" and second.report.materialised > 0
    assert second.profile.seed == other and read_params(second.root / "params.yaml")["tiny"]["seed"] == other
    clips = [(r.root / "benchmarks" / "iground" / "clips.parquet").read_bytes() for r in (first, second)]
    assert clips[0] != clips[1]  # another seed renders other videos and captions


def test_summary_gives_mean_spread_and_a_mark_per_seed(two_seeds):
    results, _, _ = two_seeds
    summary = summarize(results, "official")
    assert summary.seeds == [r.profile.seed for r in results]
    for i, (label, cells) in enumerate(summary.spread):
        assert label == results[0].rows[i].label
        for metric, (mean, sd, low, high) in cells.items():
            values = [100 * r.rows[i].metrics[metric] for r in results]
            assert mean == pytest.approx(statistics.fmean(values)) and sd == pytest.approx(statistics.stdev(values))
            assert (low, high) == (min(values), max(values))
    (name, marks), = summary.marks  # the tiny profile has one size: its difference from FT-only
    assert name == f"{results[0].rows[0].label} − FT-only"
    for metric, text in marks.items():
        expected = ""
        for result in results:
            cell = dict(result.differences["official"])[results[0].rows[0].label][metric]
            expected += "+" if cell.low > 0 else "-" if cell.high < 0 else "."
        assert text == expected, metric
    console = Console(record=True, width=200)
    print_summary(summary, console)
    text = console.export_text()
    assert f"across seeds {summary.seeds[0]}, {summary.seeds[1]}" in text and "one mark per seed" in text


def test_grove_demo_with_seeds_prints_the_summary(two_seeds, tiny_profile, monkeypatch):
    results, root, other = two_seeds
    monkeypatch.setenv("GROVE_RUNS", str(root))
    monkeypatch.setenv("GROVE_PARAMS", str(tiny_profile.params_file))
    output = CliRunner().invoke(app, ["demo", "--profile", "tiny", "--seed", str(tiny_profile.seed), "--seed", str(other)])
    assert output.exit_code == 0, output.output
    assert f"seed {other}:" in output.output and "across seeds" in output.output and "one mark per seed" in output.output
    assert "0 asset partitions materialised" in output.output  # both seeds were up to date
