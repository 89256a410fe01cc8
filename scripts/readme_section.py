"""Write a generated Markdown block into README.md between marker comments.

Benchmarks call :func:`update_readme_section` so every figure in README comes from a script run
(``<!-- begin:NAME -->`` … ``<!-- end:NAME -->``); nothing in those blocks is typed by hand.

    python scripts/readme_section.py NAME FILE.md   # paste FILE.md into the NAME block
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def update_readme_section(name: str, markdown: str, readme: Path = README) -> bool:
    """Replace the block ``name`` in ``readme`` with ``markdown``; False if the markers are absent."""
    text = readme.read_text(encoding="utf-8")
    pattern = re.compile(rf"(<!-- begin:{re.escape(name)} -->\n).*?(<!-- end:{re.escape(name)} -->)", re.S)
    if not pattern.search(text):
        print(f"README.md has no block '{name}'; add <!-- begin:{name} --> and <!-- end:{name} --> markers")
        return False
    readme.write_text(pattern.sub(lambda m: m.group(1) + markdown.rstrip() + "\n" + m.group(2), text), encoding="utf-8")
    return True


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(0 if update_readme_section(sys.argv[1], Path(sys.argv[2]).read_text(encoding="utf-8")) else 1)
