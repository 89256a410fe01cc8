"""Active learning (``molequi learn``): grow a training set where a committee of potentials disagrees.

Each round trains a committee on the labels so far (warm-started from the previous round's
members), runs committee MD with the batched engine at the given temperatures, picks the
``per_round`` most uncertain and mutually different frames, labels them with an ASE calculator
(GFN2-xTB through tblite by default) and adds them to the training set::

    from molequi.training import load_config
    from molequi.learn import LearnSettings, run_learning
    settings = LearnSettings(rounds=3, per_round=10, temperatures=[300.0, 600.0], md_steps=400)
    run_learning(settings, ["ethanol.xyz"], "runs/learn", config=load_config(None, {"max_epochs": 30}))

Round r (0 … ``rounds``) trains on ``n_labels`` structures, evaluates the committee on the test
data, explores with MD, and — except in the last round — labels ``per_round`` new frames.
Files in the output directory (each written atomically)::

    learn.json                  settings and the content hashes of the start structures and test data
    start.extxyz                the labelled start set (start structures, and perturbed copies)
    round_NNN/train.extxyz      the training set of round NNN
    round_NNN/member_M/         a ``molequi train`` run per committee member (model.molequi …)
    round_NNN/candidates.extxyz the MD frames with their committee spread
    round_NNN/labelled.extxyz   the frames picked and labelled in round NNN
    round_NNN/round.json        the round's row and timings (written last: the round is done)
    rounds.csv, rounds.png      one row per round; test error and max spread against labels

A run killed at any point continues where it stopped when the same command is run again:
training members resume from their checkpoints, labels already computed are kept. A rerun
with different settings, start structures or test data is refused, naming what changed
(only ``rounds`` may grow). Units: Å, eV, eV/Å, fs, K.

Modules: :mod:`~molequi.learn.settings` (the settings), :mod:`~molequi.learn.loop` (the
rounds), :mod:`~molequi.learn.explore` (committee MD and test errors),
:mod:`~molequi.learn.selection` (which frames), :mod:`~molequi.learn.labelers` (labels and the
files they go to), :mod:`~molequi.learn.state` (content hashes, the rerun check, the rounds table).
"""

from molequi.learn.explore import CommitteePrediction, explore, md_seeds, predict_committee, test_errors
from molequi.learn.labelers import label_structure, make_labeler, read_labelled
from molequi.learn.loop import LearnResult, run_learning
from molequi.learn.selection import beyond_ceiling, distance_descriptor, select_clustered, select_frames
from molequi.learn.settings import (
    FORMAT,
    IGNORED_TRAINING_KEYS,
    MD_STARTS,
    RANKINGS,
    SELECTIONS,
    TRUST_SCOPES,
    LearnSettings,
    parse_labeler,
)
from molequi.learn.state import plot_rounds, structures_sha256

__all__ = [
    "FORMAT", "IGNORED_TRAINING_KEYS", "MD_STARTS", "RANKINGS", "SELECTIONS", "TRUST_SCOPES",
    "CommitteePrediction", "LearnResult", "LearnSettings", "beyond_ceiling", "distance_descriptor", "explore",
"label_structure", "make_labeler", "md_seeds", "parse_labeler", "plot_rounds",
    "predict_committee", "read_labelled", "run_learning", "select_clustered", "select_frames", "structures_sha256",
    "test_errors",
]
