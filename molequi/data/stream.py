"""Structures read from disk one at a time: training data larger than memory.

An (extended) XYZ file is indexed once — the byte offset where each frame starts, and the
elements it holds — and a frame is then parsed and turned into a graph only when a batch asks for
it, so memory holds the offsets (8 bytes a structure), not the structures. ASE reads a frame of
an XYZ file by scanning from the start (``ase.io.read(path, index=k)`` costs O(k)), and neither
ASE nor torch-geometric offers random access to a text trajectory, hence the offset index here.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from ase.data import atomic_numbers
from torch_geometric.data import Data

from molequi.errors import DataFormatError

STREAM_SUFFIXES = (".xyz", ".extxyz")
"""File types that can be streamed (plain-text frames: atom count, comment line, atom lines)."""


def check_streamable(path: str | Path) -> Path:
    """``path`` as a Path, or :class:`DataFormatError` when it cannot be streamed."""
    path = Path(path)
    if path.suffix.lower() not in STREAM_SUFFIXES:
        raise DataFormatError(f"{path}: only .xyz/.extxyz files can be streamed (--stream); convert it with "
                              "ase.io.write('data.extxyz', ase.io.read(FILE, ':'))")
    if not path.is_file():
        raise DataFormatError(f"{path}: no such file")
    return path


def frame_offsets(path: str | Path) -> tuple[np.ndarray, list[int]]:
    """Byte offsets (int64) where each frame of an XYZ file starts, and the sorted atomic numbers present.

    Raises:
        DataFormatError: a frame's atom count is not a number, the file ends inside a frame, or an
            atom line does not start with an element symbol.
    """
    path = check_streamable(path)
    offsets: list[int] = []
    present: set[str] = set()
    with open(path, "rb") as handle:
        position = 0
        while True:
            header = handle.readline()
            if not header:
                break
            if not header.strip():  # blank lines between frames
                position += len(header)
                continue
            try:
                count = int(header.split()[0])
            except ValueError:
                raise DataFormatError(f"{path}: frame {len(offsets)} at byte {position} does not start with an atom "
                                      f"count ({header[:40]!r})") from None
            offsets.append(position)
            position += len(header)
            comment = handle.readline()
            position += len(comment)
            for _ in range(count):
                line = handle.readline()
                if not line:
                    raise DataFormatError(f"{path}: the file ends inside frame {len(offsets) - 1}")
                position += len(line)
                present.add(line.split(maxsplit=1)[0].decode())
    unknown = sorted(present - set(atomic_numbers))
    if unknown:
        raise DataFormatError(f"{path}: atom lines start with {unknown[:3]}, not element symbols")
    if not offsets:
        raise DataFormatError(f"{path}: the file holds no structures")
    return np.asarray(offsets, dtype=np.int64), sorted(atomic_numbers[s] for s in present)


def read_frame(path: str | Path, offset: int):
    """The ``ase.Atoms`` of the frame that starts at byte ``offset`` (labels as ASE reads them)."""
    from ase.io.extxyz import read_xyz

    with open(path, "rb") as handle:
        handle.seek(int(offset))
        count = int(handle.readline().split()[0])
        lines = [str(count)] + [handle.readline().decode().rstrip("\n") for _ in range(count + 1)]
    return next(read_xyz(io.StringIO("\n".join(lines) + "\n"), index=0))


class FrameGraphs(torch.utils.data.Dataset):
    """The graphs of some frames of an XYZ file, each read and built when asked for.

    Args:
        path: the file (see :func:`frame_offsets`).
        offsets: the file's frame offsets.
        indices: which frames (positions in ``offsets``), in dataset order.
        cutoff: neighbor-list radius, Å.
        keys: label keys (:class:`molequi.data.labels.LabelKeys`), or None for ASE's names.
    """

    def __init__(self, path: str | Path, offsets: np.ndarray, indices: np.ndarray, cutoff: float, keys=None) -> None:
        self.path, self.offsets, self.cutoff, self.keys = str(path), offsets, float(cutoff), keys
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> Data:
        from molequi.data.graph import atoms_to_graph
        from molequi.data.labels import apply_label_keys

        frame = int(self.indices[k])
        name = f"{self.path}: structure {frame}"
        atoms = apply_label_keys([read_frame(self.path, self.offsets[frame])], self.keys)[0]
        graph = atoms_to_graph(atoms, self.cutoff, with_labels=True, name=name)  # checks the labels are finite
        for key in ("energy", "forces"):
            if key not in graph:
                raise DataFormatError(f"{name}: no {key} label (every streamed structure needs energy and forces)")
        graph.index = torch.tensor([frame])
        return graph

    def load(self, positions) -> list[Data]:
        """The graphs at dataset positions ``positions``, in memory."""
        return [self[int(k)] for k in positions]
