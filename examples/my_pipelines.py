"""Pipelines declared in Python: flow run --module my_pipelines customer_tiers (from this folder)."""

from pathlib import Path

import ematix_flow as ematix
from ematix_flow import Source, Target


@ematix.pipeline(
    sources={"customers": Source("csv", path="data/customers.csv")},
    target=Target("sqlite", path="warehouse.sqlite", table="customer_tiers", mode="merge", keys=["tier"]),
    base_dir=Path(__file__).parent,  # relative paths start here
)
def customer_tiers() -> str:
    """Customers per tier, upserted on the tier."""
    return "SELECT tier, count(*) AS customers FROM customers GROUP BY tier"
