"""What live MLflow tracking costs a demo-sized training: wall and CPU time without MLflow, with the curve
streamed to the run (orchestration.pipes_mlflow.MetricStream), and with MLflow's system metrics monitor
beside it (at the default 10 s, and at 1 s).

    .venv/bin/python benchmarks/bench_tracking_overhead.py [--out runs/bench_tracking] [--steps 600] [--repeats 2]

Renders (or reuses) the demo synthetic dataset (params.yaml `demo.synthetic`) into OUT/synthetic and
trains the demo profile's fine-tuning (`demo.model.finetune`: batch 1, a log line every 100 steps,
validation at the end) on its train split with `grove.train.train`, in this process, once per variant
and round; rounds interleave the variants so that a machine shared with other work slows them alike.
Each tracked variant logs to a run of its own in OUT/mlflow.db, as the training assets do. Prints the
median wall and CPU seconds of each variant and its ratio to the untracked training (1.00: no cost).
Then the monitor alone, sampling every second for --idle-s seconds beside no training: its CPU seconds
per sample (psutil, MLflow's run-status check and its log_batch), a cost that does not depend on how
busy the machine is (a shared machine blurs the trainings' differences; `--repeats` helps).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from grove.data.synthetic import config_from_params, generate_dataset  # noqa: E402
from grove.train import TrainConfig, train  # noqa: E402
from orchestration.pipes_mlflow import RemoteRun, system_metrics_monitor, tracked_metrics  # noqa: E402
from orchestration.profile import load_profile  # noqa: E402
from orchestration.resources import MlflowResource  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
# variant -> system metrics interval (s); None: no MLflow at all, 0: the curve only
VARIANTS = {"untracked": None, "curve": 0.0, "curve + system 10 s": 10.0, "curve + system 1 s": 1.0}


def one_training(config: TrainConfig, remote: RemoteRun | None) -> tuple[float, float]:
    """(wall s, CPU s of this process: the monitor's thread included) of one training."""
    wall, cpu = time.perf_counter(), time.process_time()
    with tracked_metrics(remote) as report:
        train(config, callback=report)
    return time.perf_counter() - wall, time.process_time() - cpu


def monitor_cost(mlflow: MlflowResource, client: object, experiment: str, seconds: float) -> tuple[int, float]:
    """(samples, CPU s of this process) of the system metrics monitor sampling every second for `seconds`."""
    run = client.create_run(experiment, tags={"mlflow.runName": "monitor alone"})
    remote = RemoteRun(mlflow.tracking_uri, run.info.run_id, system_metrics_interval_s=1.0)
    cpu = time.process_time()
    monitor = system_metrics_monitor(remote)
    time.sleep(seconds)
    monitor.finish()
    cpu = time.process_time() - cpu
    client.set_terminated(run.info.run_id)
    return len(client.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")), cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench_tracking")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the demo fine-tuning's)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds over the variants")
    parser.add_argument("--idle-s", type=float, default=60.0, help="seconds of the monitor alone (0: skip)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    profile = load_profile("demo", REPO / "params.yaml")
    data = args.out / "synthetic"
    generate_dataset(data, config_from_params(REPO / "params.yaml", "demo"))
    settings = dict(profile.get("model.finetune"))
    if args.steps is not None:
        settings.update(max_steps=args.steps, eval_every=args.steps)
    base = TrainConfig(model=profile.get("model.config"), seed=profile.seed, train_data=str(data), out_dir="",
                       train_split="train", val_split="val", resume=False, **settings)
    mlflow = MlflowResource.local(args.out, "bench")
    client = mlflow.client()
    experiment = mlflow.experiment_id("overhead", client)

    # the first training of a process pays for first imports and caches: a short one, not timed, pays it
    one_training(replace(base, out_dir=str(args.out / "warm-up"), max_steps=2, eval_every=2), None)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in VARIANTS}
    for round_ in range(args.repeats):
        for index, (name, interval) in enumerate(VARIANTS.items()):
            config = replace(base, out_dir=str(args.out / f"train-{round_}-{index}"))
            remote = None
            if interval is not None:
                run = client.create_run(experiment, tags={"mlflow.runName": f"{name} #{round_}"})
                remote = RemoteRun(mlflow.tracking_uri, run.info.run_id, system_metrics_interval_s=interval)
            times[name].append(one_training(config, remote))
            if remote is not None:
                client.set_terminated(remote.run_id)
            print(f"round {round_ + 1}/{args.repeats} {name}: {times[name][-1][0]:.1f} s wall, {times[name][-1][1]:.1f} s CPU", flush=True)

    wall0 = statistics.median(w for w, _ in times["untracked"])
    cpu0 = statistics.median(c for _, c in times["untracked"])
    print(f"\ndemo fine-tuning, {base.max_steps} steps, batch {base.batch_size}, median of {args.repeats}:")
    print(f"{'variant':<22} {'wall s':>8} {'ratio':>6} {'CPU s':>8} {'ratio':>6}")
    for name, measured in times.items():
        wall, cpu = statistics.median(w for w, _ in measured), statistics.median(c for _, c in measured)
        print(f"{name:<22} {wall:8.1f} {wall / wall0:6.3f} {cpu:8.1f} {cpu / cpu0:6.3f}")
    if args.idle_s > 0:
        samples, cpu = monitor_cost(mlflow, client, experiment, args.idle_s)
        per_sample = cpu / max(samples, 1)
        print(f"\nsystem metrics monitor alone: {samples} samples in {args.idle_s:.0f} s, {1000 * per_sample:.1f} ms CPU a sample: "
              f"{100 * per_sample / 10:.2f}% of one core at the default 10 s, {100 * per_sample:.2f}% at 1 s")


if __name__ == "__main__":
    main()
