"""Several seeds of a profile (`seeds:` in params.yaml, or `grove demo --seed N --seed M ...`): the whole lineage
once per seed, and what holds across them.

Each seed is the profile with its `seed` replaced: the synthetic videos, the annotation, the subsets, the
training and the inference all change with it. The profile's own seed runs into the profile's runs root (so
`make demo`'s outputs are reused); every other seed into `<root>-seed<N>`, with the params file it ran
(`params.yaml`, the profile's file with that one value changed) beside its outputs. Across the seeds:
- each metric's mean and spread per row (sample standard deviation, min and max over the seeds);
- for every paired difference (each pre-training size minus FT-only, each size minus every smaller size),
  one mark per seed, in the order of the seeds: `+` the interval lies above 0, `-` below 0, `.` it includes 0.
  A finding holds at the demo's scale when every seed marks it the same way.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from grove.io import atomic_write_text
from orchestration.profile import Profile, load_profile, read_params, runs_root


def profile_seeds(profile: Profile) -> list[int]:
    """The profile's `seeds` (default: its one `seed`), each once, the profile's seed first when listed."""
    seeds = [int(s) for s in profile.get("seeds", [profile.seed])]
    if not seeds:
        raise ValueError(f"{profile.params_file}: profile '{profile.name}' has an empty 'seeds' list")
    return list(dict.fromkeys(sorted(seeds, key=lambda s: s != profile.seed)))


def seed_root(profile: Profile, seed: int, root: Path | None = None) -> Path:
    """The runs root of one seed: the profile's root for its own seed, `<root>-seed<N>` for the others."""
    root = Path(root) if root is not None else runs_root(profile)
    return root if seed == profile.seed else root.parent / f"{root.name}-seed{seed}"


def seeded_profile(profile: Profile, seed: int, root: Path) -> Profile:
    """The profile with `seed` replaced, read from a params file written into `root` (the profile itself for
    its own seed). Every process of the lineage reads that file, so the seed reaches all of them."""
    if seed == profile.seed:
        return profile
    params = read_params(profile.params_file)
    params[profile.name] = {**params[profile.name], "seed": int(seed)}
    params_file = root / "params.yaml"
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(params_file, yaml.safe_dump(params, sort_keys=False))
    return load_profile(profile.name, params_file)


def run_seeds(profile: Profile, seeds: Sequence[int], console: Any = None, root: Path | None = None) -> list[Any]:
    """`run_demo` once per seed (see the module docstring); the DemoResults in the order of `seeds`."""
    from orchestration.demo import run_demo

    results = []
    for index, seed in enumerate(seeds):
        where = seed_root(profile, seed, root)
        if console is not None:
            console.print(f"seed {seed} ({index + 1}/{len(seeds)}): runs root {where}", soft_wrap=True, markup=False)
        results.append(run_demo(seeded_profile(profile, seed, where), console, root=where))
    return results


@dataclass
class SeedSummary:
    """What holds across seeds under one protocol (metric values x100)."""

    seeds: list[int]
    protocol: str
    metrics: list[str]
    spread: list[tuple[str, dict[str, tuple[float, float, float, float]]]]  # row -> metric -> (mean, sd, min, max)
    marks: list[tuple[str, dict[str, str]]]  # "a − b" -> metric -> one mark per seed


def _mark(low: float | None, high: float | None) -> str:
    if low is not None and low > 0:
        return "+"
    if high is not None and high < 0:
        return "-"
    return "."


def _spread(results: Sequence[Any], protocol: str) -> list[tuple[str, dict[str, tuple[float, float, float, float]]]]:
    """Per row and metric (x100): mean, sample sd, min and max over the seeds."""
    spread = []
    for i, row in enumerate(results[0].rows):
        cells = {}
        for metric in results[0].metrics:
            values = [100.0 * r.rows[i].under(protocol).metrics[metric] for r in results if metric in r.rows[i].under(protocol).metrics]
            if values:
                sd = statistics.stdev(values) if len(values) > 1 else 0.0
                cells[metric] = (statistics.fmean(values), sd, min(values), max(values))
        spread.append((row.label, cells))
    return spread


def _marks(results: Sequence[Any], protocol: str) -> list[tuple[str, dict[str, str]]]:
    """Every size minus FT-only and every size minus each smaller size: one mark per seed and metric."""
    from orchestration.compare import paired_difference_cells
    from orchestration.defs.common import FT_ONLY
    from orchestration.defs.evaluation.assets import variant_label, variant_reports
    from orchestration.resources import PipelinePaths

    metrics, labels = results[0].metrics, [row.label for row in results[0].rows]
    ft_only = variant_label(FT_ONLY, None)
    sizes = [label for label in labels if label != ft_only]
    pairs = [(size, ft_only) for size in sizes] + [(larger, smaller) for i, smaller in enumerate(sizes) for larger in sizes[i + 1:]]
    marks: dict[str, dict[str, str]] = {f"{a} − {b}": {m: "" for m in metrics} for a, b in pairs}
    for result in results:
        reports = variant_reports(result.profile, PipelinePaths(root=str(result.root)))
        for baseline in sorted({b for _, b in pairs}, key=labels.index):
            for label, cells in paired_difference_cells(reports, baseline, metrics, protocol, scale=100.0):
                if (label, baseline) in pairs:
                    for metric in metrics:
                        cell = cells.get(metric)
                        marks[f"{label} − {baseline}"][metric] += _mark(cell.low, cell.high) if cell is not None else "?"
    return list(marks.items())


def summarize(results: Sequence[Any], protocol: str = "official") -> SeedSummary:
    """Mean and spread of every row's metrics, and the per-seed marks of every paired difference."""
    return SeedSummary([r.profile.seed for r in results], protocol, list(results[0].metrics),
                       _spread(results, protocol), _marks(results, protocol))


def print_summary(summary: SeedSummary, console: Any) -> None:
    from orchestration.report import metric_table

    seeds = ", ".join(str(s) for s in summary.seeds)
    console.print(metric_table(
        [(label, {m: f"{mean:.2f} ± {sd:.2f} ({low:.2f}-{high:.2f})" for m, (mean, sd, low, high) in cells.items()})
         for label, cells in summary.spread],
        summary.metrics, f"iGround across seeds {seeds} (x100), {summary.protocol} protocol: mean ± sample sd (min-max)"))
    console.print(metric_table(
        summary.marks, summary.metrics, f"paired differences, one mark per seed ({seeds}), {summary.protocol} protocol",
        label="difference", caption="+: the interval lies above 0, -: below 0, .: it includes 0 (does not separate)"))
