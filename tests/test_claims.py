"""The claims report (pipeline.toyworld.claims): its verdict rules on records built by hand, the crossed
bootstrap, and a --quick report end to end."""

from __future__ import annotations

import json
import re

import pytest
import torch

from pipeline.config import ConfigError
from pipeline.toyworld import claims
from pipeline.toyworld.claims import FAILS, HOLDS, UNSURE
from trainers.stats import crossed_bootstrap_ci


def record(tuned: list[float], seconds: float = 1.0, base: float = 0.0, **more) -> dict:
    """One seed's record with per-prompt tuned scores (base the same for every prompt)."""
    return {"base": {"trained": [base] * len(tuned)}, "tuned": {"trained": tuned}, "s_per_step": seconds, **more}


def arm(mean: float, spread: float = 0.1, seconds: float = 1.0, seeds: int = 3, prompts: int = 9) -> list[dict]:
    """Seeds x prompts scores scattered around ``mean``, the same pattern in every arm."""
    pattern = torch.linspace(-spread, spread, prompts)
    return [record((mean + pattern + 0.01 * s).tolist(), seconds) for s in range(seeds)]


def test_crossed_bootstrap_counts_both_seeds_and_prompts():
    constant = torch.full((3, 9), 2.0)
    assert crossed_bootstrap_ci(constant) == (2.0, 2.0, 2.0)
    by_prompt = torch.linspace(0, 1, 9).expand(3, 9)
    by_both = by_prompt + torch.tensor([[-1.0], [0.0], [1.0]])
    narrow, wide = crossed_bootstrap_ci(by_prompt), crossed_bootstrap_ci(by_both)
    assert narrow[1] < narrow[0] < narrow[2] and narrow[0] == pytest.approx(0.5)
    assert wide[2] - wide[1] > 2 * (narrow[2] - narrow[1])  # the seeds' spread widens the interval


@pytest.mark.parametrize(
    ("lows", "highs", "verdict"),
    [([0.1, 0.2], [1.0, 1.0], HOLDS), ([0.1, -0.2], [1.0, -0.1], FAILS), ([0.1, -0.2], [1.0, 0.3], UNSURE)],
)
def test_interval_verdict(lows, highs, verdict):
    assert claims.verdict_from(lows, highs) == verdict


def test_beats_all_needs_every_difference_above_zero():
    judge = claims.judge_beats_all("lead")
    assert judge({"lead": arm(2.0), "a": arm(1.0), "b": arm(1.5)})[0] == HOLDS
    assert judge({"lead": arm(2.0), "a": arm(1.0), "b": arm(2.0)})[0] == UNSURE
    verdict, lines = judge({"lead": arm(2.0), "a": arm(1.0), "b": arm(3.0)})
    assert verdict == FAILS and lines[1].startswith("lead − b: -1.00")


def test_truncation_needs_a_small_k_that_is_as_good_and_cheaper():
    full = [record(t["tuned"]["trained"], 1.0, base=-10.0) for t in arm(0.0)]  # gain 10, margin 1
    assert claims.judge_truncation({"K=1": arm(-0.5, seconds=0.3), "full DRaFT": full})[0] == HOLDS
    assert claims.judge_truncation({"K=1": arm(-3.0, seconds=0.3), "full DRaFT": full})[0] == FAILS
    assert claims.judge_truncation({"K=1": arm(0.0, seconds=1.2), "full DRaFT": full})[0] == FAILS
    spread = [record([-0.5 + 4 * (i % 2) - 2 for i in range(9)], 0.3) for _ in range(3)]
    assert claims.judge_truncation({"K=1": spread, "full DRaFT": full})[0] == UNSURE


def test_interval_is_the_wider_of_the_bootstrap_and_the_t_interval_over_seeds():
    same_pattern = torch.linspace(0, 1, 9).expand(3, 9)
    assert claims.interval(same_pattern) == crossed_bootstrap_ci(same_pattern)  # no spread between seeds
    seeds_apart = same_pattern + torch.tensor([[-1.0], [0.0], [1.0]])
    mean, low, high = claims.interval(seeds_apart)
    half = 4.303 * 1.0 / 3**0.5  # t(2) * the sd of the per-seed means (1) / sqrt(seeds)
    assert (low, high) == pytest.approx((mean - half, mean + half))
    assert low < crossed_bootstrap_ci(seeds_apart)[1]


def test_early_stop_needs_faster_steps_and_the_gain_kept():
    without = arm(10.0, spread=1.0)
    assert claims.judge_early_stop({"DRTune": without, "DRTune + early stop": arm(9.9, seconds=0.7)})[0] == HOLDS
    assert claims.judge_early_stop({"DRTune": without, "DRTune + early stop": arm(5.0, seconds=0.7)})[0] == FAILS
    assert claims.judge_early_stop({"DRTune": without, "DRTune + early stop": arm(10.0, seconds=1.1)})[0] == FAILS
    mixed = [record(r["tuned"]["trained"], s) for r, s in zip(arm(10.0), (0.7, 1.1, 0.8))]
    assert claims.judge_early_stop({"DRTune": without, "DRTune + early stop": mixed})[0] == UNSURE


def test_distill_needs_the_teacher_beaten_and_half_its_diversity():
    def generator(reward: float, div: float) -> list[dict]:
        teacher = {
            "one_step": {"trained": [20.0] * 9, "feature_diversity": [0.4] * 9},
            "multi_step": {"trained": [50.0] * 9, "feature_diversity": [0.4] * 9},
        }
        return [
            {**r, "tuned": {**r["tuned"], "feature_diversity": [div + 0.01 * i for i in range(9)]}, "teacher": teacher}
            for r in arm(reward)
        ]

    assert claims.judge_distill({"DI*": generator(48.0, 0.3)})[0] == HOLDS
    assert claims.judge_distill({"DI*": generator(40.0, 0.3)})[0] == FAILS  # below 90% of the multi-step
    assert claims.judge_distill({"DI*": generator(48.0, 0.1)})[0] == FAILS  # collapsed
    verdict, lines = claims.judge_distill({"DI*": generator(48.0, 0.3), "SIM": generator(30.0, 0.3)})
    assert verdict == HOLDS and lines[-1].startswith("DI* − SIM: +18.00")


def test_lv_verdict_reads_the_variance_ratio():
    one = torch.linspace(1, 2, 32).tolist()
    result = {
        "draws": 32,
        "mean_gradient_norm": {"DRaFT-1": 1.0, "DRaFT-LV n=2": 1.0},
        "mean_gradient_cosine": 0.9,
        "s_per_draw": {"DRaFT-1": 1.0, "DRaFT-LV n=2": 1.5},
    }
    for factor, verdict in ((0.5, HOLDS), (2.0, FAILS)):
        result["spread"] = {"DRaFT-1": one, "DRaFT-LV n=2": [factor * v for v in one]}
        got, _, ratio = claims.judge_lv(result)
        assert got == verdict and ratio[0] == pytest.approx(factor)
    noisy = torch.rand(32, generator=torch.Generator().manual_seed(0)) * 2
    result["spread"] = {"DRaFT-1": one, "DRaFT-LV n=2": (torch.tensor(one) * noisy).tolist()}
    assert claims.judge_lv(result)[0] in (UNSURE, HOLDS, FAILS)


@pytest.mark.slow
def test_quick_report_runs_every_claim_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the repository, as an installed project is run
    assert claims.main(["--quick", "--out", str(tmp_path)]) == 0
    report = (tmp_path / "claims.md").read_text()
    data = json.loads((tmp_path / "claims.json").read_text())
    assert data["seeds"] == [0, 1] and data["quick"] and set(data["verdicts"]) == set(claims.ALL)
    for key in claims.ALL:
        assert (tmp_path / f"{key}.png").stat().st_size > 5000
        assert f"| {key} | {data['verdicts'][key]} |" in report
    verdicts = re.findall(r"\*\*Verdict: (.*?)\.\*\*", report)
    assert len(verdicts) == 5 and set(verdicts) <= {HOLDS, FAILS, UNSURE}
    assert report.count("*Rule (fixed before the runs).*") == 5
    for key, claim in claims.CLAIMS.items():
        records = data["runs"][key]
        assert list(records) == [a.label for a in claim.arms]
        for runs in records.values():
            assert len(runs) == 2 and all(len(r["base"]["trained"]) == 3 and r["s_per_step"] > 0 for r in runs)
            assert all({"diversity", "feature_diversity"} <= set(r["tuned"]) for r in runs)
        assert claim.judge(records)[0] == data["verdicts"][key]  # the verdict follows from what was recorded
    assert all("teacher" in r for r in data["runs"]["di_star"]["DI*"])
    assert claims.judge_lv(data["runs"]["lv_variance"])[0] == data["verdicts"]["lv_variance"]
    assert data["runs"]["lv_variance"]["draws"] == 8
    with pytest.raises(ConfigError, match="was started with a different config"):  # the full settings, same folder
        claims.main(["--claims", "draft_truncation", "--out", str(tmp_path)])
