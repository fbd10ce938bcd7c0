"""The README's main command builds the book: every chapter executes and its figures are in the HTML; and the built
book, opened in headless Chromium at a 1280-pixel window as a reader would, has no element wider than its content
column outside a scroll box of its own, no image that did not load or lacks a caption, no formula left as raw TeX
(MathJax ships with the build: the book reads offline), no "nan", traceback or display object's repr in its text,
and every page in its navigation. A screenshot of each page is kept under ``_build/screenshots`` for a person to
look at."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "_build" / "screenshots"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def toc_pages() -> list[str]:
    """Every page of ``_toc.yml``, as the path of its HTML file under the build."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    pages = [toc["root"]]

    def walk(entries):
        for entry in entries:
            pages.append(entry["file"])
            walk(entry.get("sections", []))

    for part in toc["parts"]:
        walk(part["chapters"])
    return [f"{page}.html" for page in pages]


@pytest.fixture(scope="module")
def built_book(tmp_path_factory) -> Path:
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    if not jupyter_book.exists():
        pytest.skip("jupyter-book is not installed in this environment (pip install -e '.[book]')")
    book = tmp_path_factory.mktemp("book") / "book"
    shutil.copytree(ROOT, book, ignore=shutil.ignore_patterns(".venv", "_build", "runs", ".git"))
    result = subprocess.run([str(jupyter_book), "build", "--all", "--warningiserror", "--keep-going", str(book)],
                            capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return book / "_build" / "html"


@pytest.mark.slow
def test_book_builds_offline_with_executed_chapters_and_figures(built_book):
    for page in toc_pages():
        assert (built_book / page).is_file(), page
    chapter = (built_book / "chapters" / "first_principles.html").read_text()
    assert chapter.count("<img") >= 5, "chapter 1's figures are missing from the HTML"
    assert "Traceback" not in chapter


# MathJax typesets after the page loads: wait for its startup promise (or go on at once where the page has none).
MATH_TYPESET = """
const done = arguments[arguments.length - 1];
if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
  MathJax.startup.promise.then(() => done(true), () => done(false));
} else { done(null); }
"""

PAGE_CHECK = """
const column = document.querySelector('article.bd-article') || document.querySelector('main');
const right = column.getBoundingClientRect().right + 2;
const scrolls = el => ['auto', 'scroll'].includes(getComputedStyle(el).overflowX);
const wide = [];
for (const el of column.querySelectorAll('*')) {
  const box = el.getBoundingClientRect();
  if (box.width === 0 || box.right <= right) continue;
  let boxed = false;
  for (let up = el.parentElement; up && up !== column.parentElement; up = up.parentElement) {
    if (scrolls(up) && up.getBoundingClientRect().right <= right) { boxed = true; break; }
  }
  if (!boxed && !(scrolls(el) && el.clientWidth <= column.clientWidth)) {
    wide.push(el.tagName.toLowerCase() + (el.className ? '.' + String(el.className).split(' ')[0] : '')
              + ' ' + Math.round(box.right - right + 2) + 'px past the column');
  }
}
const broken = [...column.querySelectorAll('img')].filter(img => !img.complete || img.naturalWidth === 0)
  .map(img => img.getAttribute('src'));
const nav = [...document.querySelectorAll('nav.bd-docs-nav a, .bd-sidebar-primary a')].map(a => a.href);
const outputs = [...column.querySelectorAll('.cell_output')].map(o => o.innerText).join(' | ');
const rawMath = [...column.querySelectorAll('.math')].filter(m => !m.querySelector('mjx-container'))
  .map(m => m.textContent.trim().slice(0, 40));
const uncaptioned = [...column.querySelectorAll('.cell_output img')]
  .filter(img => !(img.closest('figure') && img.closest('figure').querySelector('figcaption'))).length;
const captionedText = [...column.querySelectorAll('.cell_output figure')]
  .filter(f => f.querySelector('figcaption') && !f.querySelector('img')).length;
const mathjax = [...document.scripts].map(s => s.src).filter(src => /mathjax/i.test(src));
return JSON.stringify({wide: wide.slice(0, 5), wideCount: wide.length, broken: broken, outputs: outputs, nav: nav,
                       rawMath: rawMath.slice(0, 3), rawMathCount: rawMath.length, mathjax: mathjax,
                       uncaptioned: uncaptioned, captionedText: captionedText});
"""


@pytest.fixture(scope="module")
def browser():
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.skip(f"no headless browser here ({', '.join(missing)} missing): `make test` installs Debian's "
                    "chromium and chromium-driver where it runs as root")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,1600", "--hide-scrollbars"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


def full_page(browser, path: Path, width: int = 1280, height: int = 1600) -> None:
    """A screenshot of the whole page at ``width`` pixels (the window stretched to the page's height, at most
    20,000 pixels), then the window set back."""
    tall = min(20_000, int(browser.execute_script("return document.documentElement.scrollHeight")))
    browser.set_window_size(width, max(height, tall))
    browser.save_screenshot(str(path))
    browser.set_window_size(width, height)


@pytest.mark.slow
def test_every_page_reads_well_in_a_browser_at_1280_pixels(built_book, browser):
    import re

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    problems = []
    pages = toc_pages()
    for page in pages:
        browser.get((built_book / page).as_uri())
        browser.execute_async_script(MATH_TYPESET)
        found = json.loads(browser.execute_script(PAGE_CHECK))
        full_page(browser, SCREENSHOTS / (page.replace("/", "_").removesuffix(".html") + ".png"))
        if found["wideCount"]:
            problems.append(f"{page}: {found['wideCount']} element(s) wider than the content column without a "
                            f"scroll box, e.g. {found['wide']}")
        if found["broken"]:
            problems.append(f"{page}: images that did not load: {found['broken']}")
        for pattern, what in ((r"\bnan\b", "'nan'"), (r"Traceback \(most recent call last\)", "a traceback"),
                              (r"<IPython\.core\.display\.\w+ object>", "a display object's repr (an empty Markdown)")):
            match = re.search(pattern, found["outputs"], flags=re.IGNORECASE)
            if match:
                text = found["outputs"][max(0, match.start() - 60):match.end() + 20]
                problems.append(f"{page}: {what} in an output: …{text}…")
        if found["uncaptioned"]:
            problems.append(f"{page}: {found['uncaptioned']} figure(s) without a caption (a code cell's "
                            "`mystnb: figure: caption` metadata)")
        if found["captionedText"]:
            problems.append(f"{page}: a figure caption under {found['captionedText']} output(s) that are not images "
                            "(a captioned cell shows tables or text: move them to a cell of their own)")
        if found["rawMathCount"]:
            problems.append(f"{page}: {found['rawMathCount']} formula(s) left as raw TeX, e.g. {found['rawMath']}")
        remote = [src for src in found["mathjax"] if not src.startswith("file:")]
        if remote:
            problems.append(f"{page}: MathJax is loaded from the network, not the build: {remote}")
        listed = {Path(href.split("#")[0]).as_posix() for href in found["nav"]}
        missing = [p for p in pages if p != "intro.html" and not any(link.endswith(p) for link in listed)]
        if missing:
            problems.append(f"{page}: pages missing from the navigation: {missing}")
    assert not problems, "\n".join(problems)
