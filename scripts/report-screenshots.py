"""Screenshots of a report page in headless Chromium at a laptop's and a phone's width,
and a small PNG of the page's top for the README (`make report-screenshots`).

    python scripts/report-screenshots.py PAGE.html OUT_DIR [DOCS_PNG]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from browser import screenshot  # noqa: E402

WIDTHS = (1280, 390)
#: The README's picture: the status and the current model up close, at a laptop's width,
#: three quarters of the size, in a 128-colour palette.
DOCS_SECTIONS = ("#status", "#current")


def main() -> None:
    page, out = Path(sys.argv[1]), Path(sys.argv[2])
    boxes = []
    for width in WIDTHS:
        shot = out / f"report-{width}.png"
        boxes.append(screenshot(page, shot, width, DOCS_SECTIONS if width == WIDTHS[0] else ()))
        print(shot)
    if len(sys.argv) > 3:
        from PIL import Image

        docs = Path(sys.argv[3])
        with Image.open(out / f"report-{WIDTHS[0]}.png") as image:
            parts = [
                image.crop((0, int(top) - 8, image.width, int(bottom) + 8))
                for top, bottom in boxes[0]
            ]
            joined = Image.new("RGB", (image.width, sum(p.height for p in parts)), "white")
            y = 0
            for part in parts:
                joined.paste(part, (0, y))
                y += part.height
            # The page's column is at most 960 px wide: leave out the margins.
            left = max((image.width - 960) // 2, 0)
            joined = joined.crop((left, 0, image.width - left, joined.height))
            small = joined.resize((joined.width * 3 // 4, joined.height * 3 // 4), Image.LANCZOS)
            small.quantize(128).save(docs, optimize=True)
        print(docs)


if __name__ == "__main__":
    main()
