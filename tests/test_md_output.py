"""MD outputs: trajectory formats (extxyz, ASE .traj), one file for every system, resume of both."""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch

from molequi.errors import ConfigError
from molequi.md import BatchedMD, MDOutput, state_from_atoms
from molequi.models import ModelConfig, build_model

from test_md import ethanol, potential_of


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(3)
    config = ModelConfig(species=[1, 6, 8], cutoff=4.0, channels=8, l_max=1, correlation=2, radial_hidden=[16],
                         avg_num_neighbors=8.0)
    return build_model(config, torch.float64).eval()


def run(model, folder: Path, steps: int, resume: bool = False, plot: bool = False, **traj) -> BatchedMD:
    settings = dict(traj_every=4, log_every=2, restart_every=10, **traj)
    if resume:
        engine, _ = BatchedMD.from_restart(folder / "restart.safetensors", potential_of(model))
        output = MDOutput(folder, 2, resume=True, **settings)
    else:
        state = state_from_atoms([ethanol(0), ethanol(5)], temperature=300.0, friction=0.05, seed=3)
        engine = BatchedMD(potential_of(model), state, dt=0.5, ensemble="nvt")
        output = MDOutput(folder, 2, **settings)
        output(engine)
    engine.run(steps - engine.state.step, [output])
    output.close(plot=plot)
    return engine


@pytest.mark.parametrize("traj_format", ["extxyz", "traj"])
def test_single_trajectory_tags_frames_with_their_system(model, tmp_path, traj_format):
    run(model, tmp_path, 8, traj_format=traj_format, traj_single=True)
    assert not list(tmp_path.glob("system_*.extxyz")) and not list(tmp_path.glob("system_*.traj"))
    frames = ase.io.read(tmp_path / f"trajectory.{traj_format}", ":")
    assert [(a.info["system"], a.info["step"]) for a in frames] == [(0, 0), (1, 0), (0, 4), (1, 4), (0, 8), (1, 8)]
    assert frames[2].info["time_fs"] == pytest.approx(2.0)
    assert np.isfinite(frames[3].get_potential_energy()) and frames[3].get_forces().shape == (9, 3)
    assert np.abs(frames[3].get_velocities()).max() > 0


def test_traj_files_per_system_match_extxyz(model, tmp_path):
    run(model, tmp_path / "x", 8)
    run(model, tmp_path / "t", 8, traj_format="traj")
    for k in range(2):
        text = ase.io.read(tmp_path / "x" / f"system_{k:04d}.extxyz", ":")
        binary = ase.io.read(tmp_path / "t" / f"system_{k:04d}.traj", ":")
        assert [a.info["step"] for a in binary] == [0, 4, 8] and all(a.info["system"] == k for a in binary)
        for a, b in zip(text, binary):
            np.testing.assert_allclose(a.positions, b.positions, atol=1e-8)
            np.testing.assert_allclose(a.get_forces(), b.get_forces(), atol=1e-8)


@pytest.mark.parametrize("traj_format", ["extxyz", "traj"])
def test_resumed_single_trajectory_equals_the_uninterrupted_one(model, tmp_path, traj_format):
    traj = dict(traj_format=traj_format, traj_single=True)
    run(model, tmp_path / "whole", 30, **traj)
    run(model, tmp_path / "split", 27, **traj)  # killed at 27: restart point 20, frames up to 24 written
    run(model, tmp_path / "split", 30, resume=True, **traj)
    whole = ase.io.read(tmp_path / "whole" / f"trajectory.{traj_format}", ":")
    split = ase.io.read(tmp_path / "split" / f"trajectory.{traj_format}", ":")
    assert [(a.info["system"], a.info["step"]) for a in split] == [(a.info["system"], a.info["step"]) for a in whole]
    for a, b in zip(whole, split):
        np.testing.assert_array_equal(a.positions, b.positions)


def test_unknown_trajectory_format_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="extxyz, traj"):
        MDOutput(tmp_path, 1, traj_format="dcd")


def _log(n: int, slope_eV_per_fs: float, temperature: float, dt: float = 1.0):
    time_fs = np.arange(n) * dt
    return {"time_fs": time_fs, "total_eV": -100.0 + slope_eV_per_fs * time_fs,
            "temperature_K": np.full(n, temperature)}


def test_energy_figure_nve_mean_spread_and_drift_per_atom_per_ps():
    from molequi.md.output import energy_drift, plot_energy_figure

    # 9 atoms, 0.009 eV/ps = 1 meV/atom/ps; the second system 3 meV/atom/ps and stopped early
    assert energy_drift(np.arange(5.0), 9e-6 * np.arange(5.0), 9) == pytest.approx(1.0)
    logs = [_log(50, 9e-6, 300.0), _log(30, 27e-6, 310.0), _log(50, 9e-6, 290.0)]
    figure = plot_energy_figure(logs, [9, 9, 9], ensemble="nve", num_systems=3)
    top, bottom = figure.axes
    assert figure._suptitle.get_text() == "NVE (velocity Verlet): 3 systems (1 stopped early)"
    note = top.texts[0].get_text()
    assert note.startswith("drift +1.67 ± 1.2 meV/atom/ps") and "3 systems" in note
    assert "meV/atom" in top.get_ylabel() and bottom.get_ylabel() == "temperature, K"
    mean = next(line for line in bottom.lines if line.get_label() == "mean")
    assert mean.get_ydata()[0] == pytest.approx(300.0) and mean.get_ydata()[-1] == pytest.approx(295.0)
    assert len(top.collections) == 1  # one shaded band, not a line per system


def test_energy_figure_nvt_draws_the_target_and_no_drift():
    from molequi.md.output import plot_energy_figure

    figure = plot_energy_figure([_log(20, 1e-4, 300.0)], [9], ensemble="nvt", temperature=300.0)
    top, bottom = figure.axes
    assert figure._suptitle.get_text() == "NVT (Langevin, target 300 K): 1 system"
    assert "not a drift" in top.texts[0].get_text()
    target = [line for line in bottom.lines if line.get_label() == "target 300 K"]
    assert target and target[0].get_ydata()[0] == 300.0


def test_close_writes_energy_png_that_knows_the_run(model, tmp_path):
    run(model, tmp_path, 8, plot=True)
    assert (tmp_path / "energy.png").stat().st_size > 1000


def test_progress_lines_in_a_log_file_and_one_summary_for_many_replicas(capsys):
    from molequi.md.progress import MDProgress, summary_lines

    progress = MDProgress(100, dt=0.5, every_s=0.0)  # stderr is captured: not a terminal
    for _ in range(100):
        progress()
    progress.close()
    err = capsys.readouterr().err
    assert "md: 100/100 steps (100.0 %)" in err and "ETA" in err and "ns/day" in err and "\r" not in err

    # 9 atoms over 1 ps: 9e-6·k eV = k/1000 meV/atom/ps
    records = [{"system": k, "n_atoms": 9, "drift": 9e-6 * k, "max_deviation": 9e-5, "duration_fs": 1000.0}
               for k in range(16)]
    records[3] = {"system": 3, "n_atoms": 9, "stopped": "system 3 stopped at step 40: temperature 5000 K exceeds 3000 K"}
    lines = summary_lines(records, "nve")
    assert len(lines) == 4  # not 16
    assert lines[0] == "16 systems, 15 ran to the end, 1 stopped early"
    assert "energy drift" in lines[1] and "range +0 … +0.015 meV/atom/ps" in lines[1]
    assert "(E_end − E_start)/(n_atoms · t)" in lines[1]
    assert lines[3].startswith("  system 3 stopped")
    assert len(summary_lines(records[:4], "nvt")) == 5  # few systems: a line each


def test_cli_single_traj_file_and_one_summary_for_many_replicas(model, tmp_path, capsys):
    from ase.io import write

    from molequi.cli.main import main
    from molequi.models import save_model

    path = save_model(model, tmp_path / "model.molequi")
    write(tmp_path / "ethanol.xyz", ethanol(0))
    out = tmp_path / "md"
    assert main(["md", str(path), str(tmp_path / "ethanol.xyz"), "--steps", "4", "--dt", "0.5", "--replicas", "10",
                 "--out", str(out), "--traj-every", "2", "--traj-format", "traj", "--traj-single",
                 "--device", "cpu", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "10 systems, 10 ran to the end" in printed and "system 9:" not in printed
    frames = ase.io.read(out / "trajectory.traj", ":")
    assert len(frames) == 30 and sorted({a.info["system"] for a in frames}) == list(range(10))
