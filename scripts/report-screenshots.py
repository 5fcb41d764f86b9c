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
#: The README's picture: the top of the laptop view, in a 64-colour palette.
DOCS_HEIGHT = 1500


def main() -> None:
    page, out = Path(sys.argv[1]), Path(sys.argv[2])
    shots = [screenshot(page, out / f"report-{width}.png", width) for width in WIDTHS]
    for shot in shots:
        print(shot)
    if len(sys.argv) > 3:
        from PIL import Image

        docs = Path(sys.argv[3])
        with Image.open(shots[0]) as image:
            top = image.crop((0, 0, image.width, min(image.height, DOCS_HEIGHT)))
            top = top.resize((top.width * 3 // 4, top.height * 3 // 4), Image.LANCZOS)
            top.convert("RGB").quantize(64).save(docs, optimize=True)
        print(docs)


if __name__ == "__main__":
    main()
