"""The claims report (pipeline.toyworld.claims, second edition): its verdict rules and the learning-rate
choice on records built by hand, the variance decomposition on gradients with known parts, adherence read
from a saved grid, the prompt split, the shipped report against its own data, and a --quick report end to end."""

from __future__ import annotations

import json
import pathlib
import re
import shutil

import pytest
import torch

from pipeline.config import ConfigError
from pipeline.toyworld import claims, claims_runs
from pipeline.toyworld.claims import Evidence
from pipeline.toyworld.claims_report import FAILS, HOLDS, UNSURE, interval, verdict_from
from pipeline.toyworld.shapes import ASSETS_DIR, PROMPT_FILES, caption, parse_caption, render
from trainers.evaluation import save_grid
from trainers.stats import crossed_bootstrap_ci


def record(seed: int, tuned: list[float], base: float = 0.0, adherence: float = 0.8, **metrics) -> dict:
    """One seed's record: per-prompt held-out (and validation) scores; ``metrics`` adds tuned ones."""
    n = len(tuned)
    when = {
        "base": {"trained": [base] * n, "adherence": [0.8] * n},
        "tuned": {"trained": tuned, "adherence": [adherence] * n, **metrics},
    }
    return {"seed": seed, "lr": 1e-3, "s_per_step": 1.0, "seconds": 1.0, "validation": when, "heldout": when}


def arm(mean: float, spread: float = 0.1, seeds: int = 3, prompts: int = 9, base: float = 0.0, **kw) -> list[dict]:
    """Seeds x prompts scores scattered around ``mean``, the same pattern in every arm."""
    pattern = torch.linspace(-spread, spread, prompts)
    return [record(s, (mean + pattern + 0.01 * s).tolist(), base, **kw) for s in range(seeds)]


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
    assert verdict_from(lows, highs) == verdict


def test_interval_is_the_wider_of_the_bootstrap_and_the_t_interval_over_seeds():
    same_pattern = torch.linspace(0, 1, 9).expand(3, 9)
    assert interval(same_pattern) == crossed_bootstrap_ci(same_pattern)  # no spread between seeds
    seeds_apart = same_pattern + torch.tensor([[-1.0], [0.0], [1.0]])
    mean, low, high = interval(seeds_apart)
    half = 4.303 * 1.0 / 3**0.5  # t(2) * the sd of the per-seed means (1) / sqrt(seeds)
    assert (low, high) == pytest.approx((mean - half, mean + half))
    assert low < crossed_bootstrap_ci(seeds_apart)[1]


def low_level(**others) -> claims.Judged:
    return claims.judge_low_level(Evidence({"DRTune": arm(2.0), **others}))


def test_drtune_must_win_symmetry_without_losing_the_prompt():
    assert low_level(a=arm(1.0), b=arm(1.5))[0] == HOLDS
    verdict, lines, _ = low_level(a=arm(1.0), b=arm(3.0))
    assert verdict == FAILS and lines[1].startswith("DRTune − b: symmetry -1.00")
    blank = {"DRTune": arm(2.0, adherence=0.1), "a": arm(1.0)}  # symmetric, but no longer the prompt's picture
    assert claims.judge_low_level(Evidence(blank))[0] == FAILS
    slight = {"DRTune": arm(2.0, adherence=0.75), "a": arm(1.0)}  # 5 points less adherence: within the margin
    assert claims.judge_low_level(Evidence(slight))[0] == HOLDS
    verdict, _, unsure = low_level(a=arm(1.0), b=arm(2.0))
    assert verdict == UNSURE and unsure == ["DRTune", "b"]  # these get more seeds


def test_more_seeds_are_paired_with_the_seeds_both_arms_ran():
    five = arm(2.0, seeds=5)
    five[3]["heldout"]["tuned"]["trained"] = [100.0] * 9  # a seed the other arm lacks is left out
    verdict, lines, _ = claims.judge_low_level(Evidence({"DRTune": five[:3] + five[3:], "a": arm(1.0)}))
    assert verdict == HOLDS and "+1.00" in lines[0]


def test_non_inferiority_needs_a_cheaper_arm_within_the_margin():
    full = arm(0.0, base=-10.0)  # gain 10: margin 2
    flops = {"DRaFT-1": 1.0, "DRaFT-K=2": 2.0, "full DRaFT": 10.0}

    def verdict(one: list[dict], two: list[dict], cost: dict = flops) -> str:
        return claims.judge_truncation(Evidence({"DRaFT-1": one, "DRaFT-K=2": two, "full DRaFT": full}, cost))[0]

    assert verdict(arm(-1.5), arm(-5.0)) == HOLDS
    assert verdict(arm(-3.0), arm(-5.0)) == FAILS
    assert verdict(arm(0.0), arm(0.0), {**flops, "DRaFT-1": 10.0, "DRaFT-K=2": 11.0}) == FAILS  # not cheaper
    wide = [record(s, [-1.0 + 4 * (i % 2) - 2 for i in range(9)]) for s in range(3)]
    assert verdict(wide, arm(-5.0)) == UNSURE
    without = arm(10.0, spread=1.0)
    ev = Evidence({"DRTune": without, "DRTune + early stop": arm(9.0)}, {"DRTune": 2.0, "DRTune + early stop": 1.8})
    assert claims.judge_early_stop(ev)[0] == HOLDS
    ev.records["DRTune + early stop"] = arm(5.0)
    assert claims.judge_early_stop(ev)[0] == FAILS


def test_lv_training_reads_the_paired_difference():
    flops = {"DRaFT-1": 1.0, "DRaFT-LV": 1.5}
    assert claims.judge_lv_training(Evidence({"DRaFT-1": arm(1.0), "DRaFT-LV": arm(2.0)}, flops))[0] == HOLDS
    assert claims.judge_lv_training(Evidence({"DRaFT-1": arm(2.0), "DRaFT-LV": arm(1.0)}, flops))[0] == FAILS


def test_distill_needs_the_teacher_and_di_plus_plus_beaten_and_half_the_pixel_diversity():
    def generator(reward: float, div: float) -> list[dict]:
        runs = arm(reward, diversity=[div + 0.01 * i for i in range(9)])
        for r in runs:
            for kind, score in (("teacher one_step", 20.0), ("teacher multi_step", 45.0)):
                r["heldout"][kind] = {"trained": [score] * 9, "diversity": [0.4] * 9, "adherence": [0.8] * 9}
        return runs

    def verdict(di_star: list[dict], di_pp: list[dict]) -> str:
        return claims.judge_distill(Evidence({"DI*": di_star, "DI++": di_pp}))[0]

    assert verdict(generator(48.0, 0.3), generator(40.0, 0.3)) == HOLDS
    assert verdict(generator(40.0, 0.3), generator(30.0, 0.3)) == FAILS  # below the 50-step teacher
    assert verdict(generator(48.0, 0.3), generator(52.0, 0.3)) == FAILS  # DI++ higher
    assert verdict(generator(48.0, 0.1), generator(40.0, 0.3)) == FAILS  # diversity collapsed


def test_the_learning_rate_keeps_adherence_then_maximises_the_validation_reward():
    def grid_record(reward: float, adherence: float) -> dict:
        return arm(reward, seeds=1, adherence=adherence)[0]

    grid = {1e-3: grid_record(1.0, 0.8), 3e-3: grid_record(2.0, 0.7), 1e-2: grid_record(3.0, 0.1)}
    assert claims_runs.choose_lr(grid) == 3e-3  # 1e-2 scores highest by drawing the wrong picture
    collapsed = {1e-3: grid_record(1.0, 0.3), 3e-3: grid_record(2.0, 0.2)}
    assert claims_runs.choose_lr(collapsed) == 1e-3  # none keeps 80%: the one that follows prompts most


def test_variance_splits_into_between_samples_and_within_x0():
    gen = torch.Generator().manual_seed(0)
    pairs, renoisings, params = 400, 8, 5
    centres = 2.0 * torch.randn(pairs, 1, params, generator=gen, dtype=torch.float64)  # per-sample variance 4
    lv = claims_runs.PairStats.of(
        centres + 0.5 * torch.randn(pairs, renoisings, params, generator=gen, dtype=torch.float64)
    )
    parts = lv.decompose()
    assert parts["between"] == pytest.approx(4.0 * params, rel=0.15)
    assert parts["within"] == pytest.approx(0.25 * params, rel=0.1)
    one = claims_runs.PairStats.of(centres)  # a draw fixed by its pair: no within part
    assert one.decompose()["within"] == 0.0
    ratio, low, high = claims_runs.variance_cost_ratio(lv, one, cost=2.0, resamples=200)
    assert ratio == pytest.approx(parts["total"] * 2.0 / one.decompose()["total"])
    assert low < ratio < high and high < 2.3  # LV's extra within part cannot pay for twice the cost


def test_adherence_reads_each_prompts_row_of_a_saved_grid(tmp_path):
    prompts = [
        caption(parse_caption(p)) for p in ("a red square on a white background", "a blue circle on a black background")
    ]
    gen = torch.Generator().manual_seed(0)
    images = [render(parse_caption(p), gen).float() / 255 for p in prompts for _ in range(3)]
    images[4] = torch.full_like(images[4], 0.5)  # one blank sample of the second prompt
    save_grid(torch.stack(images), str(tmp_path / "grid.png"), 3)
    assert claims_runs.adherence(str(tmp_path / "grid.png"), prompts, 3) == pytest.approx([1.0, 2 / 3])


def test_validation_prompts_are_training_combinations_kept_out_of_training(tmp_path):
    split = claims_runs.write_prompts(str(tmp_path), quick=False)
    train = [p for p in (ASSETS_DIR / PROMPT_FILES["train"]).read_text().splitlines() if p.strip()]
    fit = open(split.fit).read().split("\n")[:-1]
    evaluation = open(split.evaluation).read().split("\n")[:-1]
    validation, heldout = evaluation[: split.validation], evaluation[split.validation :]
    assert (split.validation, split.heldout) == (9, 9) and not set(fit) & set(validation)
    assert sorted(fit + validation) == sorted(train)
    assert heldout == [p for p in (ASSETS_DIR / PROMPT_FILES["heldout"]).read_text().splitlines() if p.strip()]


def test_the_shipped_report_follows_from_its_recorded_runs():
    """docs/claims: every verdict of the second edition is what its rule gives on the runs in claims.json,
    and the page says so in its summary table."""
    shipped = pathlib.Path(__file__).parents[1] / "docs" / "claims"
    data = json.loads((shipped / "claims.json").read_text(encoding="utf-8"))
    report = (shipped / "claims.md").read_text(encoding="utf-8")
    assert not data["quick"] and set(data["verdicts"]) == set(claims.ALL)
    for key, claim in claims.CLAIMS.items():
        runs = data["runs"][key]
        assert (
            claim.judge(Evidence(runs["records"], runs["flops"], data["runs"]["measured"]))[0] == data["verdicts"][key]
        )
    assert claims.judge_lv(data["runs"]["lv_variance"])[0] == data["verdicts"]["lv_variance"]
    assert all(f"| {key} | {verdict} |" in report for key, verdict in data["verdicts"].items())


@pytest.mark.slow
def test_quick_report_runs_every_claim_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the repository, as an installed project is run
    assert claims.main(["--quick", "--out", str(tmp_path)]) == 0
    report = (tmp_path / "claims.md").read_text()
    data = json.loads((tmp_path / "claims.json").read_text())
    assert data["seeds"] == 2 and data["quick"] and set(data["verdicts"]) == set(claims.ALL)
    for key in claims.ALL:
        assert (tmp_path / f"{key}.png").stat().st_size > 5000
        assert f"| {key} | {data['verdicts'][key]} |" in report
    verdicts = re.findall(r"\*\*Verdict: (.*?)\.\*\*", report)
    assert len(verdicts) == len(claims.ALL) and set(verdicts) <= {HOLDS, FAILS, UNSURE}
    assert report.count("*Rule (fixed before the runs).*") == report.count("*Changed from the first edition.*") == 6
    for key, claim in claims.CLAIMS.items():
        runs = data["runs"][key]
        assert list(runs["records"]) == list(claim.arms)
        for label, records in runs["records"].items():
            assert len(records) >= 2 and {r["lr"] for r in records} == {runs["chosen"][label]}
            for r in records:
                assert len(r["heldout"]["base"]["trained"]) == 3 and len(r["validation"]["tuned"]["trained"]) == 2
                assert {"adherence", "diversity", "feature_diversity"} <= set(r["heldout"]["tuned"])
        assert f"| {claim.arms[0]} | 0.001 |" in report  # the grid's rows
        ev = Evidence(runs["records"], runs["flops"], data["runs"]["measured"])
        assert claim.judge(ev)[0] == data["verdicts"][key]  # the verdict follows from what was recorded
    assert all("teacher multi_step" in r["heldout"] for r in data["runs"]["di_star"]["records"]["DI*"])
    lv = data["runs"]["lv_variance"]
    assert claims.judge_lv(lv)[0] == data["verdicts"]["lv_variance"] and lv["one"]["within"] == 0.0
    assert list(data["runs"]["measured"]["norms"]) == ["1", "4"]
    with pytest.raises(ConfigError, match="holds another prompt split"):  # the full settings, same folder
        claims.main(["--claims", "lv_training", "--out", str(tmp_path)])
    shutil.rmtree(tmp_path / "prompts")  # the split agrees now: the runs' own settings are checked
    with pytest.raises(ConfigError, match="was started with a different config"):
        claims.main(["--claims", "lv_training", "--out", str(tmp_path), "--workers", "1"])
