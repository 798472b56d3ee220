"""The report shows the evaluate step's prompt-following score beside FID, with chance."""

from __future__ import annotations

from tasks.report.summary import final_metrics, report_markdown

FOLLOWING = {
    "seen": {"n": 30, "shape": 0.9, "color": 0.95, "position": 1.0, "all": 0.85},
    "held_out": {"n": 2, "shape": 0.5, "color": 1.0, "position": 1.0, "all": 0.5},
    "unparsed": 0, "chance": {"shape": 1 / 3, "color": 0.25, "position": 0.25, "all": 1 / 48},
}


def _envelopes(following):
    result = {"fid": 300.0, "clip_score": None, "prompt_following": following,
              "protocol": {"num_samples": 32, "resolution": 64}}
    return [{"step": "evaluate", "result": result}]


def test_final_metrics_carry_prompt_following_per_group_and_chance():
    metrics = final_metrics(_envelopes(FOLLOWING))
    assert metrics["fid_n32_64px"] == 300.0
    assert metrics["prompt_all_seen_n32_64px"] == 0.85
    assert metrics["prompt_shape_held_out_n32_64px"] == 0.5
    assert metrics["prompt_all_chance_n32_64px"] == 1 / 48


def test_report_prints_the_table_with_chance():
    text = report_markdown("demo", _envelopes(FOLLOWING), [])
    assert "### Prompt following" in text
    assert "| seen pairs | 30 | 90.0% | 95.0% | 100.0% | 85.0% |" in text
    assert "| chance | | 33.3% | 25.0% | 25.0% | 2.1% |" in text


def test_no_prompt_following_outside_the_demo_vocabulary():
    metrics = final_metrics(_envelopes(None))
    assert not any(key.startswith("prompt_") for key in metrics)
    assert "Prompt following" not in report_markdown("demo", _envelopes(None), [])
