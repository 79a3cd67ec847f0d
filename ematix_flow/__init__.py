"""ematix-flow: SQL over Arrow data on a peer-to-peer mesh of identical ``flow-worker`` processes."""

from __future__ import annotations

__version__ = "0.1.0"
