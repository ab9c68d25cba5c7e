"""report.html in a real headless browser: every image decodes, no script errors, and
screenshots for a person to look at (in /tmp/mlsmith-screens/)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mlsmith.reports import write_reports

CHROMIUM = shutil.which("chromium")
SCREENS = Path("/tmp/mlsmith-screens")
# Injected by the test only: on load, record whether each image decoded, and any error.
PROBE = """
<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message || e)));
const consoleError = console.error;
console.error = (...args) => { window.__errors.push(args.join(" ")); consoleError(...args); };
window.addEventListener("load", () => {
  const pre = document.createElement("pre");
  pre.id = "mlsmith-test-result";
  pre.textContent = JSON.stringify({
    images: [...document.images].map(i => i.complete && i.naturalWidth > 0),
    widths: [...document.images].map(i => i.naturalWidth),
    errors: window.__errors,
  });
  document.body.appendChild(pre);
});
</script>
"""

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (`chromium` on PATH) to render"),
]


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("fixture", ["binary_run", "regression_run"])
def test_every_image_loads_without_errors(
    fixture: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    run_dir: Path = request.getfixturevalue(fixture)
    html = write_reports(run_dir)[0].read_text(encoding="utf-8")
    probed = tmp_path / "report.html"
    probed.write_text(html.replace("</body>", PROBE + "</body>"), encoding="utf-8")

    result = chromium("--dump-dom", probed.as_uri(), profile=tmp_path / "profile")
    assert result.returncode == 0, result.stderr[-2000:]
    found = re.search(r'<pre id="mlsmith-test-result">(.*?)</pre>', result.stdout, re.S)
    assert found, f"the probe did not run: {result.stdout[-500:]}"
    outcome = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert outcome["errors"] == []
    assert len(outcome["images"]) == html.count("<img") > 0
    assert all(outcome["images"]), outcome
    assert min(outcome["widths"]) >= 600  # 6.4 in at 100 dpi, or wider


@pytest.mark.parametrize("fixture", ["binary_run", "regression_run"])
def test_screenshot_for_a_person(
    fixture: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    run_dir: Path = request.getfixturevalue(fixture)
    page = write_reports(run_dir)[0]
    SCREENS.mkdir(parents=True, exist_ok=True)
    shot = SCREENS / f"{fixture.removesuffix('_run')}.png"
    shot.unlink(missing_ok=True)
    result = chromium(
        f"--screenshot={shot}",
        "--window-size=1280,6000",
        "--hide-scrollbars",
        page.as_uri(),
        profile=tmp_path / "profile",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert shot.is_file() and shot.stat().st_size > 10_000
