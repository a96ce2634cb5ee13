"""Render a report in headless Chromium and save a PNG: the check that a page really draws."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")


class BrowserMissing(RuntimeError):
    """No headless Chromium on this machine (Debian: `apt-get install -y chromium`)."""


class ScreenshotFailed(RuntimeError):
    """Chromium ran but produced no screenshot."""


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome executable, or None."""
    for name in _NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def screenshot_html(
    html_path: str | Path,
    png_path: str | Path,
    *,
    width: int = 1200,
    height: int = 2400,
    timeout_s: float = 60.0,
) -> Path:
    """Load `html_path` in headless Chromium (offline flags, throwaway profile), write a PNG."""
    browser = find_chromium()
    if browser is None:
        raise BrowserMissing("chromium not found; install it with `apt-get install -y chromium`")
    png = Path(png_path).resolve()
    png.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgecloud-chromium-") as profile:
        cmd = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            f"--screenshot={png}",
            Path(html_path).resolve().as_uri(),
        ]
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout_s, check=False)
    if not png.exists() or png.stat().st_size == 0:
        tail = proc.stderr.decode(errors="replace")[-500:]
        raise ScreenshotFailed(f"chromium exited {proc.returncode} without a screenshot: {tail}")
    return png
