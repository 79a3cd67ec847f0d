"""Object-store configuration, URLs, URL data roots, store errors, write planning (no process, no server)."""

from __future__ import annotations

from pathlib import Path

import pytest
from datafusion import SessionContext

from ematix_flow.coordinator_lib.planning import node_infos
from ematix_flow.engine import stores
from ematix_flow.engine.settings import planning_context
from ematix_flow.engine.storage import StorageConfig
from ematix_flow.errors import AccessDeniedError, ConfigError, StorageError
from ematix_flow.planner.paths import file_accesses
from ematix_flow.planner.stages import build_graph
from ematix_flow.planner.writes import plan_write, wrap
from ematix_flow.urls import folder_url, is_url, parse_url, urls_in
from ematix_flow.worker.policy import AccessPolicy

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"


def _storage(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> StorageConfig:
    path = tmp_path / "storage.toml"
    path.write_text(text)
    return StorageConfig.load(path, env if env is not None else {"LAKE_SECRET": SECRET})


# ----------------------------------------------------------------------------------------- URLs
def test_urls_are_parsed_and_found_in_sql() -> None:
    loc = parse_url("s3://lake/sales/2026/part-0.parquet")
    assert (loc.scheme, loc.bucket, loc.key, loc.cloud, loc.store_url) == (
        "s3",
        "lake",
        "sales/2026/part-0.parquet",
        "s3",
        "s3://lake",
    )
    assert parse_url("abfss://c@acct.dfs.core.windows.net/x").cloud == "azure"
    assert parse_url("gs://b/k").cloud == "gcs"
    assert is_url("s3://a/b") and is_url("https://h/x.csv")
    assert not is_url("/data/x") and not is_url("file:///data/x") and not is_url("C:/x")
    with pytest.raises(ConfigError, match="no bucket"):
        parse_url("s3:///x")
    assert folder_url("s3://lake/sales") == "s3://lake/sales/"
    assert folder_url("s3://lake/sales.parquet") == "s3://lake/sales.parquet"
    sql = "COPY (SELECT 's3://not/a/read') TO 'S3://lake/out/' ; CREATE EXTERNAL TABLE t LOCATION 'gs://b/t/'"
    assert urls_in(sql) == ["s3://not/a/read", "S3://lake/out/", "gs://b/t/"]


# ---------------------------------------------------------------------------------- --storage
def test_storage_file_resolves_env_references_and_hides_secrets(tmp_path: Path) -> None:
    storage = _storage(
        tmp_path,
        '[s3.lake]\nendpoint = "http://127.0.0.1:9000"\nallow_http = true\n'
        'access_key_id = "AKIAEXAMPLE1234"\nsecret_access_key = "${LAKE_SECRET}"\n'
        '[s3."*"]\nregion = "eu-west-1"\n',
    )
    lake = storage.bucket(parse_url("s3://lake/x"))
    assert lake.options["secret_access_key"] == SECRET and lake.options["allow_http"] is True
    assert storage.bucket(parse_url("s3://other/x")).options == {"region": "eu-west-1"}
    for text in (repr(storage), storage.describe(), repr(lake), lake.describe()):
        assert SECRET not in text and "AKIAEXAMPLE1234" not in text
        assert "endpoint=http://127.0.0.1:9000" in text or "eu-west-1" in text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[s3.lake]\nsecret_access_key = "${NOT_SET_ANYWHERE}"\n',
            r"\$\{NOT_SET_ANYWHERE\}, which is not set",
        ),
        ('[s4.lake]\nregion = "x"\n', r"unknown section \[s4\]"),
        ('[s3.lake]\nsecret = "x"\n', r"has no option 'secret'"),
        ("[s3.lake]\nallow_http = 1\n", r"allow_http must be true or false"),
        ("[s3.lake\n", r"not valid TOML"),
    ],
)
def test_a_bad_storage_file_is_a_one_line_error(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        _storage(tmp_path, text, env={})
    assert "\n" not in str(info.value)


def test_a_missing_storage_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--storage .*nope.toml: cannot read it"):
        StorageConfig.load(tmp_path / "nope.toml")


def test_an_unconfigured_bucket_says_what_to_configure(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SKIP_SIGNATURE", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(StorageError, match=r"no storage configured for s3://lake/: add \[s3\.lake\]"):
        StorageConfig().bucket(parse_url("s3://lake/x"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFROMENV")
    assert StorageConfig().bucket(parse_url("s3://lake/x")).bucket == "*"  # the environment serves it


def test_stores_are_registered_for_the_buckets_a_plan_names(tmp_path: Path) -> None:
    storage = _storage(
        tmp_path, '[s3."*"]\nregion = "us-east-1"\naccess_key_id = "k"\nsecret_access_key = "s"\n'
    )
    ctx = SessionContext()
    assert stores.register(ctx, ["s3://a/x.parquet", "/local/y", "s3://a/z", "s3://b/"], storage) == [
        "s3://a",
        "s3://b",
    ]
    child = SessionContext()
    stores.inherit(child, ctx)
    assert stores._REGISTERED[child].keys() == {"s3://a", "s3://b"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Object Store error: Generic S3 error: ... 403 Forbidden: <Error><Code>InvalidAccessKeyId</Code>",
            "s3://lake/ refused the credentials (InvalidAccessKeyId)",
        ),
        (
            "Parquet error: External: Generic S3 error: GET http://h/k failed - error sending request",
            "s3://lake/ did not answer",
        ),
        ("Object Store error: Generic S3 error: <Code>NoSuchBucket</Code>", "s3://lake/: no such bucket"),
    ],
)
def test_store_failures_become_one_line_storage_errors(text: str, expected: str) -> None:
    failure = stores.storage_failure(text, ["s3://lake"])
    assert failure is not None and expected in str(failure)
    assert stores.storage_failure("Arrow error: Divide by zero error", ["s3://lake"]) is None


# -------------------------------------------------------------------------------- URL data roots
def test_url_data_roots_cover_whole_segments_and_refuse_dot_segments(tmp_path: Path) -> None:
    policy = AccessPolicy.create(data_roots=["s3://lake/data", str(tmp_path)])
    policy.check_path("s3://lake/data/t/part-0.parquet", "table t")
    policy.check_path("s3://lake/data", "table t")
    for outside in (
        "s3://lake/database/t.parquet",
        "s3://lake/other/t.parquet",
        "s3://lake2/data/t.parquet",
        "gs://lake/data/t.parquet",
        "s3://lake/data/../secrets/k",
        "s3://lake/data/%2E%2E/secrets/k",
    ):
        with pytest.raises(AccessDeniedError):
            policy.check_path(outside, "table t")
    local_only = AccessPolicy.create(data_roots=[str(tmp_path)])
    with pytest.raises(AccessDeniedError, match=r"outside this worker's --data-root"):
        local_only.check_path("s3://lake/data/t.parquet", "table t")


# ------------------------------------------------------------------------------- write planning
@pytest.fixture
def copy_ctx(tmp_path: Path) -> SessionContext:
    ctx = planning_context(4)
    values = "SELECT * FROM (VALUES (1, 'a'), (2, 'b')) AS v(x, y)"
    ctx.sql(f"COPY ({values}) TO '{tmp_path}/src/' STORED AS PARQUET").collect()
    ctx.register_parquet("src", str(tmp_path / "src") + "/")
    return ctx


def test_a_copy_is_written_by_the_stage_below_the_sink(copy_ctx: SessionContext, tmp_path: Path) -> None:
    plan = copy_ctx.sql(
        f"COPY (SELECT x, y FROM src WHERE x > 0) TO '{tmp_path}/out/' STORED AS CSV"
    ).execution_plan()
    graph = build_graph(plan.to_bytes(), node_infos(plan))
    write = plan_write(graph)
    assert write is not None and write.url == f"file://{tmp_path}/out/" and not write.one_file
    assert all(n.kind not in ("csv_sink", "parquet_sink") for s in graph.stages for n in s.plan.walk())
    staged = write.staging("q1", 2, 3)
    assert staged == f"file://{tmp_path}/out/_flow_staging-q1/t2-a3/"
    wrapped = wrap(write, graph[write.stage].plan.to_bytes(), staged)
    sinks = [a for a in file_accesses(wrapped) if a.write]
    assert [a.path for a in sinks] == [staged]


def test_a_one_file_target_is_one_task_and_selects_are_not_writes(
    copy_ctx: SessionContext, tmp_path: Path
) -> None:
    plan = copy_ctx.sql(f"COPY (SELECT x FROM src) TO '{tmp_path}/one.parquet'").execution_plan()
    graph = build_graph(plan.to_bytes(), node_infos(plan))
    write = plan_write(graph)
    assert write is not None and write.one_file and graph[write.stage].single_task
    assert write.staging("q", 0, 1).endswith("/_flow_staging-q/t0-a1/one.parquet")
    select = copy_ctx.sql("SELECT x FROM src").execution_plan()
    assert plan_write(build_graph(select.to_bytes(), node_infos(select))) is None
