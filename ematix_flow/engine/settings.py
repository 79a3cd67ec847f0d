"""DataFusion settings every ematix-flow context uses (see DESIGN.md: facts and traps)."""

from __future__ import annotations

from datafusion import RuntimeEnvBuilder, SessionConfig, SessionContext

#: Settings for every context that EXECUTES a task. Work stealing between file-scan partitions
#: makes one partition of a scan return all rows (silently wrong results) when a task runs a share.
EXECUTION_SETTINGS: dict[str, str] = {
    "datafusion.execution.enable_file_stream_work_stealing": "false",
}

#: Settings for the context that PLANS a distributed query.
PLANNING_SETTINGS: dict[str, str] = {
    **EXECUTION_SETTINGS,
    # deterministic partition contents: no round-robin repartitioning
    "datafusion.optimizer.enable_round_robin_repartition": "false",
    # uncorrelated scalar subqueries as joins: a ScalarSubqueryExpr cannot be decoded away from its exec
    # (what cannot be a join is planned again with the exec, coordinator_lib/subqueries.py)
    "datafusion.optimizer.enable_physical_uncorrelated_scalar_subquery": "false",
    # InterleaveExec asserts at decode that its children are hash-partitioned; a spliced scan is not
    "datafusion.optimizer.prefer_existing_union": "true",
    # DataFusion 55 race: the dynamic filter a min / max pushes into the scan can prune rows another
    # aggregate's FILTER (WHERE ..) needs (tests/fuzz/cases/aggregate-dynamic-filter.json)
    "datafusion.optimizer.enable_aggregate_dynamic_filter_pushdown": "false",
    # DataFusion 55: a hash join's dynamic filter can drop probe rows of -0.0 that equal a build key
    # 0.0 (tests/fuzz/cases/join-dynamic-filter.json); the mesh's in-process runs would inherit it
    "datafusion.optimizer.enable_join_dynamic_filter_pushdown": "false",
    # split a single file into byte ranges even when it is small, so one-file tables still fan out
    "datafusion.optimizer.repartition_file_min_size": str(256 * 1024),
}


def execution_context(
    target_partitions: int | None = None,
    memory_limit: int | None = None,
    spill_dir: str | None = None,
    allow_udfs: bool = True,
) -> SessionContext:
    """A context safe for running task slices.

    ``memory_limit`` (bytes) caps DataFusion's memory pool; operators that can spill (sorts,
    aggregations, joins in part) spill to ``spill_dir``, the others fail with "Resources exhausted".
    ``allow_udfs=False`` makes decoding refuse a plan that carries a pickled Python UDF (before
    unpickling it): how a worker that does not trust every submitter runs.
    """
    config = SessionConfig()
    if target_partitions:
        config = config.with_target_partitions(target_partitions)
    for key, value in EXECUTION_SETTINGS.items():
        config = config.set(key, value)
    if memory_limit is None:
        ctx = SessionContext(config)
    else:
        runtime = RuntimeEnvBuilder().with_fair_spill_pool(memory_limit)
        runtime = (
            runtime.with_disk_manager_specified(spill_dir) if spill_dir else runtime.with_disk_manager_os()
        )
        ctx = SessionContext(config, runtime)
    return ctx.with_python_udf_inlining(enabled=allow_udfs)


def planning_context(partitions: int, settings: dict[str, str] | None = None) -> SessionContext:
    """A context that plans for the mesh: ``partitions`` is the shuffle width; ``settings`` override."""
    config = SessionConfig().with_target_partitions(partitions).with_information_schema(True)
    for key, value in {**PLANNING_SETTINGS, **(settings or {})}.items():
        config = config.set(key, value)
    return SessionContext(config)
