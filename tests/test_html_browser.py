"""The report's index.html rendered by headless Chromium (Debian's ``chromium`` package): the page is not blank,
it holds the leaderboard, its table of contents and every table, and every image loads.

Two renderings of the fixture report (``tests/fixtures/run-small-v2`` rows with ``run-small``'s artifacts):

- ``--dump-dom`` of a copy of the page with a small script appended that, once the page has loaded, writes into
  the DOM how many images there are and which of them failed (not complete, or ``naturalWidth`` 0), and how many
  tables; the report itself has no script;
- ``--screenshot`` of the page itself, whose pixels must not all be white.

Without a Chromium binary the test is skipped with the reason, except under CI (the environment variable ``CI``
set), where ``.ci/run`` installs it, so a missing browser fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bench.cli import main

FIXTURES = Path(__file__).parent / "fixtures"
BINARIES = ("chromium", "chromium-browser", "google-chrome")

CHECK_SCRIPT = """<script>
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const failed = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute("src"));
  const out = document.createElement("pre");
  out.id = "image-check";
  const tables = document.querySelectorAll("table").length;
  const width = Math.min(...imgs.map(i => i.naturalWidth));
  out.textContent = JSON.stringify({images: imgs.length, failed: failed, tables: tables, width: width});
  document.body.appendChild(out);
});
</script>"""


def chromium() -> str:
    """The browser binary; skip (fail under CI) without one."""
    for name in BINARIES:
        found = shutil.which(name)
        if found:
            return found
    reason = f"no headless Chromium on this machine (looked for {', '.join(BINARIES)}; `apt-get install chromium`)"
    if os.environ.get("CI"):
        pytest.fail(reason + "; .ci/run installs it, so under CI this is an error")
    pytest.skip(reason)


def run_browser(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
           "--no-first-run", "--allow-file-access-from-files", f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, timeout=90, check=False)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    tmp = tmp_path_factory.mktemp("browser")
    shutil.copytree(FIXTURES / "run-small", tmp / "run")
    shutil.copyfile(FIXTURES / "run-small-v2" / "results.jsonl", tmp / "run" / "results.jsonl")
    assert main(["report", str(tmp / "run"), "-o", str(tmp / "report")]) == 0
    yield tmp / "report"


def test_every_image_loads_and_the_tables_render(report: Path, tmp_path: Path) -> None:
    binary = chromium()
    page = (report / "index.html").read_text(encoding="utf-8")
    assert "<script" not in page, "the report itself is script-free"
    n_img = len(re.findall(r"<img ", page))
    n_tables = len(re.findall(r"<table", page))
    assert n_img >= 8 and n_tables >= 10
    check = report / "check.html"  # beside index.html, so the relative image paths resolve the same way
    check.write_text(page.replace("</body>", CHECK_SCRIPT + "</body>"), encoding="utf-8")
    done = run_browser(binary, tmp_path / "profile", "--virtual-time-budget=10000", "--dump-dom", check.as_uri())
    dom = done.stdout.decode("utf-8", "replace")
    found = re.search(r'<pre id="image-check">(.*?)</pre>', dom, re.S)
    assert found, f"the check script did not run (rc {done.returncode}): {done.stderr.decode()[-2000:]}"
    result = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert result["images"] == n_img
    assert result["failed"] == [], f"images that did not load: {result['failed']}"
    assert result["width"] > 100, "every image has a real width"
    assert result["tables"] == n_tables
    assert 'id="leaderboard"' in dom and '<nav class="toc">' in dom


def test_the_page_is_not_blank(report: Path, tmp_path: Path) -> None:
    binary = chromium()
    shot = tmp_path / "page.png"
    done = run_browser(binary, tmp_path / "profile", "--virtual-time-budget=10000", "--window-size=1400,2400",
                       f"--screenshot={shot}", (report / "index.html").as_uri())
    assert shot.is_file(), f"no screenshot (rc {done.returncode}): {done.stderr.decode()[-2000:]}"
    import matplotlib.image

    pixels = np.asarray(matplotlib.image.imread(shot), dtype=np.float64)[..., :3]
    assert pixels.shape[0] == 2400 and pixels.shape[1] == 1400
    ink: np.ndarray = np.asarray((pixels < 0.9).any(axis=-1))
    assert ink.mean() > 0.02, f"only {ink.mean():.2%} of the screenshot is not white"
    # the text runs down the page, not only in its first lines
    rows_with_ink: np.ndarray = np.asarray(ink.any(axis=1))
    assert rows_with_ink[: 600].any() and rows_with_ink[1800:].any()
