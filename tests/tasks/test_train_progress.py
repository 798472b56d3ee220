"""A stage's progress, read from rank 0's output as the launcher copies it through."""

from __future__ import annotations

import io

from tasks.train.step import Progress, follow


def test_progress_lines_give_step_of_total_rate_and_eta(capsys, monkeypatch):
    clock = iter([100.0, 110.0, 130.0])
    monkeypatch.setattr("tasks.train.step.time.monotonic", lambda: next(clock))
    out = ("stage stage2: 100 steps x 32 images (1 x 32 per rank), 1 rank(s), resumed from step 0\n"
           "step 1 images 32 loss 0.9000 250.0 img/s\n"
           "a warning in between\n"
           "step 11 images 352 loss 0.5000 310.5 img/s\n"
           "step 31 images 992 loss 0.4000 300.0 img/s\n")
    seen: list[Progress] = []
    follow(io.StringIO(out), "stage2", 100, seen.append)
    # Everything the child printed still reaches this process's output, in order.
    assert capsys.readouterr().out == out
    assert [(p.step, p.steps, p.images_per_s) for p in seen] == \
        [(1, 100, 250.0), (11, 100, 310.5), (31, 100, 300.0)]
    # 1 s per step between the first line and each later one.
    assert [p.eta_s for p in seen] == [None, 89.0, 69.0]
    assert seen[1].line() == "stage2: step 11 of 100, 310 img/s, ETA 1.5 min"
    assert seen[0].line().endswith("ETA unknown")
