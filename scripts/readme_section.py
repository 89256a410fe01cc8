"""Write a generated Markdown block into the documentation between marker comments.

Benchmarks call :func:`update_readme_section` so every figure in the documentation comes from a
script run (``<!-- begin:NAME -->`` … ``<!-- end:NAME -->``); nothing in those blocks is typed by
hand. The block is found in whichever file holds it: README.md or a page under docs/ (the
benchmark tables live in docs/benchmarks.md).

    python scripts/readme_section.py NAME FILE.md   # paste FILE.md into the NAME block
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"


def documentation_files(root: Path = REPO) -> list[Path]:
    """README.md and every Markdown page under docs/, in that order."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def update_readme_section(name: str, markdown: str, readme: Path | None = None) -> bool:
    """Replace the block ``name`` with ``markdown`` in ``readme``, or (None) in the documentation
    file that holds it; False if no file has its markers."""
    pattern = re.compile(rf"(<!-- begin:{re.escape(name)} -->\n).*?(<!-- end:{re.escape(name)} -->)", re.S)
    for path in [readme] if readme is not None else documentation_files():
        text = path.read_text(encoding="utf-8") if path.is_file() else ""
        if pattern.search(text):
            path.write_text(pattern.sub(lambda m: m.group(1) + markdown.rstrip() + "\n" + m.group(2), text),
                            encoding="utf-8")
            return True
    print(f"no documentation file has a block '{name}'; add <!-- begin:{name} --> and <!-- end:{name} --> markers "
          "(benchmark tables go in docs/benchmarks.md)")
    return False


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(0 if update_readme_section(sys.argv[1], Path(sys.argv[2]).read_text(encoding="utf-8")) else 1)
