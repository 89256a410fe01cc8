"""A command never writes over what it reads: the one check of its output paths against its inputs.

Every command calls :func:`guard_outputs` once, before it loads or writes anything, with the paths
it reads (models, data, configs, calibrations) and the paths it writes: files (``--out FILE``,
``--plot FILE``), each with the extensions its format takes, and run folders (``--out DIR``), each
with the glob patterns of the entries the run writes there (and ``--overwrite`` deletes). It
refuses, in one line and whatever flag is given:

- a file output that is an input (after resolving symbolic links; a hard link counts too), or
  that lies inside a folder given as an input;
- a file output whose extension its format does not take (``--plot out.xyz``);
- a run folder that is an input or lies inside one, or that holds an input under a name the run
  writes or deletes (``molequi train --config DIR/config.yaml --out DIR --overwrite``);
- two outputs on one path.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from molequi.errors import OutputPathError

PLOT_SUFFIXES = (".png", ".pdf", ".svg")
"""What ``--plot`` writes: matplotlib picks the format from the extension."""
JSON_SUFFIXES = (".json",)
EXPORT_SUFFIXES = (".pt",)
"""What ``molequi export`` writes (TorchScript, loaded with ``torch.jit.load``)."""

PathLike = str | os.PathLike


def input_path(spec: PathLike) -> Path | None:
    """The file or folder an input names, or None when it names none (a built-in data set such as
    ``qm9:train``, a G2 name, a missing file: commands report those themselves). A frame selection
    (``file.xyz@:``, ``file.xyz@0``) is dropped from a name that does not exist as given."""
    path = Path(spec)
    if path.exists():
        return path
    text = str(spec)
    if "@" in text:
        head = Path(text.rpartition("@")[0])
        if head.exists():
            return head
    return None


def _same(a: Path, b: Path) -> bool:
    """Whether two paths name one file or folder (resolved links, hard links)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` lies inside ``folder`` (both resolved)."""
    return path.resolve().is_relative_to(folder.resolve()) and path.resolve() != folder.resolve()


def _parts_under(path: Path, folder: Path) -> tuple[str, ...]:
    """The parts of ``path`` below ``folder`` (as named, or both resolved), or () when it is not below."""
    for inner, outer in ((Path(os.path.abspath(path)), Path(os.path.abspath(folder))), (path.resolve(), folder.resolve())):
        if inner != outer and inner.is_relative_to(outer):
            return inner.relative_to(outer).parts
    return ()


def _suffix_message(option: str, path: Path, suffixes: Sequence[str]) -> str:
    names = " or ".join(", ".join(suffixes).rsplit(", ", 1))
    return (f"{option} {path}: the file is written as {names}, so its name must end in {names} "
            f"(got '{path.suffix or 'no extension'}')")


def guard_outputs(
    inputs: Mapping[str, Iterable[PathLike | None] | PathLike | None],
    files: Sequence[tuple[str, PathLike | None, Sequence[str] | None]] = (),
    folders: Sequence[tuple[str, PathLike | None, Sequence[str]]] = (),
) -> None:
    """Refuse (:class:`~molequi.errors.OutputPathError`, one line) outputs that would replace or
    sit inside an input, and file outputs of the wrong extension; see the module's docstring.

    ``inputs``: {what (an option or argument name: ``--config``, ``DATA``): path or paths};
    ``files``: (option, path or None, accepted extensions or None for any);
    ``folders``: (option, path or None, glob patterns of the entries the run writes or deletes).
    """
    from molequi.cli.main import check_output_file

    named: list[tuple[str, Path]] = []
    for what, paths in inputs.items():
        if paths is None or isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        for spec in paths:
            path = input_path(spec) if spec is not None else None
            if path is not None:
                named.append((what, path))

    written: list[tuple[str, Path]] = []
    for option, spec, suffixes in files:
        if spec is None:
            continue
        path = Path(spec)
        check_output_file(path, option)
        for what, source in named:
            if _same(path, source) if path.exists() else path.resolve() == source.resolve():
                raise OutputPathError(f"{option} {path} is the input {what} {source}: writing there would replace "
                                      "it; choose another file name")
            if source.is_dir() and _inside(path, source):
                raise OutputPathError(f"{option} {path} lies inside the input folder {what} {source}; "
                                      "write it elsewhere")
        if suffixes and path.suffix.lower() not in suffixes:
            raise OutputPathError(_suffix_message(option, path, suffixes))
        written.append((option, path))

    for option, spec, patterns in folders:
        if spec is None:
            continue
        folder = Path(spec)
        for what, source in named:
            if _same(folder, source) if folder.exists() else folder.resolve() == source.resolve():
                raise OutputPathError(f"{option} {folder} is the input {what} {source}; choose another output folder")
            if source.is_dir() and _inside(folder, source):
                raise OutputPathError(f"{option} {folder} lies inside the input folder {what} {source}; "
                                      "choose another output folder")
            parts = _parts_under(source, folder)
            if parts and any(fnmatch.fnmatch(parts[0], pattern) for pattern in patterns):
                raise OutputPathError(
                    f"the input {what} {source} lies in the output folder {option} {folder} under a name the run "
                    f"writes ({parts[0]}; --overwrite would delete it): move it out or choose another output folder")
        written.append((option, folder))

    for k, (option, path) in enumerate(written):
        for other, second in written[k + 1:]:
            if path.resolve() == second.resolve():
                raise OutputPathError(f"{option} and {other} are one path ({path}); give each its own")
