"""The report shows the evaluate step's prompt-following score beside FID, with chance: the
report set (never tuned on) apart from the tune set's seen and held-out pairs."""

from __future__ import annotations

from tasks.report.summary import final_metrics, report_markdown

FOLLOWING = {
    "report": {"n": 57, "shape": 0.8, "color": 0.9, "position": 0.95, "all": 0.7},
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
    assert metrics["prompt_all_report_n32_64px"] == 0.7


def test_report_prints_the_table_with_chance():
    text = report_markdown("demo", _envelopes(FOLLOWING), [])
    assert "### Prompt following" in text
    assert "| seen pairs | 30 | 90.0% | 95.0% | 100.0% | 85.0% |" in text
    assert "| chance | | 33.3% | 25.0% | 25.0% | 2.1% |" in text
    # The report set first, and a line that says which set was tuned on.
    assert text.index("| report set | 57 | 80.0% | 90.0% | 95.0% | 70.0% |") < text.index(
        "| seen pairs |")
    assert "Report set: prompts of seen (shape, color, position) combinations" in text
    assert "were tuned" in text
    # A result from before the report set prints the tune set alone.
    older = {k: v for k, v in FOLLOWING.items() if k != "report"}
    assert "| report set |" not in report_markdown("demo", _envelopes(older), [])


def test_no_prompt_following_outside_the_demo_vocabulary():
    metrics = final_metrics(_envelopes(None))
    assert not any(key.startswith("prompt_") for key in metrics)
    assert "Prompt following" not in report_markdown("demo", _envelopes(None), [])


def test_evaluate_run_logs_prompt_following_next_to_fid():
    from tasks.evaluate.tracking import following_metrics, result_markdown

    result = {"fid": 300.0, "prompt_following": FOLLOWING,
              "protocol": {"num_samples": 32, "resolution": 64, "clip_model": None}}
    metrics = following_metrics(result)
    assert metrics["eval/prompt_all_seen_n32_64px"] == 0.85
    assert metrics["eval/prompt_position_held_out_n32_64px"] == 1.0
    assert metrics["eval/prompt_all_chance_n32_64px"] == 1 / 48
    assert metrics["eval/prompt_all_report_n32_64px"] == 0.7
    assert len(metrics) == 13  # 4 attributes x 3 groups + chance
    assert following_metrics({**result, "prompt_following": None}) == {}
    text = result_markdown({**result, "checkpoint": "s3://b/c", "clip_score": None,
                            "real_stats": "r", "samples": "s"})
    assert "| seen pairs | 30 | 90.0% | 95.0% | 100.0% | 85.0% |" in text


def test_dvc_metrics_carry_all_correct_per_group_and_chance():
    from tasks.params import load_params
    from tasks.report.dvc_metrics import flat_metrics

    envelopes = _envelopes(FOLLOWING)
    metrics = flat_metrics(load_params(profile="demo"), envelopes, [])
    assert metrics["follow_seen_all"] == 0.85 and metrics["follow_held_out_all"] == 0.5
    assert metrics["follow_report_all"] == 0.7
    assert metrics["follow_chance_all"] == round(1 / 48, 4)
    assert not any(k.startswith("follow_") for k in
                   flat_metrics(load_params(profile="demo"), _envelopes(None), []))


def test_fid_curve_puts_each_scored_stage_at_the_images_seen_so_far():
    from tasks.report.chart import fid_chart
    from tasks.report.summary import fid_curve

    train = {"stages": {"stage1": {"images": 19200}, "stage2": {"images": 57600}}}
    by_stage = {"stage1": {"fid": 250.0, "resolution": 64},
                "stage2": {"fid": 180.0, "resolution": 64}}
    envelopes = [{"step": "train", "result": train},
                 {"step": "evaluate", "result": {"fid": 180.0, "by_stage": by_stage}}]
    curve = fid_curve(envelopes)
    assert [(p["stage"], p["images_seen"], p["fid"]) for p in curve] == [
        ("stage1", 19200, 250.0), ("stage2", 76800, 180.0)]
    assert fid_chart(curve)[:8] == b"\x89PNG\r\n\x1a\n"
    # One scored stage is no curve.
    del by_stage["stage1"]
    assert fid_curve(envelopes) == []
