"""Make docs/html-report.png, the README's screenshot of the HTML report of the example suite.

    python docs/html_report_screenshot.py                      # runs `pytest rules.yaml --lrp-html=...` first
    python docs/html_report_screenshot.py --page report.html   # an existing page

Headless Chromium (Debian's package) renders the page; to keep the picture small, a copy of
the page shows only the first rows of the table and one rule's section (a leaking rule, so
that the chart has a step). The PNG is reduced to a palette of 128 colours.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]
SECTION = "s-cnn-alpha2-beta1-ib"
ROWS = 10
SIZE = (1100, 1330)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--page", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "html-report.png")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="lrp-screenshot-"))
    page = args.page
    if page is None:
        page = folder / "report.html"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-p",
                "no:cacheprovider",
                "-q",
                "--lrp-no-summary",
                "rules.yaml",
                f"--lrp-html={page}",
            ],
            cwd=ROOT,
            check=False,
        )
    trimmed = folder / "trimmed.html"
    focus = (
        f"<style>#results tbody tr:nth-child(n+{ROWS + 1}){{display:none}}"
        f"section:not(#{SECTION}){{display:none}}</style></head>"
    )
    trimmed.write_text(page.read_text().replace("</head>", focus, 1))
    shot = folder / "shot.png"
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--window-size={SIZE[0]},{SIZE[1]}",
            f"--screenshot={shot}",
            trimmed.as_uri(),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    picture = Image.open(shot).convert("RGB")
    content = ImageOps.invert(picture).getbbox()  # cut the white below the section
    picture.crop((0, 0, SIZE[0], min(SIZE[1], content[3] + 20))).quantize(colors=128).save(args.out, optimize=True)
    print(f"{args.out}: {args.out.stat().st_size // 1024} KB")
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
