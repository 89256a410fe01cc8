"""The pretrained model's training recipes: every stage file is a valid training config, each
recipe's model fits the wheel's 10 MB, and the training script picks the recipe it is asked for."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

import pytest

from molequi.models import build_model
from molequi.training.config import load_config

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "molequi" / "pretrained"
ORGANIC = [1, 6, 7, 8, 9, 16, 17, 35]  # H C N O F S Cl Br
MAX_BYTES = 10 * 1024 * 1024


@pytest.mark.parametrize("recipe", ["organic_xtb", "organic_xtb.gpu"])
def test_recipe_stages_load_and_the_model_fits_the_wheel(recipe: str) -> None:
    first = load_config(RECIPES / f"{recipe}.yaml")
    second = load_config(RECIPES / f"{recipe}.stage2.yaml")
    assert first.seed == second.seed  # the same validation structures stay held out in both stages
    assert second.learning_rate < first.learning_rate
    model = build_model(dataclasses.replace(first.model, species=ORGANIC))
    float32_bytes = 4 * sum(p.numel() for p in model.parameters())
    assert 0 < float32_bytes <= MAX_BYTES
    assert first.model.ensemble_heads > 1 and first.model.charge_input


@pytest.mark.parametrize("flag, recipe, run", [([], "organic_xtb", "organic_xtb"),
                                               (["--gpu"], "organic_xtb.gpu", "organic_xtb_gpu")])
def test_training_script_runs_the_recipe_asked_for(flag: list[str], recipe: str, run: str, tmp_path: Path) -> None:
    script = str(REPO / "scripts" / "train_organic_xtb.sh")
    missing = subprocess.run(["bash", script, *flag, str(tmp_path / "none")], capture_output=True, text=True)
    assert missing.returncode == 2 and "datasets/organic_xtb.py" in missing.stderr
    # a stand-in molequi on PATH records the first command the script gives it, then fails
    data, bin_dir = tmp_path / "data", tmp_path / "bin"
    data.mkdir(), bin_dir.mkdir()
    (data / "train.extxyz").write_text("")
    (bin_dir / "molequi").write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/called\nexit 3\n')
    (bin_dir / "molequi").chmod(0o755)
    # in an empty folder: no earlier run there, so the script starts the first stage
    done = subprocess.run(["bash", script, *flag, str(data)], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert done.returncode == 3
    called = (tmp_path / "called").read_text().split()
    assert called[:3] == ["train", "--config", f"molequi/pretrained/{recipe}.yaml"]
    assert called[called.index("--out") + 1] == f"runs/{run}"
