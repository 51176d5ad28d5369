"""Progress ticks: loops report work to a listener only while one listens, and the CLI's
stage lines draw a bar from them."""

from __future__ import annotations

import io

import torch
from torch import nn

from gdws_export import _progress
from gdws_export.attacks import AttackConfig
from gdws_export.cli.progress import StageLine
from gdws_export.harness.accuracy import attack_batched


def test_ticks_reach_the_listener_only_while_it_listens():
    seen = []
    _progress.tick(3)  # nobody listens: nothing happens
    token = _progress.listen(seen.append)
    _progress.tick(2)
    _progress.tick()
    _progress.stop(token)
    _progress.tick(5)
    assert seen == [2, 1]


def test_an_attack_ticks_once_per_image_it_attacks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()
    x = torch.rand(10, 3, 2, 2)
    y = model(x).argmax(1)  # all right clean: all attacked
    y[:3] = (y[:3] + 1) % 3  # three wrong clean: not attacked
    seen = []
    token = _progress.listen(seen.append)
    try:
        attack_batched(model, x, y, AttackConfig(eps=0.1, steps=1), batch_size=4)
    finally:
        _progress.stop(token)
    assert sum(seen) == 7 and len(seen) == 2  # batches of 4 and 3


def test_stage_lines_with_bars_end_each_stage_with_its_time():
    stream = io.StringIO()
    line = StageLine(stream, enabled=True, bars=True)
    line("search", "judging a candidate", None)
    _progress.tick(64)  # the bar listens while the stage runs
    line("search", "judging a candidate", 1.25)
    _progress.tick(1)  # and no longer after
    assert stream.getvalue().rstrip().endswith("judging a candidate: done (1.2 s)")
    assert line._bar is None


def test_stage_lines_without_bars_keep_one_line_per_stage():
    stream = io.StringIO()
    line = StageLine(stream, enabled=True)
    line("load", "loading the model", None)
    line("load", "loading the model", 0.1)
    assert stream.getvalue() == "loading the model ... done (0.1 s)\n"
