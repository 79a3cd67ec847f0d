"""Copy a run's results into ``docs/bench/`` and paste its Markdown into ``docs/BENCHMARKS.md``.

The document marks each pasted report with ``<!-- bench:STEM -->`` ... ``<!-- /bench:STEM -->``
(STEM as in ``tpch_sf1``); everything between the two markers is replaced.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

__all__ = ["paste", "publish"]

SUFFIXES = (".md", ".json", ".png")


def paste(doc: str, stem: str, text: str) -> str:
    """``doc`` with the block between the ``stem`` markers replaced by ``text``.

    Raises:
        ValueError: the markers are not in ``doc``.
    """
    pattern = re.compile(
        rf"(<!-- bench:{re.escape(stem)} -->\n).*?(<!-- /bench:{re.escape(stem)} -->)", re.DOTALL
    )
    if not pattern.search(doc):
        raise ValueError(f"no <!-- bench:{stem} --> ... <!-- /bench:{stem} --> block in the document")
    return pattern.sub(lambda m: m.group(1) + text.rstrip("\n") + "\n" + m.group(2), doc, count=1)


def publish(results: Path, stems: list[str], dest: Path, doc: Path) -> list[Path]:
    """Copy ``results/STEM.{md,json,png}`` to ``dest`` and paste each ``STEM.md`` into ``doc``.

    Returns:
        The files written.

    Raises:
        FileNotFoundError: a ``STEM.md`` is missing from ``results``.
        ValueError: ``doc`` has no block for a stem.
    """
    dest.mkdir(parents=True, exist_ok=True)
    text = doc.read_text()
    written: list[Path] = []
    for stem in stems:
        report = results / f"{stem}.md"
        text = paste(text, stem, report.read_text())
        for suffix in SUFFIXES:
            source = results / f"{stem}{suffix}"
            if source.is_file():
                written.append(Path(shutil.copy2(source, dest / source.name)))
    doc.write_text(text)
    written.append(doc)
    return written
