"""`cxrlab train` under torchrun, recording on every rank what each epoch's decisions read: the BatchNorm buffers
after they are shared, the val row and the learning rate (with DDP_RANKS_FLAT_SCORE=1 every epoch scores the same,
so a run stops early). Rank 0 also copies the run folder as it stands after epoch 2 to RECORD_PREFIX.after2: what a
run killed during epoch 3 leaves behind. Usage: torchrun ... tests/ddp_ranks.py RECORD_PREFIX train ARGS."""

import json
import os
import shutil
import sys
from pathlib import Path

import cxrlab.training.loop as loop
from cxrlab.cli import main

records = []
shared_buffers, read_score, save = loop.sync_buffers, loop.score_of, loop.save_epoch


def sync_buffers(process, model):
    shared_buffers(process, model)
    records.append({"buffers": [float(b.double().sum()) for b in model.buffers()]})


def score_of(row, metric):
    records[-1]["row"] = {k: v for k, v in row.items() if k != "seconds"}
    if os.environ.get("DDP_RANKS_FLAT_SCORE"):  # no epoch after the first improves: patience runs out, early stop
        return 0.5
    return read_score(row, metric)


def save_epoch(run, learner, state, is_best):
    save(run, learner, state, is_best)
    if state.epoch == 2:
        shutil.copytree(run.path, f"{sys.argv[1]}.after2")


loop.sync_buffers, loop.score_of, loop.save_epoch = sync_buffers, score_of, save_epoch
code = main(sys.argv[2:])
Path(f"{sys.argv[1]}.rank{os.environ['RANK']}.json").write_text(json.dumps(records))
sys.exit(code)
