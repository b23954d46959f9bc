"""The lineage's automation condition: a parent counts when its data version changes, and only after its
blocking checks pass (evaluated with Dagster's own `evaluate_automation_conditions`)."""

import dagster as dg

from orchestration.defs.common import on_changed_inputs


def test_a_child_reruns_on_a_new_parent_version_not_on_the_same_one_nor_past_a_failed_blocking_check():
    parent_output = {"version": "1", "check": True}

    @dg.asset(automation_condition=on_changed_inputs())
    def parent() -> dg.MaterializeResult:
        return dg.MaterializeResult(data_version=dg.DataVersion(parent_output["version"]))

    @dg.asset_check(asset=parent, blocking=True)
    def parent_ok() -> dg.AssetCheckResult:
        return dg.AssetCheckResult(passed=parent_output["check"])

    @dg.asset(deps=[parent], automation_condition=on_changed_inputs())
    def child() -> dg.MaterializeResult:
        return dg.MaterializeResult(data_version=dg.DataVersion("child"))

    defs = dg.Definitions(assets=[parent, child], asset_checks=[parent_ok])
    instance = dg.DagsterInstance.ephemeral()
    cursor = dg.evaluate_automation_conditions(defs=defs, instance=instance).cursor

    def tick() -> set[str]:
        nonlocal cursor
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
        cursor = result.cursor
        return {name for name in ("parent", "child") if result.get_num_requested(dg.AssetKey(name))}

    def run_parent(version: str, check: bool = True) -> None:
        parent_output.update(version=version, check=check)
        dg.materialize([parent, parent_ok], instance=instance, raise_on_error=False)

    dg.materialize([parent, parent_ok, child], instance=instance)
    assert tick() == set()
    run_parent("1")  # re-run with the same output (the same DVC hash): nothing downstream
    assert tick() == set()
    run_parent("2")
    assert tick() == {"child"}
    dg.materialize([child], instance=instance)
    assert tick() == set()
    run_parent("3", check=False)  # new output, but its blocking check failed
    assert tick() == set()
