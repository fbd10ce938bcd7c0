"""The README's main command builds the book: every chapter executes and its figures are in the HTML."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_book_builds_offline_with_executed_chapters_and_figures(tmp_path):
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    if not jupyter_book.exists():
        pytest.skip("jupyter-book is not installed in this environment (pip install -e '.[book]')")
    shutil.copytree(ROOT, tmp_path / "book", ignore=shutil.ignore_patterns(".venv", "_build", "runs", ".git"))
    result = subprocess.run([str(jupyter_book), "build", "--all", "--warningiserror", "--keep-going",
                             str(tmp_path / "book")], capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    html = tmp_path / "book" / "_build" / "html"
    for page in ("intro.html", "chapters/first_principles.html", "chapters/q8bert.html",
                 "chapters/qbert_sensitivity.html", "chapters/qbert_low_precision.html",
                 "chapters/quant_noise.html", "chapters/side_by_side.html",
                 "chapters/int8_speed.html", "chapters/status.html"):
        assert (html / page).is_file(), page
    chapter = (html / "chapters" / "first_principles.html").read_text()
    assert chapter.count("<img") >= 5, "chapter 1's figures are missing from the HTML"
    assert "Traceback" not in chapter
