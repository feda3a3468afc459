"""The audit report of a 100-node run, opened in a real headless Chromium (the OS
package that scripts/setup.sh installs): the rendered page holds a table row per node,
sorts it on a click, and shows the one combined epsilon plot."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from cli.audit_report import render_html
from common.audit import audit
from common.privacy import epsilon
from tests.helpers.records import SIGMA, STEPS, Q, federation, rewrite_lines, train_record

pytestmark = pytest.mark.e2e
NODES = [f"node-{i:03d}" for i in range(100)]
# Chromium's own networking and background services stay off: the page is a local file.
HEADLESS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        pytest.skip("chromium is not installed: `bash scripts/setup.sh` installs it with "
                    "apt-get when run as root")
    return found


def hundred_node_report(folder: Path) -> Path:
    """A 3-round run of 100 nodes with different budgets, node-042's tail cut."""
    spent = {r: epsilon([(SIGMA, Q, STEPS)] * r, 1e-5, "prv") for r in (1, 2, 3)}

    def claim(name: str, node_id: int, r: int):  # claims at or above what they spent
        return train_record(r, node_id, epsilon=spent[r] * (1 + node_id % 7 * 0.05),
                            epsilon_budget=8.0 if node_id % 2 else 6.0)

    keys, _, server = federation(folder, NODES, 3, claim)
    rewrite_lines(server, lambda es: [e for e in es if not (
        e["received_from"] == 43 and e["record"]["kind"] == "attestation")])
    page = folder / "report.html"
    page.write_text(render_html(audit(server, keys)))
    return page


def dump_dom(browser: str, page: Path, profile: Path) -> str:
    done = subprocess.run([browser, *HEADLESS, f"--user-data-dir={profile}", "--dump-dom",
                           page.as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_the_100_node_report_renders_sorts_and_plots(tmp_path):
    browser = chromium()
    page = hundred_node_report(tmp_path)
    dom = dump_dom(browser, page, tmp_path / "profile-1")

    table = re.search(r'<table id="nodes".*?<tbody>(.*?)</tbody>', dom, re.S).group(1)
    rows = re.findall(r"<tr>(.*?)</tr>", table, re.S)
    assert len(rows) == 100
    names = [re.search(r"<td>(node-\d+)</td>", row).group(1) for row in rows]
    assert sorted(names) == NODES
    assert sum("FAIL" in row for row in rows) == 1 and "node-042" in next(
        row for row in rows if "FAIL" in row)
    plot = re.search(r'<img id="epsilon-plot"[^>]*src="data:image/png;base64,([^"]+)"', dom)
    assert plot and len(plot.group(1)) > 10_000
    assert dom.count("<details") == 100

    # A click on "eps claimed" sorts the rows by it, as numbers, in the browser itself.
    column = 4
    clicked = tmp_path / "clicked.html"
    clicked.write_text(page.read_text().replace(
        "</body>", f'<script>document.querySelectorAll("#nodes th")[{column}].click()'
        "</script></body>"))
    table = re.search(r'<table id="nodes".*?<tbody>(.*?)</tbody>',
                      dump_dom(browser, clicked, tmp_path / "profile-2"), re.S).group(1)
    claimed = [float(re.findall(r"<td[^>]*>([^<]*)</td>", row)[column])
               for row in re.findall(r"<tr>(.*?)</tr>", table, re.S)]
    assert len(claimed) == 100 and claimed == sorted(claimed) and claimed[0] < claimed[-1]


def test_a_screenshot_of_the_report_shows_the_page(tmp_path):
    browser = chromium()
    page = hundred_node_report(tmp_path)
    shot = tmp_path / "report.png"
    done = subprocess.run([browser, *HEADLESS, f"--user-data-dir={tmp_path / 'profile'}",
                           f"--screenshot={shot}", "--window-size=1280,1600", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (1600, 1280)
    assert pixels[..., :3].std() > 0.05  # a page with content, not a blank one
