"""The learning test trains the demo recipe, shortened, not another one: the same stages in the
same order (masking, noise levels, learning rates, loads) with fewer steps each."""

from __future__ import annotations

import dataclasses

from benchmarks.demo_learning import demo_recipe
from tasks.params import load_params


def test_the_shortened_recipe_keeps_every_stage_but_its_steps():
    demo = load_params(profile="demo")
    short = demo_recipe(demo, share=0.5, seed=3)
    assert short.train.seed == 3
    assert [s.steps for s in short.train.stages] == [round(s.steps / 2) for s in demo.train.stages]
    for mine, theirs in zip(short.train.stages, demo.train.stages, strict=True):
        assert dataclasses.replace(mine, steps=theirs.steps) == theirs
    assert short.train.stages[0].mask_ratio > 0  # the masked first stage is part of it
    assert dataclasses.replace(short.train, seed=demo.train.seed,
                               stages=demo.train.stages) == demo.train
    assert short.evaluate == demo.evaluate  # scored as the demo is scored
    assert demo_recipe(demo).train.stages == demo.train.stages
