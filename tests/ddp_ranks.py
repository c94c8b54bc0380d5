"""`cxrlab train` under torchrun, recording on every rank what each epoch's decisions read: the BatchNorm buffers
after they are shared, the val row and the learning rate (with DDP_RANKS_FLAT_SCORE=1 every epoch scores the same,
so a run stops early). Usage: torchrun ... tests/ddp_ranks.py RECORD_PREFIX train ARGS."""

import json
import os
import sys
from pathlib import Path

import cxrlab.training.loop as loop
from cxrlab.cli import main

records = []
shared_buffers, read_score = loop.sync_buffers, loop.score_of


def sync_buffers(process, model):
    shared_buffers(process, model)
    records.append({"buffers": [float(b.double().sum()) for b in model.buffers()]})


def score_of(row, metric):
    records[-1]["row"] = {k: v for k, v in row.items() if k != "seconds"}
    if os.environ.get("DDP_RANKS_FLAT_SCORE"):  # no epoch after the first improves: patience runs out, early stop
        return 0.5
    return read_score(row, metric)


loop.sync_buffers, loop.score_of = sync_buffers, score_of
code = main(sys.argv[2:])
Path(f"{sys.argv[1]}.rank{os.environ['RANK']}.json").write_text(json.dumps(records))
sys.exit(code)
