"""Model files: round trip, header, refusal of corrupt/foreign/future/malicious files, atomic
writes, unknown elements and dtype override."""

from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from ase import Atoms
from ase.build import molecule
from conftest import make_ethanol, make_water_box, random_model

import molequi
from molequi.errors import ModelFileError, MolequiError, UnknownElementError
from molequi.models import io as model_io
from molequi.models import load_model, predict, read_header, save_model

E0S = (("1", -13.6), ("6", -1029.5), ("8", -2041.3))
PROPERTIES = (("dipole", "dipole"), ("gap", "intensive"))


def small_model(dtype: str = "float64"):
    return random_model(l_max=1, correlation=2, num_layers=2, dtype=dtype, e0s=E0S, properties=PROPERTIES)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A float64 model file (written once per module; tests must not modify it)."""
    path = tmp_path_factory.mktemp("saved") / "model.molequi"
    save_model(small_model(), path, extra={"trained_on": "unit tests", "epochs": 0})
    return path


def header_of(path: Path) -> tuple[int, dict]:
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    return size, json.loads(data[8 : 8 + size])


def rewrite_metadata(source: Path, target: Path, keep_checksum: bool = False, **changes) -> Path:
    """Copy a model file with ``__metadata__`` entries changed (None deletes an entry), its
    checksum recomputed (as a tool that edits headers would), unless ``keep_checksum``."""
    from molequi.utils import DIGEST_KEY, tensors_digest

    tensors = safetensors.torch.load_file(str(source))
    _, header = header_of(source)
    metadata = dict(header["__metadata__"])
    for key, value in changes.items():
        if value is None:
            metadata.pop(key, None)
        else:
            metadata[key] = value
    if not keep_checksum and DIGEST_KEY in metadata:
        metadata[DIGEST_KEY] = tensors_digest(tensors, metadata)
    safetensors.torch.save_file(tensors, str(target), metadata=metadata)
    return target


def assert_model_file_error(path: Path, match: str | None = None) -> ModelFileError:
    with pytest.raises(ModelFileError) as info:
        load_model(path)
    message = str(info.value)
    assert str(path) in message, f"the message should name the file: {message!r}"
    assert "\n" not in message, f"the message should be one line: {message!r}"
    if match is not None:
        assert match in message, message
    return info.value


# --------------------------------------------------------------------------------------------
# round trip and header
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_round_trip_identical_predictions(tmp_path, dtype):
    model = small_model(dtype)
    path = save_model(model, tmp_path / f"model-{dtype}.molequi")
    loaded = load_model(path)
    assert loaded.dtype == getattr(torch, dtype)
    assert not loaded.training
    original_state, loaded_state = model.state_dict(), loaded.state_dict()
    assert original_state.keys() == loaded_state.keys()
    for name, value in original_state.items():
        assert torch.equal(value, loaded_state[name]), name
    structures = [make_ethanol(), make_water_box(2), molecule("CO2")]
    for before, after in zip(predict(model, structures), predict(loaded, structures)):
        assert before.keys() == after.keys()
        for key in before:
            np.testing.assert_allclose(after[key], before[key], rtol=0, atol=1e-12, err_msg=key)


def test_header_contents(saved):
    header = read_header(saved)
    assert header["format_version"] == model_io.FORMAT_VERSION == 1
    assert header["molequi_version"] == molequi.__version__
    assert header["dtype"] == "float64"
    assert header["units"] == {"length": "Å", "energy": "eV", "forces": "eV/Å", "stress": "eV/Å³", "dipole": "e·Å"}
    config = header["config"]
    assert config["species"] == [1, 6, 8]
    assert config["e0s"] == {z: value for z, value in E0S}
    assert config["properties"] == dict(PROPERTIES)
    assert config["l_max"] == 1 and config["num_layers"] == 2 and config["channels"] == 8
    assert header["extra"] == {"trained_on": "unit tests", "epochs": 0}
    _, raw = header_of(saved)
    assert raw["__metadata__"]["format"] == "molequi-model"


def test_e0s_survive_round_trip(saved):
    model = load_model(saved)
    hydrogen = predict(model, Atoms("H", positions=[[0, 0, 0]]))
    # an isolated atom has no neighbors: its energy is E0 + shift + the learned one-body term
    assert hydrogen["energy"] == pytest.approx(predict(small_model(), Atoms("H"))["energy"], abs=1e-12)
    assert float(model.model.e0[1]) == -13.6 and float(model.model.e0[8]) == -2041.3


def test_load_with_dtype_override(saved):
    model32 = load_model(saved, dtype="float32")
    assert model32.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model32.parameters())
    model64 = load_model(saved, dtype=torch.float64)
    atoms = make_ethanol()
    out32, out64 = predict(model32, atoms), predict(model64, atoms)
    assert out32["forces"].dtype == np.float32
    assert out32["energy"] == pytest.approx(out64["energy"], rel=1e-6)
    np.testing.assert_allclose(out32["forces"], out64["forces"], rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------
# refused files
# --------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    assert_model_file_error(tmp_path / "absent.molequi", "no such model file")
    with pytest.raises(ModelFileError):
        read_header(tmp_path)  # a directory


def test_corrupt_header_bytes(tmp_path, saved):
    size, _ = header_of(saved)
    data = saved.read_bytes()
    # the JSON header itself: its opening brace and, separately, a run of bytes in the middle
    for k, (start, stop) in enumerate([(8, 9), (8 + size // 2, 8 + size // 2 + 16)]):
        corrupt = bytearray(data)
        for i in range(start, stop):
            corrupt[i] ^= 0xFF
        path = tmp_path / f"corrupt-{k}.molequi"
        path.write_bytes(bytes(corrupt))
        assert_model_file_error(path)
    # the 8-byte header length
    corrupt = bytearray(data)
    corrupt[0] ^= 0x04
    path = tmp_path / "corrupt-length.molequi"
    path.write_bytes(bytes(corrupt))
    assert_model_file_error(path)


def test_single_byte_flips_never_escape_as_other_errors(tmp_path, saved):
    """Flip one bit at a sample of positions of the header: loading either fails with
    ModelFileError or succeeds (a flipped digit of a weight-free setting cannot be detected
    without a checksum) — never another exception type."""
    size, _ = header_of(saved)
    data = saved.read_bytes()
    rng = np.random.default_rng(0)
    path = tmp_path / "flipped.molequi"
    for position in rng.choice(np.arange(8, 8 + size), size=12, replace=False):
        corrupt = bytearray(data)
        corrupt[position] ^= 0x01
        path.write_bytes(bytes(corrupt))
        try:
            load_model(path)
        except ModelFileError:
            pass


@pytest.mark.parametrize("fraction", [0.0, 0.004, 0.5, 0.999])
def test_truncated_file(tmp_path, saved, fraction):
    data = saved.read_bytes()
    path = tmp_path / "truncated.molequi"
    path.write_bytes(data[: int(len(data) * fraction)])
    assert_model_file_error(path)


def test_foreign_files(tmp_path):
    text = tmp_path / "notes.molequi"
    text.write_text("These are not the weights you are looking for.\n" * 20)
    assert_model_file_error(text, "not a molequi model file")

    tiny = tmp_path / "tiny.molequi"
    tiny.write_bytes(b"hi")
    assert_model_file_error(tiny, "not a molequi model file")

    png = tmp_path / "picture.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + os.urandom(200))
    assert_model_file_error(png, "not a molequi model file")

    plain = tmp_path / "plain.safetensors"
    safetensors.torch.save_file({"weight": torch.randn(4, 4)}, str(plain), metadata={"author": "someone"})
    assert_model_file_error(plain, "without a molequi header")

    bare = tmp_path / "bare.safetensors"
    safetensors.torch.save_file({"weight": torch.randn(4, 4)}, str(bare))
    assert_model_file_error(bare, "without a molequi header")


def test_future_format_version(tmp_path, saved):
    path = rewrite_metadata(saved, tmp_path / "future.molequi", format_version="2")
    error = assert_model_file_error(path, "newer than this molequi reads")
    assert "upgrade" in str(error)
    with pytest.raises(ModelFileError, match="version 2"):
        read_header(path)


@pytest.mark.parametrize("version", ["one", "1.5", ""])
def test_garbled_format_version(tmp_path, saved, version):
    path = rewrite_metadata(saved, tmp_path / "garbled.molequi", format_version=version)
    assert_model_file_error(path)


@pytest.mark.parametrize(
    "changes",
    [
        {"config": None},
        {"config": "{not json"},
        {"units": "[unclosed"},
        {"config": json.dumps({"species": [1, 6, 8], "chanels": 8})},  # misspelt key
        {"config": json.dumps({"species": [1, 6, 8], "l_max": 9})},  # invalid value
        {"config": json.dumps([1, 2, 3])},  # not a mapping
    ],
)
def test_corrupt_configuration(tmp_path, saved, changes):
    path = rewrite_metadata(saved, tmp_path / "bad-config.molequi", **changes)
    assert_model_file_error(path)


def test_weights_that_do_not_match_the_architecture(tmp_path, saved):
    _, header = header_of(saved)
    config = json.loads(header["__metadata__"]["config"])
    config["channels"] = 4
    path = rewrite_metadata(saved, tmp_path / "mismatch.molequi", config=json.dumps(config))
    assert_model_file_error(path, "weights do not match")


class CreatesMarker:
    """Unpickling this object opens (creates) the marker file: a stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_not_executed(tmp_path):
    # positive control: the payload is live when unpickled
    control_marker = tmp_path / "control-marker"
    control = tmp_path / "control.pt"
    torch.save({"state_dict": CreatesMarker(control_marker)}, control)
    torch.load(control, weights_only=False)
    assert control_marker.exists()

    marker = tmp_path / "pwned"
    for name in ("model.molequi", "model.pt"):
        path = tmp_path / name
        torch.save({"state_dict": CreatesMarker(marker)}, path)
        assert_model_file_error(path, "not a molequi model file")
        with pytest.raises(ModelFileError):
            read_header(path)
        assert not marker.exists(), "load_model unpickled an untrusted file"
    # a raw pickle stream (not a zip archive) too
    raw = tmp_path / "raw.molequi"
    raw.write_bytes(pickle.dumps(CreatesMarker(marker)))
    assert_model_file_error(raw)
    assert not marker.exists()


# --------------------------------------------------------------------------------------------
# atomic writes
# --------------------------------------------------------------------------------------------


def failing_save_file(tensors, filename, metadata=None):
    """Write half a file, then fail: a crash (disk full, kill) in the middle of the write."""
    Path(filename).write_bytes(b"\x00" * 64)
    raise OSError("simulated failure while writing")


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    # patch both the library function and the name molequi.models.io imported from it
    monkeypatch.setattr(safetensors.torch, "save_file", failing_save_file)
    monkeypatch.setattr(model_io, "save_file", failing_save_file)
    target = tmp_path / "out" / "model.molequi"
    with pytest.raises(OSError, match="simulated failure"):
        save_model(small_model(), target)
    assert not target.exists()
    assert list(target.parent.iterdir()) == [], "a temporary file was left behind"


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch, saved):
    target = tmp_path / "model.molequi"
    target.write_bytes(saved.read_bytes())
    monkeypatch.setattr(safetensors.torch, "save_file", failing_save_file)
    monkeypatch.setattr(model_io, "save_file", failing_save_file)
    with pytest.raises(OSError):
        save_model(small_model(), target)
    assert target.read_bytes() == saved.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.molequi"]
    monkeypatch.undo()
    load_model(target)


def test_save_creates_parent_directories(tmp_path):
    target = tmp_path / "a" / "b" / "model.molequi"
    assert save_model(small_model(), target) == target
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.molequi"]


# --------------------------------------------------------------------------------------------
# predict-time errors
# --------------------------------------------------------------------------------------------


def test_unknown_element_is_refused_before_computing(saved, monkeypatch):
    model = load_model(saved)

    def must_not_run(*args, **kwargs):
        raise AssertionError("the network ran on a structure with an unknown element")

    monkeypatch.setattr(model.model, "forward", must_not_run)
    atoms = Atoms("CHCl", positions=[[0, 0, 0], [1.1, 0, 0], [-1.8, 0, 0]])
    with pytest.raises(UnknownElementError, match="Cl") as info:
        predict(model, atoms)
    message = str(info.value)
    assert "\n" not in message and "H, C, O" in message
    assert isinstance(info.value, MolequiError)
    # also inside a batch of otherwise valid structures
    with pytest.raises(UnknownElementError, match="Cl"):
        predict(model, [molecule("H2O"), atoms])


def test_invalid_structure_at_predict_time(saved):
    from molequi.errors import InvalidStructureError

    model = load_model(saved)
    atoms = molecule("H2O")
    atoms.positions[0, 0] = np.nan
    with pytest.raises(InvalidStructureError, match="structure 1"):
        predict(model, [molecule("H2O"), atoms])
