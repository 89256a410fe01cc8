"""README's ``bash`` blocks run as written, in order, with only the documented size knobs made
smaller (README, "Train and evaluate", names them). A block preceded by
``<!-- readme-test: gpu -->`` needs a GPU; ``<!-- readme-test: skip: REASON -->`` is not run,
for the reason given there."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
BLOCK = re.compile(r"(?:<!-- readme-test: (?P<marker>[^>]*?) -->\n)?```bash\n(?P<code>.*?)```", re.S)

# The size knobs README documents: (pattern, replacement). Nothing else in a block is changed.
KNOBS = [
    (r"--n-frames \d+", "--n-frames 60"),
    (r"--test-frames \d+", "--test-frames 10"),
    (r"--max-minutes [\d.]+", "--max-minutes 0.05"),
    (r"--steps \d+", "--steps 10"),
    (r"--replicas \d+", "--replicas 2"),
    (r"--rounds \d+", "--rounds 1"),
    (r"--md-steps \d+", "--md-steps 20"),
    (r"--per-round \d+", "--per-round 2"),
    (r"--committee \d+", "--committee 2"),
    (r"\bn=\d+", "n=60"),
    (r"'qm9:train'", "'qm9:train?n=60'"),
    (r"'qm9:test'", "'qm9:test?n=30'"),
]


def readme_blocks() -> list[tuple[int, str | None, str]]:
    """(line, marker, code) of every bash block of README, in order."""
    text = README.read_text(encoding="utf-8")
    return [(text[: m.start("code")].count("\n") + 1, m["marker"], m["code"]) for m in BLOCK.finditer(text)]


def small(code: str) -> str:
    for pattern, replacement in KNOBS:
        code = re.sub(pattern, replacement, code)
    return code


BLOCKS = readme_blocks()


def test_every_block_is_accounted_for():
    assert len(BLOCKS) >= 8
    for line, marker, code in BLOCKS:
        assert "[--" not in code and "[...]" not in code, f"README line {line}: shorthand in a runnable block"
        assert marker is None or marker == "gpu" or marker.startswith("skip: "), f"README line {line}: {marker}"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("readme")
    for name in ("datasets", "scripts"):
        (directory / name).symlink_to(REPO / name)
    return directory


@pytest.mark.slow
@pytest.mark.parametrize("line,marker,code", BLOCKS, ids=[f"line{line}" for line, _, _ in BLOCKS])
def test_readme_block(workdir, line, marker, code):
    if marker and marker.startswith("skip: "):
        pytest.skip(marker.removeprefix("skip: "))
    if marker == "gpu" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", small(code)], cwd=workdir, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"README line {line}:\n{small(code)}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"


def test_readme_starts_in_three_commands_and_stays_short():
    """README: at most 350 lines, the set-up with the venv activation, the quickstart and the test
    command, and no path of the machine it was written on (benchmark tables live in docs/)."""
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 350
    first = BLOCKS[0][2]
    for command in ("bash scripts/setup_env.sh && source .venv/bin/activate", "bash scripts/quickstart.sh",
                    "bash scripts/test.sh"):
        assert command in first, command
    tracked = subprocess.run(["git", "ls-files", "README.md", "docs", "datasets", "scripts"], cwd=REPO,
                             capture_output=True, text=True).stdout.split()
    for name in tracked or ["README.md"]:
        path = REPO / name
        if path.suffix in (".md", ".py", ".sh", ".yaml") and path.is_file():
            found = re.search(r"(^|[^A-Za-z0-9_.])/(work|home|root|Users)/[A-Za-z]", path.read_text(encoding="utf-8"))
            assert not found, f"{name}: a path of one machine ({found.group(0).strip()})"
    assert "<!-- begin:" not in text, "generated benchmark tables belong in docs/benchmarks.md"


def test_every_generated_block_and_link_resolves():
    """Each block a benchmark writes (scripts/*.py call update_readme_section) exists in exactly
    one documentation file, and every relative link of README and docs/ points at a file."""
    import sys

    sys.path.insert(0, str(REPO / "scripts"))
    from readme_section import documentation_files

    texts = {path: path.read_text(encoding="utf-8") for path in documentation_files(REPO)}
    written = set()
    for script in (REPO / "scripts").glob("*.py"):
        written |= set(re.findall(r'update_readme_section\(\s*"([^"]+)"', script.read_text(encoding="utf-8")))
    for name in written:
        holders = [path.name for path, text in texts.items() if f"<!-- begin:{name} -->" in text]
        assert len(holders) == 1, (name, holders)
    for path, text in texts.items():
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
            assert (path.parent / target).exists(), f"{path.name}: broken link {target}"
