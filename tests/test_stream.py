"""Training data streamed from disk: the same graphs as in memory, memory that does not grow with
the file, and clear errors."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from molequi.errors import DataFormatError


def labelled_frames(count: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(count):
        atoms = molecule("CH3CH2OH" if k % 2 else "H2O")
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        atoms.info["charge"] = int(k % 3 == 0)
        atoms.calc = SinglePointCalculator(atoms, energy=float(rng.normal()) - 100.0,
                                           forces=rng.normal(size=(len(atoms), 3)))
        frames.append(atoms)
    return frames


@pytest.fixture
def frames_file(tmp_path):
    path = tmp_path / "frames.extxyz"
    write(path, labelled_frames(30))
    return path


def test_streamed_graphs_equal_the_graphs_read_at_once(frames_file):
    from molequi.data.stream import FrameGraphs, frame_offsets
    from molequi.training.data import load_graphs

    offsets, species = frame_offsets(frames_file)
    assert len(offsets) == 30 and species == [1, 6, 8]
    streamed = FrameGraphs(frames_file, offsets, np.arange(30)[::-1], cutoff=4.0)
    in_memory = load_graphs([frames_file], 4.0)
    for k in range(30):
        a, b = streamed[k], in_memory[29 - k]
        for key in ("pos", "numbers", "energy", "forces", "edge_index", "charge"):
            assert torch.equal(a[key], b[key]), key


def _peak_bytes(action) -> int:
    tracemalloc.start()
    action()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_memory_of_a_streamed_epoch_does_not_grow_with_the_file(tmp_path):
    from torch_geometric.loader import DataLoader

    from molequi.data.stream import FrameGraphs, frame_offsets
    from molequi.training.data import load_graphs

    peaks = {}
    for count in (40, 400):
        path = tmp_path / f"{count}.extxyz"
        write(path, labelled_frames(count))

        def epoch(path=path):
            offsets, _ = frame_offsets(path)
            for batch in DataLoader(FrameGraphs(path, offsets, np.arange(len(offsets)), 4.0), batch_size=8,
                                    shuffle=True):
                assert batch.num_graphs <= 8

        peaks[("stream", count)] = _peak_bytes(epoch)
        peaks[("memory", count)] = _peak_bytes(lambda path=path: load_graphs([path], 4.0))
    # ten times the structures: the in-memory set grows with them (the check can fail) ...
    assert peaks[("memory", 400)] > 5 * peaks[("memory", 40)]
    # ... a streamed epoch holds a batch, an offset table and the file's lines one at a time
    assert peaks[("stream", 400)] < 1.5 * peaks[("stream", 40)] + 200_000


def test_train_streams_a_file(frames_file, tmp_path, capsys):
    from molequi.cli.main import main

    out = tmp_path / "run"
    assert main(["train", "--stream", "--data", str(frames_file), "--out", str(out), "--max-epochs", "1",
                 "--channels", "8", "--l-max", "0", "--edge-l-max", "1", "--validation", "4", "--no-progress"]) == 0
    assert (out / "model.molequi").is_file()
    assert "training on 26 structures, validating on 4" in capsys.readouterr().out
    assert main(["train", "--stream", "--baseline", "xtb", "--data", str(frames_file), "--out",
                 str(tmp_path / "b")]) == 2
    assert "without baseline" in capsys.readouterr().err


def test_bad_files_are_refused_with_their_place(tmp_path):
    from molequi.data.stream import frame_offsets

    cut = tmp_path / "cut.extxyz"
    write(cut, labelled_frames(3))
    cut.write_text("\n".join(cut.read_text().splitlines()[:-2]) + "\n")
    with pytest.raises(DataFormatError, match="ends inside frame 2"):
        frame_offsets(cut)
    with pytest.raises(DataFormatError, match="only .xyz/.extxyz files can be streamed"):
        frame_offsets(tmp_path / "data.db")
    garbage = tmp_path / "garbage.xyz"
    garbage.write_text("three\ncomment\n")
    with pytest.raises(DataFormatError, match="does not start with an atom count"):
        frame_offsets(garbage)
