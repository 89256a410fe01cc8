"""One vocabulary across commands: a committee is ``--model A --model B`` everywhere (a comma list
is refused with the command line to type), the MD time step is ``--dt`` (fs)."""

from __future__ import annotations

import shlex

import pytest

from molequi.cli.main import main
from molequi.cli.options import comma_committee_fix


@pytest.mark.parametrize("argv, fixed", [
    (["evaluate", "a.molequi,b.molequi", "data.xyz"], "molequi evaluate --model a.molequi --model b.molequi data.xyz"),
    (["calibrate", "a.molequi,b.molequi", "d.xyz", "--out", "c.json"],
     "molequi calibrate --model a.molequi --model b.molequi d.xyz --out c.json"),
    (["md", "a.molequi,b.molequi", "s.xyz", "--steps", "5", "--dt", "0.5"],
     "molequi md --model a.molequi --model b.molequi s.xyz --steps 5 --dt 0.5"),
    (["screen", "c.smi", "--model", "a.molequi,b.molequi", "--top", "5"],
     "molequi screen c.smi --model a.molequi --model b.molequi --top 5"),
    (["screen", "c.smi", "--model=a.molequi,b.molequi"], "molequi screen c.smi --model a.molequi --model b.molequi"),
])
def test_a_comma_committee_is_refused_with_the_command_to_type(argv, fixed, capsys):
    assert comma_committee_fix(argv, argv[0]) == fixed
    if argv[0] == "screen":
        pytest.importorskip("rdkit")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.rstrip().endswith(f"run: {fixed}")
    assert shlex.split(fixed)[0] == "molequi"


def test_paths_with_spaces_are_quoted_in_the_fix():
    fixed = comma_committee_fix(["evaluate", "my run/a.molequi,b.molequi", "d.xyz"], "evaluate")
    assert shlex.split(fixed) == ["molequi", "evaluate", "--model", "my run/a.molequi", "--model", "b.molequi", "d.xyz"]


def test_learn_timestep_is_refused_naming_dt(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["learn", "--start", "CH3CH2OH", "--out", "x", "--timestep", "1.0"])
    assert exit_info.value.code == 2
    assert "--timestep is now --dt; use --dt 1.0" in capsys.readouterr().err


def test_md_refuses_a_model_file_among_the_structures(capsys):
    assert main(["md", "--model", "a.molequi", "b.molequi", "s.xyz", "--steps", "2", "--dt", "0.5"]) == 2
    assert "--model a.molequi --model b.molequi" in capsys.readouterr().err
