"""`report.html` in a real headless browser (Debian's `chromium`): every figure loads, no script errors.

A copy of the page gets a checker script (and a strict Content-Security-Policy that blocks anything but
inline styles, inline scripts and data: images); after the load event the checker writes what it saw into the
DOM, which `--dump-dom` prints. A broken control image and a throwing control script prove the checker sees
failures. Skips where chromium is not installed (CI installs it).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from steel_seg.report import eda_page

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--virtual-time-budget=15000",
]
CHECKER = """
<meta http-equiv="Content-Security-Policy"
      content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<script>
window.__errors = []; window.__blocked = [];
window.addEventListener("error", function (e) { if (e.message) window.__errors.push(e.message); });
document.addEventListener("securitypolicyviolation", function (e) { window.__blocked.push(e.blockedURI); });
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var seen = {
    images: imgs.map(function (i) { return [i.id, i.complete, i.naturalWidth, i.naturalHeight]; }),
    errors: window.__errors, blocked: window.__blocked
  };
  var out = document.createElement("pre"); out.id = "__check"; out.textContent = JSON.stringify(seen);
  document.body.appendChild(out);
});
</script>
"""
CONTROLS = """<img id="__control" src="data:image/png;base64,AAAA">
<script>throw new Error("__control");</script>
"""


def browser_check(page: Path, work: Path) -> dict:
    """Load a checker-instrumented copy of `page` in headless chromium; returns what the checker saw."""
    text = page.read_text(encoding="utf-8")
    variant = work / "check.html"
    variant.write_text(
        text.replace("<head>", "<head>" + CHECKER, 1).replace("</body>", CONTROLS + "</body>", 1)
    )
    cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={work / 'profile'}", "--dump-dom", variant.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    found = re.search(r'<pre id="__check">(.*?)</pre>', done.stdout, re.S)
    assert found, f"chromium printed no check (rc {done.returncode}): {done.stderr[-2000:]}"
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed")
def test_eda_report_loads_every_figure_in_chromium(synthetic_set, synthetic_labels, tmp_path):
    written = eda_page.build(
        synthetic_labels,
        synthetic_set.out_dir / "train_images",
        tmp_path / "eda",
        synthetic_set.clusters[:1],
        eda_page.EdaSettings(per_class=1),
    )
    seen = browser_check(written.html, tmp_path)
    images = {name: (complete, width, height) for name, complete, width, height in seen["images"]}
    assert set(images) == {p.stem for p in written.figures} | {"__control"}
    for path in written.figures:
        complete, width, height = images[path.stem]
        assert complete and width > 0 and height > 0, path.name
    assert images["__control"][1] == 0  # the checker sees a broken image
    assert len(seen["errors"]) == 1 and "__control" in seen["errors"][0]  # ... and a script error
    assert seen["blocked"] == []  # nothing outside the page was asked for
