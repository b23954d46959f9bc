"""The process the fault tests start (and kill): materialises steps of the tiny lineage on one runs root.

    python -m tests.faults.runner PARAMS_FILE ROOT SPEC_JSON

SPEC_JSON: {"steps": [{"assets": [asset keys], "partition": null | "<key>" | "*shards*"}, ...],
"dvc_repo": null | "<folder holding dvc.yaml>", "dvc_executable": "<path>", "mark_steps": bool, "recover": bool (default true)}.

A step with partition "*shards*" runs once per planned annotation shard, after adding the shards as
partitions. With mark_steps, an empty file ROOT/_fault_steps/<step index>-<partition> is written
before each materialisation: the step boundaries in the write log. With recover, like `grove demo`,
it first marks runs left STARTED by a killed process as failed (freeing their pool slots); its runs
are tagged as lineage runs so that the next one can do the same. Exits 0 when every step
materialised; otherwise prints the error and its causes on one line (`FAILED: ...`) and exits 1.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

SHARDS = "*shards*"


def materialize_steps(params_file: Path, root: Path, spec: dict[str, Any]) -> None:
    import dagster as dg

    from orchestration.definitions import build_definitions
    from orchestration.defs.annotation.partitions import add_shards, missing_shards, planned_shards
    from orchestration.demo import prepare_home
    from orchestration.lineage import quiet_preview_warnings, recover_interrupted_runs
    from orchestration.profile import load_profile
    from orchestration.resources import LAYOUT, DvcResource, PipelinePaths

    quiet_preview_warnings()
    profile = load_profile("faults", params_file)
    home = prepare_home(root / LAYOUT["dagster_home"], gpu_slots=1)
    dvc = (DvcResource(repo=spec["dvc_repo"], executable=spec.get("dvc_executable", ""), enabled=True) if spec.get("dvc_repo")
           else DvcResource(enabled=False))
    defs = build_definitions(profile, root, {"dvc": dvc})
    paths = PipelinePaths(root=str(root))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        if spec.get("recover", True):  # off when another runner works on the same root at the same time
            recover_interrupted_runs(instance)
        for index, step in enumerate(spec["steps"]):
            partitions: list[str | None] = [step.get("partition")]
            if step.get("partition") == SHARDS:
                partitions = list(planned_shards(profile, paths))
                add_shards(instance, missing_shards(instance, partitions))
            for partition in partitions:
                _materialize_one(dg, defs, instance, root, spec, index, step, partition)


def _materialize_one(dg: Any, defs: Any, instance: Any, root: Path, spec: dict[str, Any], index: int, step: dict[str, Any],
                     partition: str | None) -> None:
    from orchestration.lineage import QUIET_RUN_CONFIG, RUN_TAG

    if spec.get("mark_steps"):
        marks = root / "_fault_steps"
        marks.mkdir(exist_ok=True)
        (marks / f"{index:02d}-{partition or 'all'}").write_text("")
    started = time.perf_counter()
    dg.materialize(
        list(defs.assets or []) + list(defs.asset_checks or []),
        selection=dg.AssetSelection.assets(*(dg.AssetKey.from_user_string(k) for k in step["assets"])),
        partition_key=partition,
        instance=instance,
        resources=defs.resources,
        tags={RUN_TAG: "true"},
        run_config=QUIET_RUN_CONFIG,
    )
    print(f"step {index} {','.join(step['assets'])} [{partition}]: {time.perf_counter() - started:.1f} s", flush=True)


def _chain(exc: BaseException) -> list[str]:
    """The exception and the ones it was raised from, each as `Type: message`."""
    seen: list[str] = []
    current: BaseException | None = exc
    while current is not None and len(seen) < 10:
        seen.append(f"{type(current).__name__}: {current}")
        current = current.__cause__ or current.__context__
    return seen


def main(argv: list[str]) -> int:
    params_file, root, spec = Path(argv[0]), Path(argv[1]), json.loads(argv[2])
    try:
        materialize_steps(params_file, root, spec)
    except Exception as exc:  # the test reads this line: the error and its causes, as a user would see them
        print(f"FAILED: {' <- '.join(_chain(exc))}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
