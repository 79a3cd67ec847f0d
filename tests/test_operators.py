"""Every physical operator distributes correctly: each query's answer on a 3-peer mesh equals DataFusion's.

The mesh forces every splittable stage across all 3 peers (``min_task_bytes=1``). The data is TPC-H
SF 0.1 plus small purpose-built tables (NULLs, duplicate keys, an empty table, 300 columns, nested and
temporal types, CSV and JSON files, 2 million rows), each written as several files so that even the
small ones scan as several partitions. The reference is single-process DataFusion over the same files.
One test id per query, named ``family-query``. Subsets run again on a mesh planned with 2 shuffle
partitions (fewer than peers) and on one planned with sort-merge joins.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pyarrow.types as pat
import pytest
from datafusion import SessionConfig, SessionContext
from support import local_mesh

from ematix_flow import Mesh
from ematix_flow.workloads import tpch
from ematix_flow.workloads.compare import compare_tables, query_is_ordered

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

BIG_ROWS = 2_000_000
WIDE_COLUMNS = 300
#: Above this many rows, answers are compared column by column in Arrow (compare_tables is per value).
FAST_COMPARE_ROWS = 100_000


# ---------------------------------------------------------------------------------------------- queries
@dataclass(frozen=True)
class Q:
    """One query and how to check it.

    ``check``: "equal" (the whole answer; in order when the query has an outer ORDER BY, ties
    included unless ``ties``), "subset" (a LIMIT without ORDER BY: as many rows as DataFusion returns,
    each one a row of ``full``'s answer), or "ties" (an ORDER BY ... LIMIT with ties: the ``keys``
    columns equal in order, every row one of ``full``'s).
    ``spread``: the plan has work to split, so more than one peer must have run a task.
    ``p2``: also run on the mesh planned with 2 shuffle partitions.
    ``smj``: also run on the mesh planned with sort-merge joins instead of hash joins.
    """

    sql: str
    spread: bool = True
    check: str = "equal"
    full: str | None = None
    keys: tuple[str, ...] = ()
    ties: bool = False
    p2: bool = False
    smj: bool = False


WINDOWS = {
    "rank_partitioned": Q(
        "SELECT o_custkey, o_orderkey, o_totalprice, "
        "rank() OVER (PARTITION BY o_custkey ORDER BY o_totalprice DESC) AS r, "
        "dense_rank() OVER (PARTITION BY o_orderstatus ORDER BY o_orderdate) AS dr "
        "FROM orders WHERE o_custkey < 3000",
        p2=True,
    ),
    "running_sum_rows_frame": Q(
        "SELECT o_custkey, o_orderkey, sum(o_totalprice) OVER (PARTITION BY o_custkey "
        "ORDER BY o_orderdate, o_orderkey ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS running, "
        "count(*) OVER (PARTITION BY o_custkey) AS n FROM orders WHERE o_custkey < 5000",
        p2=True,
    ),
    "moving_avg_sliding_frame": Q(
        "SELECT l_suppkey, l_orderkey, l_linenumber, avg(l_extendedprice) OVER (PARTITION BY l_suppkey "
        "ORDER BY l_orderkey, l_linenumber ROWS BETWEEN 2 PRECEDING AND 2 FOLLOWING) AS mavg, "
        "max(l_quantity) OVER (PARTITION BY l_suppkey ORDER BY l_orderkey, l_linenumber "
        "ROWS BETWEEN 5 PRECEDING AND 1 PRECEDING) AS prev_max FROM lineitem WHERE l_suppkey <= 60"
    ),
    "range_frame_nulls": Q(
        "SELECT n, g, k, sum(v) OVER (PARTITION BY g ORDER BY k RANGE BETWEEN 5 PRECEDING AND 5 FOLLOWING) "
        "AS s, count(v) OVER (PARTITION BY g ORDER BY k) AS c FROM nulls_a",
        p2=True,
    ),
    "lag_lead": Q(
        "SELECT o_custkey, o_orderkey, lag(o_totalprice) OVER (PARTITION BY o_custkey ORDER BY o_orderkey) "
        "AS prev, lead(o_orderdate, 2) OVER (PARTITION BY o_custkey ORDER BY o_orderkey) AS next2, "
        "lag(o_orderkey, 1, -1) OVER (PARTITION BY o_custkey ORDER BY o_orderkey) AS prev_key "
        "FROM orders WHERE o_custkey BETWEEN 1000 AND 6000"
    ),
    "ntile_first_last_value": Q(
        "SELECT c_nationkey, c_custkey, "
        "ntile(4) OVER (PARTITION BY c_nationkey ORDER BY c_acctbal, c_custkey) AS q, "
        "first_value(c_name) OVER (PARTITION BY c_nationkey ORDER BY c_acctbal DESC, c_custkey) AS top, "
        "last_value(c_custkey) OVER (PARTITION BY c_nationkey ORDER BY c_custkey "
        "ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING) AS last FROM customer"
    ),
    "row_number_partitioned_nulls": Q(
        "SELECT n, g, k, row_number() OVER (PARTITION BY g, k ORDER BY n) AS rn, "
        "percent_rank() OVER (PARTITION BY g ORDER BY k NULLS FIRST) AS pr FROM nulls_a"
    ),
    "global_row_number": Q(
        "SELECT o_orderkey, o_totalprice, row_number() OVER (ORDER BY o_totalprice DESC, o_orderkey) AS rn "
        "FROM orders WHERE o_orderdate < DATE '1993-01-01'",
        p2=True,
    ),
    "global_running_sum_ordered": Q(
        "SELECT c_custkey, sum(c_acctbal) OVER (ORDER BY c_custkey) AS running FROM customer "
        "ORDER BY c_custkey"
    ),
    "global_window_topn": Q(
        "SELECT * FROM (SELECT l_orderkey, l_linenumber, row_number() OVER "
        "(ORDER BY l_extendedprice DESC, l_orderkey, l_linenumber) AS rn FROM lineitem) t WHERE rn <= 50"
    ),
    "top2_per_group": Q(
        "SELECT * FROM (SELECT o_custkey, o_orderkey, row_number() OVER (PARTITION BY o_custkey "
        "ORDER BY o_totalprice DESC, o_orderkey) AS rn FROM orders) t WHERE rn <= 2",
        p2=True,
    ),
    "over_aggregate": Q(
        "SELECT n_name, count(*) AS c, rank() OVER (ORDER BY count(*) DESC) AS r, "
        "sum(count(*)) OVER () AS total FROM customer JOIN nation ON c_nationkey = n_nationkey "
        "GROUP BY n_name",
        p2=True,
    ),
    "partitioned_over_aggregate": Q(
        "SELECT l_suppkey, sum(l_quantity) AS q, dense_rank() OVER (PARTITION BY l_suppkey % 10 "
        "ORDER BY sum(l_quantity) DESC) AS dr FROM lineitem GROUP BY l_suppkey"
    ),
    "unbounded_partition_aggregate": Q(
        "SELECT o_orderkey, o_orderstatus, "
        "o_totalprice / sum(o_totalprice) OVER (PARTITION BY o_orderstatus) AS share, "
        "min(o_orderdate) OVER (PARTITION BY o_orderstatus) AS first_day "
        "FROM orders WHERE o_orderkey < 60000"
    ),
    "chained_partitionings": Q(
        "SELECT o_orderkey, "
        "rank() OVER (PARTITION BY o_custkey ORDER BY o_totalprice DESC, o_orderkey) AS r1, "
        "sum(o_totalprice) OVER (PARTITION BY o_orderpriority ORDER BY o_orderkey) AS s2, "
        "row_number() OVER (ORDER BY o_orderkey) AS rn FROM orders WHERE o_orderkey < 40000",
        p2=True,
    ),
    "range_interval_dates": Q(
        "SELECT o_custkey, o_orderkey, sum(o_totalprice) OVER (PARTITION BY o_custkey ORDER BY o_orderdate "
        "RANGE BETWEEN INTERVAL '365' DAY PRECEDING AND CURRENT ROW) AS last_year "
        "FROM orders WHERE o_custkey < 4000"
    ),
    "groups_frame": Q(
        "SELECT n, count(*) OVER (PARTITION BY g ORDER BY k GROUPS BETWEEN 1 PRECEDING AND 1 FOLLOWING) AS c "
        "FROM nulls_a"
    ),
    "cume_dist_nth_value": Q(
        "SELECT l_orderkey, l_linenumber, "
        "cume_dist() OVER (PARTITION BY l_returnflag ORDER BY l_quantity) AS cd, "
        "nth_value(l_orderkey, 2) OVER (PARTITION BY l_suppkey ORDER BY l_orderkey, l_linenumber) AS second "
        "FROM lineitem WHERE l_suppkey <= 30"
    ),
    "windows_in_union_branches": Q(
        "SELECT o_custkey AS k, rank() OVER (PARTITION BY o_orderstatus ORDER BY o_totalprice) AS r "
        "FROM orders WHERE o_orderkey < 10000 UNION ALL SELECT c_custkey, "
        "rank() OVER (PARTITION BY c_nationkey ORDER BY c_acctbal) FROM customer WHERE c_custkey < 2000"
    ),
    "distinct_on": Q(
        "SELECT DISTINCT ON (o_custkey) o_custkey, o_orderkey, o_totalprice FROM orders "
        "WHERE o_custkey < 3000 "
        "ORDER BY o_custkey, o_totalprice DESC, o_orderkey"
    ),
}

SET_OPS = {
    "union_all": Q(
        "SELECT c_custkey AS k, 'c' AS src FROM customer WHERE c_acctbal > 9000 "
        "UNION ALL SELECT s_suppkey, 's' FROM supplier WHERE s_acctbal > 9000 "
        "UNION ALL SELECT o_custkey, 'o' FROM orders WHERE o_totalprice > 450000",
        p2=True,
    ),
    "union_distinct": Q(
        "SELECT o_custkey AS k FROM orders WHERE o_totalprice > 400000 "
        "UNION SELECT c_custkey FROM customer WHERE c_acctbal > 9900 UNION SELECT k FROM nulls_a"
    ),
    "union_all_global_count": Q(
        "SELECT count(*) AS n FROM (SELECT l_orderkey AS x FROM lineitem WHERE l_quantity < 3 "
        "UNION ALL SELECT o_orderkey FROM orders WHERE o_totalprice < 5000)",
        p2=True,
    ),
    "union_all_global_aggregates": Q(
        "SELECT count(*) AS n, sum(x) AS s, min(x) AS lo, max(x) AS hi, count(DISTINCT x) AS d FROM ("
        "SELECT k AS x FROM nulls_a UNION ALL SELECT k FROM nulls_b UNION ALL SELECT o_custkey FROM orders "
        "WHERE o_orderkey < 1000)"
    ),
    "union_all_grouped": Q(
        "SELECT src, count(*) AS n, sum(x) AS s FROM (SELECT 'l' AS src, l_quantity AS x FROM lineitem "
        "WHERE l_discount = 0.05 UNION ALL SELECT 'p', CAST(ps_availqty AS DECIMAL(15, 2)) FROM partsupp) "
        "GROUP BY src"
    ),
    "union_literal_vs_nullable_column": Q(
        "SELECT 0 AS k, 'lit' AS g FROM nation UNION ALL SELECT k, g FROM nulls_a"
    ),
    "union_nullable_vs_literal_aggregated": Q(
        "SELECT g, count(*) AS n, count(k) AS nk FROM (SELECT k, g FROM nulls_a "
        "UNION ALL SELECT NULL, 'x' FROM nation UNION ALL SELECT w, label FROM nulls_b) GROUP BY g"
    ),
    "union_with_empty_table_branch": Q("SELECT k, v FROM nulls_a UNION ALL SELECT k, v FROM empty_t"),
    "union_all_branches_empty_global_agg": Q(
        "SELECT count(*) AS n, sum(v) AS s FROM (SELECT v FROM empty_t "
        "UNION ALL SELECT v FROM nulls_a WHERE v > 1000000)"
    ),
    "union_filtered_empty_branch_grouped": Q(
        "SELECT g, count(*) AS n FROM (SELECT g FROM nulls_a UNION ALL SELECT o_orderstatus "
        "FROM orders WHERE o_totalprice < 0) GROUP BY g"
    ),
    "union_all_order_limit": Q(
        "SELECT k, src FROM (SELECT o_orderkey AS k, 'o' AS src FROM orders UNION ALL "
        "SELECT l_orderkey * 10 + l_linenumber, 'l' FROM lineitem) ORDER BY k DESC, src LIMIT 25"
    ),
    "intersect": Q(
        "SELECT o_custkey FROM orders WHERE o_orderpriority = '1-URGENT' "
        "INTERSECT SELECT c_custkey FROM customer WHERE c_mktsegment = 'BUILDING'",
        p2=True,
    ),
    "except": Q("SELECT c_custkey FROM customer WHERE c_nationkey < 10 EXCEPT SELECT o_custkey FROM orders"),
    "intersect_nulls": Q("SELECT k, g FROM nulls_a INTERSECT SELECT k, label FROM nulls_b"),
    "except_nulls": Q("SELECT k FROM nulls_a EXCEPT SELECT k FROM nulls_b"),
    "intersect_all": Q("SELECT k FROM nulls_a INTERSECT ALL SELECT k FROM nulls_b"),
    "except_all": Q("SELECT g FROM nulls_a EXCEPT ALL SELECT label FROM nulls_b"),
    "intersect_all_tpch": Q(
        "SELECT l_suppkey FROM lineitem WHERE l_quantity = 1 INTERSECT ALL "
        "SELECT ps_suppkey FROM partsupp WHERE ps_availqty < 500"
    ),
    "union_as_broadcast_build": Q(
        "SELECT u.src, count(*) AS n FROM lineitem JOIN (SELECT n_nationkey AS k, 'n' AS src FROM nation "
        "UNION ALL SELECT r_regionkey, 'r' FROM region) u ON l_suppkey = u.k GROUP BY u.src"
    ),
    "union_of_sorted_limited_branches": Q(
        "(SELECT o_orderkey AS k FROM orders ORDER BY o_totalprice DESC, o_orderkey LIMIT 5) UNION ALL "
        "(SELECT l_orderkey FROM lineitem ORDER BY l_extendedprice, l_orderkey, l_linenumber LIMIT 5)"
    ),
    "union_distinct_self": Q(
        "SELECT o_orderstatus, o_orderpriority FROM orders "
        "UNION SELECT o_orderstatus, o_orderpriority FROM orders"
    ),
    "union_of_aggregates": Q(
        "SELECT 'o' AS t, o_orderstatus AS k, count(*) AS n FROM orders GROUP BY 2 "
        "UNION ALL SELECT 'l', l_linestatus, count(*) FROM lineitem GROUP BY 2",
        p2=True,
    ),
    "union_scan_with_shuffled_branch": Q(
        "SELECT k, count(*) AS n FROM (SELECT o_custkey AS k FROM orders WHERE o_orderkey < 50000 "
        "UNION ALL SELECT k FROM (SELECT o_custkey AS k FROM orders GROUP BY 1)) GROUP BY k"
    ),
    "window_over_union": Q(
        "SELECT k, src, rank() OVER (PARTITION BY src ORDER BY k DESC) AS r FROM "
        "(SELECT k, 'a' AS src FROM nulls_a UNION ALL SELECT k, 'b' FROM nulls_b)"
    ),
    "unions_joined": Q(
        "SELECT count(*) AS n, sum(x.v) AS s FROM (SELECT k, v FROM nulls_a UNION ALL "
        "SELECT k, CAST(w AS DOUBLE) FROM nulls_b) x "
        "JOIN (SELECT k FROM nulls_b UNION SELECT k FROM nulls_a) y "
        "ON x.k = y.k",
        smj=True,
    ),
}

JOINS = {
    "inner": Q(
        "SELECT c_custkey, c_name, o_orderkey, o_totalprice FROM customer "
        "JOIN orders ON c_custkey = o_custkey WHERE c_acctbal > 9000",
        p2=True,
    ),
    "inner_big_both_sides": Q(
        "SELECT o_orderpriority, count(*) AS n, sum(l_extendedprice) AS s FROM orders "
        "JOIN lineitem ON o_orderkey = l_orderkey GROUP BY o_orderpriority",
        p2=True,
        smj=True,
    ),
    "inner_broadcast_small_build": Q(
        "SELECT n_name, count(*) AS n, sum(l_extendedprice) AS s FROM lineitem JOIN supplier "
        "ON l_suppkey = s_suppkey JOIN nation ON s_nationkey = n_nationkey "
        "WHERE l_shipdate < DATE '1993-01-01' GROUP BY n_name"
    ),
    "inner_tiny_tables": Q(  # one partition each: nothing to split
        "SELECT n_name, count(*) AS n, sum(s_acctbal) AS bal FROM supplier JOIN nation "
        "ON s_nationkey = n_nationkey GROUP BY n_name",
        spread=False,
    ),
    "inner_three_way_broadcast": Q(
        "SELECT r_name, count(*) AS n FROM orders JOIN customer ON o_custkey = c_custkey "
        "JOIN nation ON c_nationkey = n_nationkey JOIN region ON n_regionkey = r_regionkey GROUP BY r_name"
    ),
    "left": Q(
        "SELECT c_custkey, count(o_orderkey) AS n FROM customer LEFT JOIN orders "
        "ON c_custkey = o_custkey AND o_totalprice > 300000 GROUP BY c_custkey",
        p2=True,
        smj=True,
    ),
    "left_small_preserved_side": Q(
        "SELECT n_name, s_suppkey FROM nation LEFT JOIN supplier ON n_nationkey = s_nationkey "
        "AND s_acctbal > 9900",
        spread=False,
    ),
    # the preserved side is the small broadcast build side: such a stage runs as one task (DESIGN trap)
    "left_small_build_big_probe": Q(
        "SELECT n_name, count(o_orderkey) AS n FROM nation LEFT JOIN orders "
        "ON n_nationkey = o_custkey % 50 AND o_totalprice > 400000 GROUP BY n_name",
        spread=False,
        smj=True,
    ),
    "left_big_preserved_side_rows": Q(
        "SELECT o_orderkey, o_custkey, c_name FROM orders LEFT JOIN "
        "(SELECT * FROM customer WHERE c_mktsegment = 'MACHINERY') c ON o_custkey = c_custkey "
        "WHERE o_orderkey < 20000",
        smj=True,
    ),
    "right": Q(
        "SELECT o_orderkey, c_custkey, c_name FROM orders RIGHT JOIN customer "
        "ON c_custkey = o_custkey AND o_orderdate < DATE '1992-02-01' WHERE c_nationkey = 7",
        smj=True,
    ),
    "right_small_preserved_side": Q(
        "SELECT s.s_suppkey, n.n_name FROM (SELECT * FROM supplier WHERE s_acctbal > 9500) s "
        "RIGHT JOIN nation n ON s.s_nationkey = n.n_nationkey",
        spread=False,
    ),
    "right_small_preserved_big_probe": Q(
        "SELECT n_name, o_orderkey FROM orders RIGHT JOIN nation ON n_nationkey = o_custkey % 50 "
        "AND o_totalprice > 450000",
        spread=False,
    ),
    "full_outer_nulls_dups": Q(
        "SELECT a.n, a.k AS ak, b.k AS bk, b.w FROM nulls_a a FULL OUTER JOIN nulls_b b ON a.k = b.k",
        p2=True,
        smj=True,
    ),
    "full_outer_tpch": Q(
        "SELECT count(*) AS n, count(c_custkey) AS nc, count(o_orderkey) AS no FROM "
        "(SELECT * FROM customer WHERE c_nationkey < 5) c FULL OUTER JOIN "
        "(SELECT * FROM orders WHERE o_orderdate < DATE '1992-03-01') o ON c_custkey = o_custkey"
    ),
    "full_outer_small_sides": Q(
        "SELECT n_name, r_name FROM (SELECT * FROM nation WHERE n_nationkey < 15) n "
        "FULL JOIN (SELECT * FROM region WHERE r_regionkey > 1) r ON n_regionkey = r_regionkey",
        spread=False,
    ),
    "semi_exists": Q(
        "SELECT c_custkey, c_name FROM customer WHERE EXISTS "
        "(SELECT 1 FROM orders WHERE o_custkey = c_custkey AND o_totalprice > 400000)",
        smj=True,
    ),
    "semi_in": Q(
        "SELECT c_custkey FROM customer WHERE c_custkey IN (SELECT o_custkey FROM orders "
        "WHERE o_orderpriority = '1-URGENT' AND o_totalprice > 350000)"
    ),
    "right_semi_big_probe": Q(
        "SELECT o_orderkey, o_totalprice FROM orders WHERE o_custkey IN "
        "(SELECT c_custkey FROM customer WHERE c_nationkey = 1 AND c_acctbal > 5000)",
        p2=True,
        smj=True,
    ),
    "anti_not_exists": Q(
        "SELECT c_custkey, c_nationkey FROM customer WHERE NOT EXISTS "
        "(SELECT 1 FROM orders WHERE o_custkey = c_custkey)",
        p2=True,
        smj=True,
    ),
    "right_anti_big_probe": Q(
        "SELECT o_orderkey FROM orders WHERE NOT EXISTS (SELECT 1 FROM customer "
        "WHERE c_custkey = o_custkey AND c_mktsegment <> 'HOUSEHOLD') AND o_orderkey < 100000"
    ),
    "anti_not_in_with_nulls": Q("SELECT n, k FROM nulls_a WHERE k NOT IN (SELECT k FROM nulls_b)"),
    "anti_not_in_nulls_filtered": Q(
        "SELECT n, k FROM nulls_a WHERE k NOT IN (SELECT k FROM nulls_b WHERE k IS NOT NULL)"
    ),
    "anti_not_in_nullable_probe": Q(
        "SELECT w, k FROM nulls_b WHERE k NOT IN (SELECT n FROM nulls_a WHERE n < 120)"
    ),
    "anti_not_exists_null_keys": Q(
        "SELECT a.n, a.k FROM nulls_a a WHERE NOT EXISTS (SELECT 1 FROM nulls_b b WHERE b.k = a.k)"
    ),
    "anti_not_in_tpch": Q(
        "SELECT count(*) AS n FROM part WHERE p_partkey NOT IN "
        "(SELECT ps_partkey FROM partsupp WHERE ps_availqty < 100)"
    ),
    "semi_in_with_nulls": Q("SELECT n, k FROM nulls_a WHERE k IN (SELECT k FROM nulls_b)"),
    "non_equi_tiny_tables": Q(
        "SELECT s_suppkey, n_name FROM supplier JOIN nation ON s_nationkey < n_nationkey "
        "WHERE s_acctbal > 9900",
        spread=False,
    ),
    "non_equi_big_probe": Q(
        "SELECT n_name, count(*) AS n, sum(o_totalprice) AS s FROM orders JOIN nation "
        "ON o_custkey % 25 < n_nationkey WHERE o_orderkey < 30000 GROUP BY n_name"
    ),
    "non_equi_nested_loop_aggregated": Q(
        "SELECT a.g, count(*) AS n, sum(b.w) AS s FROM nulls_a a JOIN nulls_b b "
        "ON a.k < b.k - 95 AND a.n < b.w GROUP BY a.g",
        p2=True,
    ),
    "left_nested_loop": Q(
        "SELECT n_nationkey, count(s_suppkey) AS n FROM nation LEFT JOIN supplier "
        "ON s_nationkey = n_nationkey + 1 OR s_acctbal > n_nationkey * 400 + 9000 GROUP BY n_nationkey",
        spread=False,
    ),
    "right_nested_loop": Q(
        "SELECT o_orderkey, n_name FROM (SELECT * FROM nation WHERE n_nationkey < 3) n RIGHT JOIN "
        "(SELECT * FROM orders WHERE o_orderkey < 3000) o ON o_custkey % 25 < n_nationkey"
    ),
    "full_nested_loop": Q(
        "SELECT a.n, b.w FROM (SELECT * FROM nulls_a WHERE n < 40) a FULL JOIN "
        "(SELECT * FROM nulls_b WHERE w < 40) b ON a.k > b.k + 10"
    ),
    "equi_with_non_equi_filter": Q(
        "SELECT a.n, b.w, a.v FROM nulls_a a JOIN nulls_b b ON a.k = b.k AND a.v > b.w / 10.0"
    ),
    "cross_small": Q("SELECT r_name, n_name FROM region CROSS JOIN nation", spread=False),
    "cross_big_probe": Q(
        "SELECT r_name, count(*) AS n, sum(c_acctbal) AS s FROM customer CROSS JOIN region "
        "WHERE r_regionkey < 3 GROUP BY r_name"
    ),
    "cross_comma_filtered": Q(
        "SELECT count(*) AS n, sum(a.n + b.w) AS s FROM nulls_a a, nulls_b b WHERE b.w < 10"
    ),
    "self_join": Q(
        "SELECT a.o_custkey, count(*) AS pairs FROM orders a JOIN orders b ON a.o_custkey = b.o_custkey "
        "AND a.o_orderkey < b.o_orderkey WHERE a.o_custkey < 3000 GROUP BY a.o_custkey",
        smj=True,
    ),
    "self_join_lineitem_q21_like": Q(
        "SELECT count(*) AS n FROM lineitem l1 WHERE l1.l_receiptdate > l1.l_commitdate AND EXISTS "
        "(SELECT 1 FROM lineitem l2 WHERE l2.l_orderkey = l1.l_orderkey AND l2.l_suppkey <> l1.l_suppkey) "
        "AND NOT EXISTS (SELECT 1 FROM lineitem l3 WHERE l3.l_orderkey = l1.l_orderkey "
        "AND l3.l_suppkey <> l1.l_suppkey AND l3.l_receiptdate > l3.l_commitdate)"
    ),
    "null_keys_inner": Q(
        "SELECT a.n, b.w, a.k FROM nulls_a a JOIN nulls_b b ON a.k = b.k",
        smj=True,
    ),
    "null_keys_is_not_distinct_from": Q(
        "SELECT count(*) AS n, count(a.k) AS nk FROM nulls_a a JOIN nulls_b b "
        "ON a.k IS NOT DISTINCT FROM b.k",
        smj=True,
    ),
    "multi_key": Q(
        "SELECT count(*) AS n, sum(l_quantity) AS q FROM lineitem JOIN partsupp "
        "ON l_partkey = ps_partkey AND l_suppkey = ps_suppkey WHERE ps_availqty < 200",
        smj=True,
    ),
    "multi_key_nulls": Q("SELECT a.n, b.w FROM nulls_a a JOIN nulls_b b ON a.k = b.k AND a.g = b.label"),
    "left_multi_key_nulls": Q(
        "SELECT a.n, b.w FROM nulls_a a LEFT JOIN nulls_b b ON a.k = b.k AND a.g = b.label",
        smj=True,
    ),
    "mark_exists_or": Q(
        "SELECT count(*) AS n FROM customer WHERE c_acctbal > 9000 OR EXISTS "
        "(SELECT 1 FROM orders WHERE o_custkey = c_custkey AND o_totalprice > 450000)"
    ),
    "mark_in_or_nulls": Q(
        "SELECT n, k FROM nulls_a WHERE g = 'a' OR k IN (SELECT k FROM nulls_b WHERE w < 100)", p2=True
    ),
    "mark_not_in_or_nulls": Q(
        "SELECT n, k FROM nulls_a WHERE g = 'a' OR k NOT IN (SELECT k FROM nulls_b WHERE w < 100)"
    ),
    "semi_non_equi_only": Q(
        "SELECT c_custkey FROM customer WHERE EXISTS "
        "(SELECT 1 FROM nation WHERE n_nationkey > c_nationkey + 20)"
    ),
    "anti_non_equi_only": Q(
        "SELECT c_custkey FROM customer WHERE NOT EXISTS "
        "(SELECT 1 FROM nation WHERE n_nationkey > c_nationkey + 20)"
    ),
    "pre_partitioned_aggregates": Q(
        "SELECT a.k, a.c, b.c AS c2 FROM (SELECT o_custkey AS k, count(*) AS c FROM orders GROUP BY 1) a "
        "JOIN (SELECT l_suppkey AS k, count(*) AS c FROM lineitem GROUP BY 1) b ON a.k = b.k",
        p2=True,
        smj=True,
    ),
    "three_big_partitioned": Q(
        "SELECT c_mktsegment, count(*) AS n, sum(l_quantity) AS q FROM lineitem "
        "JOIN orders ON l_orderkey = o_orderkey JOIN customer ON o_custkey = c_custkey GROUP BY 1",
        smj=True,
    ),
    "anti_big_both_sides": Q(
        "SELECT count(*) AS n FROM orders o WHERE NOT EXISTS (SELECT 1 FROM lineitem l "
        "WHERE l.l_orderkey = o.o_orderkey AND l.l_returnflag = 'R')",
        smj=True,
    ),
    "full_outer_big_both_sides": Q(
        "SELECT count(*) AS n, count(o_orderkey) AS no, count(l_orderkey) AS nl FROM "
        "(SELECT * FROM orders WHERE o_orderkey % 3 = 0) o FULL JOIN "
        "(SELECT * FROM lineitem WHERE l_linenumber = 1 AND l_orderkey % 2 = 0) l ON o_orderkey = l_orderkey",
        p2=True,
        smj=True,
    ),
    "expression_keys": Q(
        "SELECT count(*) AS n, sum(a.n) AS s FROM nulls_a a JOIN nulls_b b ON a.k + 50 = b.k"
    ),
    "string_keys_nulls": Q(
        "SELECT a.g, count(*) AS n FROM nulls_a a JOIN nulls_b b ON a.g = b.label GROUP BY a.g", smj=True
    ),
    "using": Q("SELECT * FROM nulls_a JOIN nulls_b USING (k)"),
    "natural": Q("SELECT * FROM nulls_a NATURAL JOIN nulls_b"),
}

AGGREGATES = {
    "grouping_sets": Q(
        "SELECT l_returnflag, l_linestatus, sum(l_quantity) AS q, count(*) AS n FROM lineitem "
        "GROUP BY GROUPING SETS ((l_returnflag), (l_linestatus), (l_returnflag, l_linestatus), ())",
        p2=True,
    ),
    "rollup": Q(
        "SELECT n_regionkey, n_name, count(*) AS n, sum(c_acctbal) AS bal FROM customer "
        "JOIN nation ON c_nationkey = n_nationkey GROUP BY ROLLUP (n_regionkey, n_name)"
    ),
    "cube_with_grouping": Q(
        "SELECT o_orderstatus, o_orderpriority, count(*) AS n, sum(o_totalprice) AS s, "
        "grouping(o_orderstatus) AS gs, grouping(o_orderpriority) AS gp FROM orders "
        "GROUP BY CUBE (o_orderstatus, o_orderpriority)"
    ),
    "rollup_null_data_keys": Q(
        "SELECT g, k % 3 AS m, count(*) AS n, sum(v) AS s, grouping(g) AS gg FROM nulls_a "
        "GROUP BY ROLLUP (g, k % 3)"
    ),
    "count_distinct_global": Q("SELECT count(DISTINCT l_suppkey) AS d, count(*) AS n FROM lineitem"),
    "count_distinct_grouped": Q(
        "SELECT l_returnflag, count(DISTINCT l_partkey) AS parts, count(*) AS n FROM lineitem "
        "GROUP BY l_returnflag",
        p2=True,
    ),
    "several_count_distinct": Q(
        "SELECT o_orderpriority, count(DISTINCT o_custkey) AS c, count(DISTINCT o_clerk) AS k, "
        "count(DISTINCT o_orderstatus) AS s FROM orders GROUP BY o_orderpriority"
    ),
    "several_count_distinct_global": Q(
        "SELECT count(DISTINCT k) AS dk, count(DISTINCT g) AS dg, count(DISTINCT v) AS dv, "
        "count(*) AS n FROM nulls_a"
    ),
    "count_distinct_nulls_grouped": Q(
        "SELECT g, count(DISTINCT k) AS dk, count(k) AS nk, count(*) AS n FROM nulls_a GROUP BY g"
    ),
    "sum_avg_distinct": Q(
        "SELECT l_linestatus, sum(DISTINCT l_quantity) AS sq, avg(DISTINCT l_tax) AS at FROM lineitem "
        "GROUP BY l_linestatus"
    ),
    "distinct_rows": Q("SELECT DISTINCT o_orderstatus, o_orderpriority FROM orders"),
    "distinct_nulls": Q("SELECT DISTINCT g, k FROM nulls_a"),
    "distinct_high_cardinality": Q("SELECT DISTINCT l_partkey FROM lineitem WHERE l_quantity > 40"),
    "high_cardinality_having": Q(
        "SELECT l_orderkey, sum(l_quantity) AS q FROM lineitem GROUP BY l_orderkey "
        "HAVING sum(l_quantity) > 300"
    ),
    "filter_clause": Q(
        "SELECT l_shipmode, count(*) FILTER (WHERE l_returnflag = 'R') AS r, "
        "sum(l_extendedprice) FILTER (WHERE l_discount > 0.05) AS s FROM lineitem GROUP BY l_shipmode"
    ),
    "aggregates_of_nulls": Q(
        "SELECT count(v) AS c, sum(v) AS s, avg(v) AS a, min(g) AS lo, max(g) AS hi, count(*) AS n "
        "FROM nulls_a WHERE v IS NULL"
    ),
    "median_stddev_bool": Q(
        "SELECT g, median(n) AS med, stddev(v) AS sd, var_pop(v) AS vp, bool_and(v > 0) AS all_pos, "
        "bool_or(k > 95) AS any_big FROM nulls_a GROUP BY g"
    ),
    "string_agg_ordered": Q(
        "SELECT c_nationkey, string_agg(c_name, ',' ORDER BY c_name) AS names FROM customer "
        "WHERE c_acctbal > 9800 GROUP BY c_nationkey"
    ),
    "group_by_expression": Q(
        "SELECT date_part('year', o_orderdate) AS y, o_totalprice > 200000 AS big, count(*) AS n, "
        "avg(o_totalprice) AS a FROM orders GROUP BY 1, 2"
    ),
    "two_level_aggregate": Q(
        "SELECT n, count(*) AS customers FROM (SELECT o_custkey, count(*) AS n FROM orders GROUP BY 1) "
        "GROUP BY n",
        p2=True,
    ),
    "first_last_value_ordered": Q(
        "SELECT o_custkey, first_value(o_orderkey ORDER BY o_orderdate, o_orderkey) AS f, "
        "last_value(o_totalprice ORDER BY o_orderdate, o_orderkey) AS l FROM orders WHERE o_custkey < 3000 "
        "GROUP BY 1"
    ),
    "grouping_sets_count_distinct": Q(
        "SELECT l_returnflag, l_shipmode, count(DISTINCT l_suppkey) AS d, count(*) AS n FROM lineitem "
        "WHERE l_quantity < 10 GROUP BY GROUPING SETS ((l_returnflag), (l_shipmode), ())"
    ),
    "count_distinct_mixed": Q(
        "SELECT count(DISTINCT o_custkey) AS c, sum(o_totalprice) AS s, avg(DISTINCT o_shippriority) AS a, "
        "max(o_comment) AS m FROM orders"
    ),
    "statistics": Q(
        "SELECT l_returnflag, corr(l_quantity, l_extendedprice) AS c, "
        "covar_samp(l_quantity, l_discount) AS cv, "
        "regr_slope(l_extendedprice, l_quantity) AS rs FROM lineitem GROUP BY 1"
    ),
    "percentile_cont": Q(
        "SELECT l_returnflag, percentile_cont(0.5) WITHIN GROUP (ORDER BY l_quantity) AS p FROM lineitem "
        "GROUP BY 1"
    ),
    "bit_aggregates": Q(
        "SELECT g, bit_and(n) AS a, bit_or(n) AS o, bit_xor(n) AS x, bit_xor(k) AS xk FROM nulls_a GROUP BY g"
    ),
    "sorted_distinct_array_agg": Q(
        "SELECT o_orderstatus, array_sort(array_agg(DISTINCT o_orderpriority)) AS ps FROM orders GROUP BY 1"
    ),
    "min_max_temporal_strings": Q(
        "SELECT l_shipmode, min(l_shipdate) AS d0, max(l_receiptdate) AS d1, min(l_comment) AS c0, "
        "max(l_shipinstruct) AS i1, max(l_discount) AS dmax FROM lineitem GROUP BY 1"
    ),
}

SUBQUERIES = {
    "scalar_where": Q(
        "SELECT count(*) AS n FROM orders WHERE o_totalprice > (SELECT avg(o_totalprice) FROM orders)",
        p2=True,
    ),
    "scalar_select_list": Q(
        "SELECT c_custkey, c_acctbal - (SELECT avg(c_acctbal) FROM customer) AS diff FROM customer "
        "WHERE c_acctbal > 9950"
    ),
    "scalar_null_from_empty": Q("SELECT count(*) AS n FROM nulls_a WHERE v > (SELECT max(v) FROM empty_t)"),
    "several_scalars": Q(
        "SELECT (SELECT count(*) FROM orders) AS o, (SELECT count(*) FROM customer) AS c, "
        "(SELECT max(k) FROM nulls_a) AS m",
        spread=False,  # answered from Parquet statistics: nothing is scanned
    ),
    "scalar_having_q11_like": Q(
        "SELECT ps_partkey, sum(ps_supplycost * ps_availqty) AS value FROM partsupp, supplier, nation "
        "WHERE ps_suppkey = s_suppkey AND s_nationkey = n_nationkey AND n_name = 'GERMANY' "
        "GROUP BY ps_partkey HAVING sum(ps_supplycost * ps_availqty) > (SELECT "
        "sum(ps_supplycost * ps_availqty) * 0.0001 FROM partsupp, supplier, nation WHERE "
        "ps_suppkey = s_suppkey AND s_nationkey = n_nationkey AND n_name = 'GERMANY') "
        "ORDER BY value DESC, ps_partkey"
    ),
    "correlated_q17_like": Q(
        "SELECT sum(l_extendedprice) / 7.0 AS avg_yearly FROM lineitem, part WHERE p_partkey = l_partkey "
        "AND p_brand = 'Brand#23' AND l_quantity < "
        "(SELECT 0.2 * avg(l_quantity) FROM lineitem WHERE l_partkey = p_partkey)",
        p2=True,
    ),
    "correlated_q2_like": Q(
        "SELECT s_name, p_partkey, ps_supplycost FROM part, supplier, partsupp, nation, region "
        "WHERE p_partkey = ps_partkey AND s_suppkey = ps_suppkey AND p_size = 15 AND p_type LIKE '%BRASS' "
        "AND s_nationkey = n_nationkey AND n_regionkey = r_regionkey AND r_name = 'EUROPE' "
        "AND ps_supplycost = (SELECT min(ps_supplycost) FROM partsupp, supplier, nation, region "
        "WHERE p_partkey = ps_partkey AND s_suppkey = ps_suppkey AND s_nationkey = n_nationkey "
        "AND n_regionkey = r_regionkey AND r_name = 'EUROPE') ORDER BY p_partkey, s_name"
    ),
    "correlated_q20_like": Q(
        "SELECT s_name FROM supplier WHERE s_suppkey IN (SELECT ps_suppkey FROM partsupp WHERE "
        "ps_partkey IN (SELECT p_partkey FROM part WHERE p_name LIKE 'forest%') AND ps_availqty > "
        "(SELECT 0.5 * sum(l_quantity) FROM lineitem WHERE l_partkey = ps_partkey AND l_suppkey = ps_suppkey "
        "AND l_shipdate >= DATE '1994-01-01' AND l_shipdate < DATE '1995-01-01')) ORDER BY s_name"
    ),
    "correlated_count_in_select": Q(
        "SELECT c_custkey, (SELECT count(*) FROM orders WHERE o_custkey = c_custkey) AS n FROM customer "
        "WHERE c_nationkey = 3"
    ),
    "correlated_max_null_keys": Q(
        "SELECT a.n, (SELECT max(b.w) FROM nulls_b b WHERE b.k = a.k) AS m FROM nulls_a a"
    ),
    "correlated_scalar_in_where_nulls": Q(
        "SELECT a.n FROM nulls_a a WHERE a.n > (SELECT avg(b.w) FROM nulls_b b WHERE b.k = a.k)"
    ),
    "correlated_q22_like": Q(
        "SELECT substring(c_phone, 1, 2) AS code, count(*) AS n, sum(c_acctbal) AS bal FROM customer "
        "WHERE substring(c_phone, 1, 2) IN ('13', '31', '23', '29', '30', '18', '17') AND c_acctbal > "
        "(SELECT avg(c_acctbal) FROM customer WHERE c_acctbal > 0.00 AND substring(c_phone, 1, 2) "
        "IN ('13', '31', '23', '29', '30', '18', '17')) AND NOT EXISTS (SELECT * FROM orders "
        "WHERE o_custkey = c_custkey) GROUP BY 1 ORDER BY 1"
    ),
    "in_subquery_count": Q(
        "SELECT count(*) AS n FROM orders WHERE o_custkey IN "
        "(SELECT c_custkey FROM customer WHERE c_mktsegment = 'AUTOMOBILE')"
    ),
    "in_subquery_aggregated_inner": Q(
        "SELECT o_orderkey, o_totalprice FROM orders WHERE o_orderkey IN (SELECT l_orderkey FROM lineitem "
        "GROUP BY l_orderkey HAVING sum(l_quantity) > 312)"
    ),
    "exists_uncorrelated_empty": Q("SELECT count(*) AS n FROM orders WHERE EXISTS (SELECT 1 FROM empty_t)"),
    "exists_uncorrelated": Q(
        "SELECT o_orderpriority, count(*) AS n FROM orders WHERE EXISTS "
        "(SELECT 1 FROM nation WHERE n_nationkey = 3) GROUP BY 1"
    ),
    "nested_in": Q(
        "SELECT count(*) AS n FROM lineitem WHERE l_orderkey IN (SELECT o_orderkey FROM orders "
        "WHERE o_custkey IN (SELECT c_custkey FROM customer WHERE c_nationkey = 5))"
    ),
    "correlated_exists_q4_like": Q(
        "SELECT o_orderpriority, count(*) AS n FROM orders WHERE o_orderdate >= DATE '1993-07-01' "
        "AND o_orderdate < DATE '1993-10-01' AND EXISTS "
        "(SELECT * FROM lineitem WHERE l_orderkey = o_orderkey "
        "AND l_commitdate < l_receiptdate) GROUP BY 1 ORDER BY 1"
    ),
    "scalar_null_in_select": Q(
        "SELECT n, (SELECT max(w) FROM nulls_b WHERE w > 10000) AS m FROM nulls_a WHERE n < 5"
    ),
    "cte_twice_q15_like": Q(
        "WITH c AS (SELECT o_custkey, sum(o_totalprice) AS s FROM orders GROUP BY 1) "
        "SELECT o_custkey, s FROM c WHERE s = (SELECT max(s) FROM c)"
    ),
}

LIMITS = {
    "limit_no_order": Q(
        "SELECT o_orderkey, o_custkey FROM orders LIMIT 10",
        check="subset",
        full="SELECT o_orderkey, o_custkey FROM orders",
    ),
    "limit_offset_no_order": Q(
        "SELECT l_orderkey, l_linenumber FROM lineitem WHERE l_quantity > 45 LIMIT 7 OFFSET 3",
        check="subset",
        full="SELECT l_orderkey, l_linenumber FROM lineitem WHERE l_quantity > 45",
    ),
    "limit_over_aggregate": Q(
        "SELECT o_custkey, count(*) AS n, sum(o_totalprice) AS s FROM orders GROUP BY o_custkey LIMIT 5",
        check="subset",
        full="SELECT o_custkey, count(*) AS n, sum(o_totalprice) AS s FROM orders GROUP BY o_custkey",
    ),
    "limit_over_join": Q(
        "SELECT c_custkey, o_orderkey FROM customer JOIN orders ON c_custkey = o_custkey LIMIT 20",
        check="subset",
        full="SELECT c_custkey, o_orderkey FROM customer JOIN orders ON c_custkey = o_custkey",
    ),
    "limit_over_union": Q(
        "SELECT x FROM (SELECT o_custkey AS x FROM orders UNION ALL SELECT c_custkey FROM customer) LIMIT 13",
        check="subset",
        full="SELECT o_custkey AS x FROM orders UNION ALL SELECT c_custkey FROM customer",
    ),
    "limit_larger_than_input": Q("SELECT n, k, g FROM nulls_a LIMIT 5000"),
    "limit_zero": Q("SELECT * FROM orders LIMIT 0", spread=False),
    "count_over_limit_statistics": Q(
        "SELECT count(*) AS n FROM (SELECT * FROM lineitem LIMIT 1234)",
        spread=False,  # answered from Parquet statistics: nothing is scanned
    ),
    "count_over_filtered_limit": Q(
        "SELECT count(*) AS n FROM (SELECT l_orderkey FROM lineitem WHERE l_quantity > 10 LIMIT 1234)"
    ),
    "order_limit_offset": Q(
        "SELECT o_orderkey, o_custkey FROM orders ORDER BY o_orderkey LIMIT 10 OFFSET 1000"
    ),
    "topk_unique": Q(
        "SELECT l_orderkey, l_linenumber, l_extendedprice FROM lineitem "
        "ORDER BY l_extendedprice DESC, l_orderkey, l_linenumber LIMIT 25",
        p2=True,
    ),
    "topk_keys_only_with_ties": Q(
        "SELECT l_quantity, l_shipmode FROM lineitem ORDER BY l_quantity DESC, l_shipmode LIMIT 1000"
    ),
    "topk_ties_other_columns": Q(
        "SELECT l_orderkey, l_linenumber, l_quantity FROM lineitem ORDER BY l_quantity DESC LIMIT 1000",
        check="ties",
        keys=("l_quantity",),
        full="SELECT l_orderkey, l_linenumber, l_quantity FROM lineitem WHERE l_quantity >= 45",
    ),
    "order_nulls_first": Q("SELECT n, k FROM nulls_a ORDER BY k NULLS FIRST, n LIMIT 400"),
    "order_desc_nulls_last": Q("SELECT n, v, g FROM nulls_a ORDER BY v DESC NULLS LAST, n"),
    "order_full_big": Q("SELECT o_orderkey, o_totalprice FROM orders ORDER BY o_totalprice DESC, o_orderkey"),
    "order_by_aggregate": Q(
        "SELECT o_custkey, sum(o_totalprice) AS s FROM orders GROUP BY o_custkey "
        "ORDER BY s DESC, o_custkey LIMIT 20"
    ),
    "offset_without_limit": Q("SELECT o_orderkey FROM orders ORDER BY o_orderkey DESC OFFSET 149990"),
    "sum_over_topk": Q(
        "SELECT sum(x) AS s, count(*) AS n FROM (SELECT o_totalprice AS x FROM orders "
        "ORDER BY o_totalprice DESC, o_orderkey LIMIT 100)"
    ),
    "order_by_unselected_column": Q(
        "SELECT o_orderkey FROM orders ORDER BY o_totalprice DESC, o_orderkey LIMIT 10"
    ),
    "topk_feeding_join": Q(
        "SELECT c_name, t.o_orderkey FROM customer JOIN (SELECT o_orderkey, o_custkey FROM orders "
        "ORDER BY o_totalprice DESC, o_orderkey LIMIT 50) t ON c_custkey = t.o_custkey"
    ),
    "offset_past_the_end": Q("SELECT n FROM nulls_a ORDER BY n LIMIT 10 OFFSET 2995"),
    "order_strings_nulls_first": Q("SELECT g, n FROM nulls_a ORDER BY g DESC NULLS FIRST, n LIMIT 700"),
}

NO_TABLE = {
    "select_1": Q("SELECT 1", spread=False),
    "literals": Q("SELECT 1 + 1 AS x, 'a' AS y", spread=False),
    "values": Q("VALUES (1), (2)", spread=False),
    "values_filtered": Q(
        "SELECT * FROM (VALUES (1, 'a'), (2, NULL), (3, 'c')) AS t(x, y) WHERE x > 1", spread=False
    ),
    "generate_series": Q("SELECT * FROM generate_series(1, 5)", spread=False),
    "range": Q("SELECT * FROM range(0, 100, 7)", spread=False),
    "unnest_literal": Q("SELECT unnest([1, 2, 3]) AS x", spread=False),
    "unnest_with_constant": Q("SELECT unnest(make_array('a', 'b')) AS x, 1 AS y", spread=False),
    "null_literal": Q("SELECT CAST(NULL AS INT) AS x, NULL AS y", spread=False),
    "where_false": Q("SELECT 1 AS x WHERE false", spread=False),
    "generate_series_grouped": Q(
        "SELECT value % 7 AS m, count(*) AS n, sum(value) AS s FROM generate_series(1, 100000) GROUP BY 1",
        spread=False,  # one generated partition; the final aggregate runs in the root
    ),
    "range_count": Q("SELECT count(*) AS n, sum(value) AS s FROM range(1000000)", spread=False),
    "values_join_table": Q(
        "SELECT n_name, v.w FROM nation JOIN (VALUES (1, 'x'), (5, 'y'), (99, 'z')) AS v(k, w) "
        "ON n_nationkey = v.k",
        spread=False,
    ),
    "recursive_cte": Q(
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 10) SELECT * FROM r",
        spread=False,
    ),
    "recursive_cte_over_table": Q(
        "WITH RECURSIVE r(k, d) AS (SELECT n_nationkey, 0 FROM nation WHERE n_nationkey = 0 UNION ALL "
        "SELECT n.n_nationkey, r.d + 1 FROM nation n JOIN r ON n.n_nationkey = r.k + 1 WHERE r.d < 10) "
        "SELECT * FROM r",
        spread=False,
    ),
    "generate_series_join_table": Q(
        "SELECT value, c_name FROM generate_series(0, 30) JOIN customer ON value = c_custkey"
    ),
    "unnest_table_arrays": Q(
        "SELECT o_orderkey, unnest([o_custkey, o_shippriority]) AS x FROM orders WHERE o_orderkey < 3000"
    ),
}

EMPTY = {
    "empty_table": Q("SELECT * FROM empty_t", spread=False),
    "empty_global_aggregate": Q("SELECT count(*) AS n, sum(v) AS s, max(g) AS m FROM empty_t", spread=False),
    "empty_grouped_aggregate": Q("SELECT g, count(*) AS n FROM empty_t GROUP BY g", spread=False),
    "where_false_on_table": Q("SELECT o_orderkey, o_totalprice FROM orders WHERE false", spread=False),
    "filter_matches_nothing": Q("SELECT o_orderkey, o_comment FROM orders WHERE o_totalprice < 0"),
    "nothing_below_global_aggregate": Q(
        "SELECT count(*) AS n, sum(o_totalprice) AS s, count(DISTINCT o_custkey) AS d FROM orders "
        "WHERE o_totalprice < 0"
    ),
    "nothing_below_grouped_aggregate": Q(
        "SELECT o_orderpriority, count(*) AS n FROM orders WHERE o_totalprice < 0 GROUP BY 1"
    ),
    "nothing_below_join": Q(
        "SELECT c_name, o_orderkey FROM customer JOIN orders ON c_custkey = o_custkey WHERE o_totalprice < 0"
    ),
    "nothing_on_left_join_build": Q(
        "SELECT c_custkey, o_orderkey FROM customer "
        "LEFT JOIN (SELECT * FROM orders WHERE o_totalprice < 0) o ON c_custkey = o_custkey "
        "WHERE c_nationkey = 1"
    ),
    "join_with_empty_table": Q("SELECT a.n, e.g FROM nulls_a a JOIN empty_t e ON a.k = e.k"),
    "left_join_with_empty_table": Q("SELECT a.n, e.g FROM nulls_a a LEFT JOIN empty_t e ON a.k = e.k"),
    "nothing_below_window": Q(
        "SELECT o_orderkey, rank() OVER (PARTITION BY o_custkey ORDER BY o_totalprice) AS r "
        "FROM orders WHERE o_totalprice < 0"
    ),
    "global_window_over_empty": Q(
        "SELECT k, row_number() OVER (ORDER BY k) AS rn FROM empty_t", spread=False
    ),
    "nothing_below_sort_limit": Q(
        "SELECT l_orderkey, l_comment FROM lineitem WHERE l_quantity > 1000 ORDER BY l_orderkey LIMIT 10"
    ),
    "nothing_in_any_union_branch": Q(
        "SELECT k FROM empty_t UNION ALL SELECT o_custkey FROM orders WHERE o_totalprice < 0"
    ),
    # producers that write no rows report no schema: the mesh reads it from EXPLAIN text
    "nested_types_nothing_gathered": Q("SELECT * FROM typed WHERE id < 0"),
    "nested_types_nothing_shuffled": Q(
        "SELECT st, l, count(*) AS n, max(tstz) AS t, sum(dec) AS s FROM typed WHERE id < 0 GROUP BY st, l"
    ),
    "exotic_types_nothing_gathered": Q("SELECT * FROM exotic WHERE id < 0"),
    "exotic_types_nothing_shuffled": Q(
        "SELECT dict, m, fsb, nested, count(*) AS n, max(tsb) AS t, sum(d256) AS s, min(dur) AS du "
        "FROM exotic WHERE id < 0 GROUP BY dict, m, fsb, nested"
    ),
    "odd_names_nothing_gathered": Q('SELECT * FROM odd WHERE "a, b" < 0'),
    "odd_names_nothing_shuffled": Q(
        'SELECT "c d", "list<int>", sum("e:f") AS s, count("Ünï") AS n FROM odd WHERE "a, b" < 0 '
        'GROUP BY "c d", "list<int>"'
    ),
    "wide_nothing_gathered": Q("SELECT * FROM wide WHERE c000 < 0"),
    "wide_duplicate_names_nothing_joined": Q(
        "SELECT * FROM wide a JOIN wide b ON a.c000 = b.c000 WHERE a.c003 = 'nothing'"
    ),
    "csv_nothing_shuffled": Q("SELECT g, count(*) AS n FROM csv_t WHERE v < 0 GROUP BY g"),
    "json_nothing_gathered": Q("SELECT * FROM json_t WHERE id < 0"),
}


def _wide_aggregate() -> str:
    aggs = ", ".join(f"max(c{j:03d}) AS m{j:03d}" for j in range(1, WIDE_COLUMNS))
    return f"SELECT c000 % 7 AS b, count(*) AS n, {aggs} FROM wide GROUP BY 1"


SHAPES = {
    "wide_select_all": Q("SELECT * FROM wide"),
    "wide_aggregate_all_columns": Q(_wide_aggregate()),
    "wide_distinct": Q("SELECT DISTINCT * FROM wide WHERE c000 % 2 = 0"),
    "wide_topk": Q("SELECT * FROM wide ORDER BY c000 DESC LIMIT 50"),
    "wide_self_join_duplicate_names": Q("SELECT * FROM wide a JOIN wide b ON a.c000 = b.c000 + 1"),
    "duplicate_names_join": Q("SELECT a.k, b.k FROM nulls_a a JOIN nulls_b b ON a.k = b.k"),
    "duplicate_names_through_shuffle": Q(
        "SELECT a.k, b.k, count(*) AS n FROM nulls_a a JOIN nulls_b b ON a.g = b.label GROUP BY a.k, b.k",
        p2=True,
    ),
    "duplicate_names_tpch": Q(
        "SELECT a.o_custkey, b.o_custkey, a.o_orderkey, b.o_orderkey FROM orders a JOIN orders b "
        "ON a.o_orderkey = b.o_orderkey + 1 WHERE a.o_custkey = b.o_custkey"
    ),
    "big_group_by": Q(
        "SELECT grp, count(*) AS n, sum(val) AS s, min(id) AS lo, max(id) AS hi FROM big GROUP BY grp"
    ),
    "big_topk": Q("SELECT id, grp FROM big ORDER BY grp DESC, id DESC LIMIT 100"),
    "big_ordered_result": Q("SELECT id, grp FROM big WHERE id % 4 = 0 ORDER BY grp, id"),
    "array_agg_through_shuffle": Q(
        "SELECT id % 7 AS b, array_agg(s ORDER BY id) AS ss, array_agg(dec ORDER BY id) AS ds "
        "FROM typed GROUP BY 1",
        p2=True,
    ),
    "array_agg_of_lists": Q(
        "SELECT id % 5 AS b, array_agg(l ORDER BY id) AS ls, array_agg(st ORDER BY id) AS sts "
        "FROM typed WHERE id < 200 GROUP BY 1"
    ),
    "array_agg_tpch": Q(
        "SELECT o_custkey, array_agg(o_orderkey ORDER BY o_orderkey) AS keys FROM orders "
        "WHERE o_custkey < 2000 GROUP BY o_custkey"
    ),
    "group_by_struct": Q("SELECT st, count(*) AS n, sum(dec) AS s FROM typed GROUP BY st"),
    "group_by_list": Q("SELECT l, count(*) AS n FROM typed GROUP BY l"),
    "struct_fields_grouped": Q(
        "SELECT st['b'] AS b, sum(st['a']) AS a, count(DISTINCT flag) AS f FROM typed GROUP BY 1"
    ),
    "nested_through_join": Q(
        "SELECT a.id, a.l, a.st, b.st AS st2, b.tstz FROM typed a JOIN typed b ON a.id = b.id + 1 "
        "WHERE a.id % 10 = 0"
    ),
    "unnest_column_grouped": Q("SELECT x, count(*) AS n FROM (SELECT unnest(l) AS x FROM typed) GROUP BY x"),
    "temporal_decimal_grouped": Q(
        "SELECT date_trunc('day', tstz) AS day, count(*) AS n, min(ts) AS t0, max(d) AS d1, "
        "sum(dec) AS s, avg(dec) AS a FROM typed GROUP BY 1"
    ),
    "all_types_ordered": Q("SELECT * FROM typed ORDER BY id"),
    "strings_unicode_grouped": Q("SELECT s, count(*) AS n, max(ts) AS t FROM typed GROUP BY s"),
    "exotic_types_gathered": Q("SELECT * FROM exotic"),
    "exotic_types_aggregated": Q(
        "SELECT id % 5 AS b, count(*) AS n, min(u64) AS u, max(f32) AS f, min(bin) AS bi, max(fsb) AS fb, "
        "max(ls) AS l, min(t64) AS t, max(tsb) AS ts, sum(d256) AS d, min(dur) AS du, max(i8) AS i "
        "FROM exotic GROUP BY 1",
        p2=True,
    ),
    "dictionary_fixed_binary_group_keys": Q("SELECT dict, fsb, count(*) AS n FROM exotic GROUP BY dict, fsb"),
    # a map as a shuffle key: pyarrow renames a map's entries field ("key_value" -> "entries"), so the
    # consumer of the shuffle cannot start; the query is re-planned with the exchange kept (one peer)
    "map_group_key": Q("SELECT m, count(*) AS n FROM exotic GROUP BY m", spread=False),
    "map_payload_through_shuffle": Q(
        "SELECT id, m, row_number() OVER (PARTITION BY id % 5 ORDER BY id) AS rn FROM exotic"
    ),
    "map_through_partitioned_join": Q(
        "SELECT a.id, a.m, b.m AS m2 FROM exotic a JOIN exotic b ON a.id = b.id", smj=True
    ),
    "exotic_nested_group_key": Q("SELECT nested, fsl, count(*) AS n FROM exotic GROUP BY nested, fsl"),
    "exotic_types_through_join": Q(
        "SELECT a.*, b.id AS id2 FROM exotic a JOIN exotic b ON a.id = b.id + 1 WHERE a.id % 7 = 0"
    ),
    "odd_names_gathered": Q("SELECT * FROM odd"),
    "odd_names_shuffled": Q(
        'SELECT "c d", "list<int>", sum("e:f") AS s, count("Ünï") AS n, bool_or("g""h") AS b FROM odd '
        'GROUP BY "c d", "list<int>"'
    ),
    "constructed_struct_group": Q(
        "SELECT struct(o_orderstatus, o_orderpriority) AS s, count(*) AS n FROM orders GROUP BY 1"
    ),
}

FILES = {
    "csv_group": Q("SELECT g, count(*) AS n, sum(v) AS s, count(k) AS nk FROM csv_t GROUP BY g", p2=True),
    "csv_distinct_keys": Q("SELECT DISTINCT k FROM csv_t"),
    "csv_join_parquet": Q(
        "SELECT n_name, count(*) AS n, sum(c.v) AS s FROM csv_t c JOIN nation ON c.k % 25 = n_nationkey "
        "GROUP BY n_name"
    ),
    "csv_window": Q(
        "SELECT id, g, rank() OVER (PARTITION BY g ORDER BY v DESC) AS r FROM csv_t WHERE id % 10 = 0"
    ),
    "json_group": Q("SELECT name, count(*) AS n, sum(score) AS s, count(k) AS nk FROM json_t GROUP BY name"),
    "json_join_csv": Q(
        "SELECT j.name, c.g, count(*) AS n FROM json_t j JOIN csv_t c ON j.k = c.k GROUP BY 1, 2",
        p2=True,
    ),
    "json_unnest_lists": Q(
        "SELECT tag, count(*) AS n FROM (SELECT unnest(tags) AS tag FROM json_t) GROUP BY tag"
    ),
    "json_struct_field_group": Q(
        "SELECT info['a'] AS a, count(*) AS n, max(info['b']) AS b FROM json_t GROUP BY 1"
    ),
    "json_struct_group_key": Q("SELECT info, count(*) AS n FROM json_t GROUP BY info"),
    "json_ordered": Q("SELECT id, name, score FROM json_t WHERE score > 90 ORDER BY score DESC, id"),
}

FAMILIES: dict[str, dict[str, Q]] = {
    "window": WINDOWS,
    "setop": SET_OPS,
    "join": JOINS,
    "agg": AGGREGATES,
    "subquery": SUBQUERIES,
    "limit": LIMITS,
    "notable": NO_TABLE,
    "empty": EMPTY,
    "shape": SHAPES,
    "files": FILES,
}
ALL = {f"{family}-{name}": q for family, queries in FAMILIES.items() for name, q in queries.items()}
TWO_PARTITIONS = sorted(name for name, q in ALL.items() if q.p2)
SORT_MERGE = sorted(name for name, q in ALL.items() if q.smj)


# ---------------------------------------------------------------------------------------------- data
def _write_parquet_parts(table: pa.Table, folder: Path, parts: int) -> Path:
    """``table`` as ``parts`` Parquet files in ``folder``: even a small table scans as several partitions."""
    folder.mkdir(parents=True)
    n = table.num_rows
    for i in range(parts):
        lo, hi = i * n // parts, (i + 1) * n // parts
        pq.write_table(table.slice(lo, hi - lo), folder / f"part-{i}.parquet")
    return folder


def _nulls_tables(rng: random.Random) -> tuple[pa.Table, pa.Table]:
    """NULL keys, duplicate keys, NULL values; the two key ranges overlap only in part."""
    a_rows = 3000
    a = pa.table(
        {
            "n": pa.array(range(a_rows), pa.int64()),
            "k": pa.array(
                [None if rng.random() < 0.1 else rng.randrange(100) for _ in range(a_rows)], pa.int64()
            ),
            "g": pa.array([rng.choice(["a", "b", "c", None]) for _ in range(a_rows)], pa.string()),
            "v": pa.array(
                [None if rng.random() < 0.15 else round(rng.uniform(-100, 100), 2) for _ in range(a_rows)],
                pa.float64(),
            ),
        }
    )
    b_rows = 1200
    b = pa.table(
        {
            "w": pa.array(range(b_rows), pa.int64()),
            "k": pa.array(
                [None if rng.random() < 0.1 else rng.randrange(50, 150) for _ in range(b_rows)], pa.int64()
            ),
            "label": pa.array([rng.choice(["a", "b", "d", None]) for _ in range(b_rows)], pa.string()),
        }
    )
    return a, b


def _wide_table(rows: int) -> pa.Table:
    columns: dict[str, pa.Array] = {"c000": pa.array(range(rows), pa.int64())}
    for j in range(1, WIDE_COLUMNS):
        if j % 3 == 0:
            columns[f"c{j:03d}"] = pa.array([f"s{(i + j) % 50}" for i in range(rows)], pa.string())
        elif j % 3 == 1:
            columns[f"c{j:03d}"] = pa.array(
                [None if (i + j) % 13 == 0 else (i * j) % 97 for i in range(rows)], pa.int64()
            )
        else:
            columns[f"c{j:03d}"] = pa.array([((i * j) % 1000) / 8 for i in range(rows)], pa.float64())
    return pa.table(columns)


def _typed_table(rng: random.Random, rows: int) -> pa.Table:
    base = dt.datetime(2024, 1, 1, 0, 0, 0)
    words = ["alpha", "beta", "gamma", "Grüße", "naïve", "日本", "", None]
    lists: list[list[int] | None] = []
    for i in range(rows):
        if i % 17 == 0:
            lists.append(None)
        else:
            lists.append([rng.randrange(20) for _ in range(i % 4)])
    struct_type = pa.struct([("a", pa.int64()), ("b", pa.string())])
    structs = [None if i % 23 == 0 else {"a": i % 11, "b": f"b{i % 3}"} for i in range(rows)]
    return pa.table(
        {
            "id": pa.array(range(rows), pa.int64()),
            "ts": pa.array([base + dt.timedelta(minutes=37 * i) for i in range(rows)], pa.timestamp("us")),
            "tstz": pa.array(
                [base.replace(tzinfo=dt.UTC) + dt.timedelta(minutes=53 * i) for i in range(rows)],
                pa.timestamp("us", tz="UTC"),
            ),
            "d": pa.array(
                [dt.date(2020, 1, 1) + dt.timedelta(days=i % 900) for i in range(rows)], pa.date32()
            ),
            "dec": pa.array(
                [None if i % 19 == 0 else Decimal(rng.randrange(-(10**6), 10**6)) / 100 for i in range(rows)],
                pa.decimal128(12, 2),
            ),
            "s": pa.array([words[i % len(words)] for i in range(rows)], pa.string()),
            "l": pa.array(lists, pa.list_(pa.int64())),
            "st": pa.array(structs, struct_type),
            "flag": pa.array([None if i % 29 == 0 else i % 3 == 0 for i in range(rows)], pa.bool_()),
        }
    )


def _exotic_table(rows: int) -> pa.Table:
    """Types beyond the usual: unsigned, small ints, binary, maps, fixed-size lists, zones, durations."""
    berlin = dt.datetime(2024, 3, 31, 0, 0, tzinfo=dt.UTC)  # crosses a daylight-saving change
    return pa.table(
        {
            "id": pa.array(range(rows), pa.int64()),
            "i8": pa.array([i % 100 - 50 for i in range(rows)], pa.int8()),
            "u64": pa.array([2**63 + i * 7919 for i in range(rows)], pa.uint64()),
            "f32": pa.array([None if i % 31 == 0 else i / 3 for i in range(rows)], pa.float32()),
            "bin": pa.array([bytes([i % 256, 0, (i * 7) % 256]) for i in range(rows)], pa.binary()),
            "fsb": pa.array([bytes([i % 5]) * 4 for i in range(rows)], pa.binary(4)),
            "ls": pa.array([f"L{i % 97}" for i in range(rows)], pa.large_string()),
            "t64": pa.array([dt.time(i % 24, (i * 7) % 60) for i in range(rows)], pa.time64("us")),
            "tsb": pa.array(
                [berlin + dt.timedelta(minutes=17 * i) for i in range(rows)],
                pa.timestamp("ms", tz="Europe/Berlin"),
            ),
            "m": pa.array(
                [None if i % 13 == 0 else [("a", i % 3), ("b", None)] for i in range(rows)],
                pa.map_(pa.string(), pa.int64()),
            ),
            "d256": pa.array([Decimal(i * 37 % 10007) / 1000 for i in range(rows)], pa.decimal256(40, 3)),
            "fsl": pa.array([[i % 3, (i + 1) % 2] for i in range(rows)], pa.list_(pa.int32(), 2)),
            "dict": pa.array([["p", "q", None][i % 3] for i in range(rows)]).dictionary_encode(),
            "dur": pa.array([dt.timedelta(seconds=i * 11) for i in range(rows)], pa.duration("s")),
            "nested": pa.array([{"x": [i % 4, None], "y": {"z": f"s{i % 2}"}} for i in range(rows)]),
        }
    )


def _odd_names_table(rows: int) -> pa.Table:
    """Column names that break naive parsers: commas, spaces, colons, quotes, type-like text, non-ASCII."""
    return pa.table(
        {
            "a, b": pa.array(range(rows), pa.int64()),
            "c d": pa.array([f"v{i % 4}" for i in range(rows)], pa.string()),
            "e:f": pa.array([i / 4 for i in range(rows)], pa.float64()),
            'g"h': pa.array([i % 3 == 0 for i in range(rows)], pa.bool_()),
            "Ünï": pa.array([None if i % 2 else i for i in range(rows)], pa.int64()),
            "list<int>": pa.array([i % 6 for i in range(rows)], pa.int64()),
        }
    )


def _write_csv_json(rng: random.Random, base: Path) -> tuple[Path, Path]:
    csv_dir, json_dir = base / "csv_t", base / "json_t"
    csv_dir.mkdir()
    json_dir.mkdir()
    rows = 30_000
    table = pa.table(
        {
            "id": pa.array(range(rows), pa.int64()),
            "k": pa.array(
                [None if rng.random() < 0.05 else rng.randrange(400) for _ in range(rows)], pa.int64()
            ),
            "g": pa.array([rng.choice(["x", "y", "z", "w"]) for _ in range(rows)], pa.string()),
            "v": pa.array([round(rng.uniform(0, 1000), 3) for _ in range(rows)], pa.float64()),
        }
    )
    for i in range(3):
        lo, hi = i * rows // 3, (i + 1) * rows // 3
        pacsv.write_csv(table.slice(lo, hi - lo), csv_dir / f"part-{i}.csv")
    names = ["ann", "bob", "cy", "dee", "eve"]
    tags = ["red", "green", "blue"]
    jrows = 20_000
    for i in range(3):
        with open(json_dir / f"part-{i}.json", "w", encoding="utf-8") as f:
            for r in range(i * jrows // 3, (i + 1) * jrows // 3):
                obj = {
                    "id": r,
                    "k": None if r % 21 == 0 else rng.randrange(400),
                    "name": names[r % len(names)],
                    "score": round(rng.uniform(0, 100), 2),
                    "tags": [rng.choice(tags) for _ in range(r % 3)],
                    "info": {"a": r % 5, "b": names[r % 2]},
                }
                f.write(json.dumps(obj) + "\n")
    return csv_dir, json_dir


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[str, Path]]]:
    """Purpose-built tables: name -> (format, path)."""
    base = tmp_path_factory.mktemp("operators-data")
    rng = random.Random(20240607)
    nulls_a, nulls_b = _nulls_tables(rng)
    out: dict[str, tuple[str, Path]] = {
        "nulls_a": ("parquet", _write_parquet_parts(nulls_a, base / "nulls_a", 4)),
        "nulls_b": ("parquet", _write_parquet_parts(nulls_b, base / "nulls_b", 3)),
        "wide": ("parquet", _write_parquet_parts(_wide_table(2000), base / "wide", 4)),
        "typed": ("parquet", _write_parquet_parts(_typed_table(rng, 4000), base / "typed", 4)),
        "exotic": ("parquet", _write_parquet_parts(_exotic_table(1500), base / "exotic", 4)),
        "odd": ("parquet", _write_parquet_parts(_odd_names_table(1000), base / "odd", 3)),
    }
    empty = pa.schema([("k", pa.int64()), ("g", pa.string()), ("v", pa.float64())]).empty_table()
    pq.write_table(empty, base / "empty_t.parquet")
    out["empty_t"] = ("parquet", base / "empty_t.parquet")
    gen = SessionContext()
    big = gen.sql(
        f"SELECT value AS id, value % 1000 AS grp, CAST(value AS DOUBLE) * 0.25 AS val FROM range({BIG_ROWS})"
    ).to_arrow_table()
    pq.write_table(big, base / "big.parquet", row_group_size=BIG_ROWS // 10)  # one file, byte-range split
    out["big"] = ("parquet", base / "big.parquet")
    csv_dir, json_dir = _write_csv_json(rng, base)
    out["csv_t"] = ("csv", csv_dir)
    out["json_t"] = ("json", json_dir)
    yield out
    shutil.rmtree(base, ignore_errors=True)


def _register(target: Any, tpch_data: Path, tables: dict[str, tuple[str, Path]]) -> None:
    """Register TPC-H and the purpose-built tables in a Mesh or a SessionContext (same calls)."""
    tpch.register_all(target, tpch_data)
    for name, (fmt, path) in tables.items():
        getattr(target, f"register_{fmt}")(name, str(path))


@pytest.fixture(scope="module")
def expected(tpch_data: Path, tables: dict[str, tuple[str, Path]]) -> Callable[[str], pa.Table]:
    """``expected(sql)``: single-process DataFusion's answer, computed once per query text."""
    ctx = SessionContext(SessionConfig().with_target_partitions(2))
    _register(ctx, tpch_data, tables)
    cache: dict[str, pa.Table] = {}

    def answer(sql: str) -> pa.Table:
        if sql not in cache:
            cache[sql] = ctx.sql(sql).to_arrow_table()
        return cache[sql]

    return answer


def _everything_distributed(**options: Any) -> dict[str, Any]:
    """Mesh options that send every splittable stage to all peers, however small the query.

    ``min_task_bytes=1``, and the adaptive gate that keeps small queries in-process turned off.
    """
    return {**options, "min_task_bytes": 1, "local_below_bytes": 0}


@pytest.fixture(scope="module")
def mesh(
    tpch_data: Path, tables: dict[str, tuple[str, Path]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Mesh]:
    """3 peers; every stage with more than one partition and any bytes is split over all of them."""
    base = tmp_path_factory.mktemp("operators-mesh")
    with local_mesh(**_everything_distributed(workers=3, work_dir=base)) as m:
        _register(m, tpch_data, tables)
        yield m
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def mesh_p2(
    tpch_data: Path, tables: dict[str, tuple[str, Path]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Mesh]:
    """The same peers' shape planned with 2 shuffle partitions (fewer partitions than peers)."""
    base = tmp_path_factory.mktemp("operators-mesh-p2")
    with local_mesh(**_everything_distributed(workers=3, partitions=2, work_dir=base)) as m:
        _register(m, tpch_data, tables)
        yield m
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def mesh_smj(
    tpch_data: Path, tables: dict[str, tuple[str, Path]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Mesh]:
    """3 peers planning sort-merge joins (SortMergeJoinExec over sorted shuffles) instead of hash joins."""
    base = tmp_path_factory.mktemp("operators-mesh-smj")
    settings = {"datafusion.optimizer.prefer_hash_join": "false"}
    with local_mesh(**_everything_distributed(workers=3, settings=settings, work_dir=base)) as m:
        _register(m, tpch_data, tables)
        yield m
    shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- checks
def _type_text(t: pa.DataType) -> str:
    """A type with the harmless differences (view / large / dictionary, list field names) removed."""
    if pat.is_dictionary(t):
        return _type_text(t.value_type)
    if pat.is_string(t) or pat.is_large_string(t) or pat.is_string_view(t):
        return "string"
    if pat.is_binary(t) or pat.is_large_binary(t) or pat.is_binary_view(t):
        return "binary"
    if pat.is_list(t) or pat.is_large_list(t) or pat.is_list_view(t) or pat.is_large_list_view(t):
        return f"list<{_type_text(t.value_type)}>"
    if pat.is_struct(t):
        return "struct<" + ", ".join(f"{f.name}: {_type_text(f.type)}" for f in t) + ">"
    return str(t)


def _rows(table: pa.Table) -> list[tuple[Any, ...]]:
    return list(zip(*(c.to_pylist() for c in table.columns), strict=True)) if table.num_columns else []


def _hashable(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    return v


def _assert_subset(got: pa.Table, full: pa.Table) -> None:
    """Every row of ``got`` is a distinct row of ``full`` (multisets)."""
    have = Counter(tuple(_hashable(v) for v in row) for row in _rows(full))
    for row in _rows(got):
        key = tuple(_hashable(v) for v in row)
        assert have[key] > 0, f"row {row} is not in the full answer (or appears too often)"
        have[key] -= 1


def _first_difference(got: pa.Table, want: pa.Table) -> str | None:
    """Arrow-level exact comparison of two equally long tables, by position: the first difference."""
    for i, (a, b) in enumerate(zip(got.columns, want.columns, strict=True)):
        a = a.combine_chunks()
        b = b.cast(a.type).combine_chunks() if a.type != b.type else b.combine_chunks()
        same = pc.fill_null(pc.equal(a, b), False)
        same = pc.or_(same, pc.and_(pc.is_null(a), pc.is_null(b)))
        if not pc.all(same).as_py():
            row = pc.index(same, False).as_py()
            return f"row {row}, column {got.column_names[i]}: actual {a[row]}, expected {b[row]}"
    return None


def _compare_large(got: pa.Table, want: pa.Table, ordered: bool) -> str | None:
    """compare_tables for answers too long to compare value by value in Python (exact types only)."""
    if got.column_names != want.column_names or got.num_rows != want.num_rows:
        return (
            f"shape differs: actual {got.column_names} x {got.num_rows}, "
            f"expected {want.column_names} x {want.num_rows}"
        )
    if not ordered:
        names = got.column_names  # sort by every column; positional names survive duplicate names
        keys = [(f"c{i}", "ascending") for i in range(got.num_columns)]
        got = got.rename_columns([k for k, _ in keys]).sort_by(keys).rename_columns(names)
        want = want.rename_columns([k for k, _ in keys]).sort_by(keys).rename_columns(names)
        return None if (d := _first_difference(got, want)) is None else f"after sorting, {d}"
    return _first_difference(got, want)


def _check(got: pa.Table, want: pa.Table, q: Q, expected: Callable[[str], pa.Table]) -> None:
    assert [_type_text(f.type) for f in got.schema] == [_type_text(f.type) for f in want.schema], (
        f"result types differ: actual {got.schema}, expected {want.schema}"
    )
    if q.check == "subset":
        assert q.full is not None
        assert got.num_rows == want.num_rows, f"{got.num_rows} rows, expected {want.num_rows}"
        _assert_subset(got, expected(q.full))
        return
    if q.check == "ties":
        assert q.full is not None
        assert got.num_rows == want.num_rows, f"{got.num_rows} rows, expected {want.num_rows}"
        assert got.select(list(q.keys)).to_pylist() == want.select(list(q.keys)).to_pylist()
        _assert_subset(got, expected(q.full))
        return
    ordered = query_is_ordered(q.sql)
    if max(got.num_rows, want.num_rows) > FAST_COMPARE_ROWS:
        diff = _compare_large(got, want, ordered)
    else:
        diff = compare_tables(got, want, ordered=ordered, lenient_ties=q.ties)
    assert diff is None, diff


def _check_spread(mesh: Mesh, q: Q, rows: int) -> None:
    run = mesh.last_run
    assert run is not None and run.rows == rows, str(run)
    if q.spread:
        assert len(run.peers_used) > 1, (
            f"ran on {len(run.peers_used)} peer(s), expected more than one:\n{run}"
        )


# ---------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("name", list(ALL))
def test_operator(mesh: Mesh, expected: Callable[[str], pa.Table], name: str) -> None:
    q = ALL[name]
    want = expected(q.sql)
    got = mesh.sql(q.sql)
    _check(got, want, q, expected)
    _check_spread(mesh, q, got.num_rows)


@pytest.mark.parametrize("name", TWO_PARTITIONS)
def test_operator_with_two_shuffle_partitions(
    mesh_p2: Mesh, expected: Callable[[str], pa.Table], name: str
) -> None:
    q = ALL[name]
    got = mesh_p2.sql(q.sql)
    _check(got, expected(q.sql), q, expected)
    _check_spread(mesh_p2, q, got.num_rows)


@pytest.mark.parametrize("name", SORT_MERGE)
def test_join_as_sort_merge_join(mesh_smj: Mesh, expected: Callable[[str], pa.Table], name: str) -> None:
    q = ALL[name]
    assert "SortMergeJoinExec" in mesh_smj.explain(q.sql)
    got = mesh_smj.sql(q.sql)
    _check(got, expected(q.sql), q, expected)
    _check_spread(mesh_smj, q, got.num_rows)


def test_very_large_result_as_one_table(mesh: Mesh, expected: Callable[[str], pa.Table]) -> None:
    sql = "SELECT id, grp, val FROM big"
    got = mesh.sql(sql)
    assert got.num_rows == BIG_ROWS
    diff = _compare_large(got, expected(sql), ordered=False)
    assert diff is None, diff
    run = mesh.last_run
    assert run is not None and len(run.peers_used) == 3, str(run)
    assert len(run.stages[0].tasks) == 3, str(run)  # one file, split into byte ranges over all peers


def test_very_large_result_batch_by_batch(mesh: Mesh, expected: Callable[[str], pa.Table]) -> None:
    sql = "SELECT id, val, grp FROM big WHERE grp < 900"
    want = expected(
        "SELECT count(*) AS n, sum(id) AS ids, sum(val) AS vals, min(id) AS lo, max(id) AS hi "
        "FROM big WHERE grp < 900"
    ).to_pylist()[0]
    rows = batches = ids = 0
    vals = 0.0
    lo, hi = None, None
    sample: list[tuple[int, float, int]] = []
    schema = None
    for batch in mesh.sql_batches(sql):
        schema = schema or batch.schema
        assert batch.schema == schema, "batches of one result must share a schema"
        batches += 1
        rows += batch.num_rows
        if batch.num_rows == 0:
            continue
        ids += pc.sum(batch.column("id")).as_py()
        vals += pc.sum(batch.column("val")).as_py()
        mm = pc.min_max(batch.column("id")).as_py()
        lo = mm["min"] if lo is None else min(lo, mm["min"])
        hi = mm["max"] if hi is None else max(hi, mm["max"])
        picked = batch.filter(pc.equal(pc.bit_wise_and(batch.column("id"), 0xFFFF), 0x1234))
        sample.extend(zip(*(picked.column(c).to_pylist() for c in ("id", "val", "grp")), strict=True))
    assert (rows, ids, lo, hi) == (want["n"], want["ids"], want["lo"], want["hi"])
    assert vals == pytest.approx(want["vals"], rel=1e-12)
    assert batches > 1, "a 1.8M-row result should stream as more than one batch"
    want_sample = expected(
        "SELECT id, val, grp FROM big WHERE grp < 900 AND (id & 65535) = 4660 ORDER BY id"
    ).to_pylist()
    assert sorted(sample) == [(r["id"], r["val"], r["grp"]) for r in want_sample]
    assert len(sample) > 10
    run = mesh.last_run
    assert run is not None and run.rows == rows and len(run.peers_used) > 1, str(run)


def test_empty_results_keep_their_schema(mesh: Mesh, expected: Callable[[str], pa.Table]) -> None:
    for sql in (
        EMPTY["nothing_below_join"].sql,
        EMPTY["nothing_below_window"].sql,
        EMPTY["filter_matches_nothing"].sql,
        LIMITS["limit_zero"].sql,
    ):
        got, want = mesh.sql(sql), expected(sql)
        assert got.num_rows == 0 == want.num_rows
        assert got.column_names == want.column_names, sql
        assert [_type_text(t) for t in got.schema.types] == [_type_text(t) for t in want.schema.types], sql
        batches = list(mesh.sql_batches(sql))
        assert sum(b.num_rows for b in batches) == 0


def test_map_group_key_is_replanned_with_the_exchange_kept(mesh: Mesh) -> None:
    mesh.sql(SHAPES["map_group_key"].sql)
    run = mesh.last_run
    assert run is not None and run.kept, str(run)
    assert "column types must match" in " ".join(run.kept.values())
