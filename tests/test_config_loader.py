"""Tests for the strict YAML + override config loader in ``pipeline/config.py``.

The sample schema below is defined here (not imported from the real schemas) so that these tests
pin the loader's generic behaviour; ``from __future__ import annotations`` makes every annotation a
string, as in the real schema modules.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest
import yaml

from pipeline.config import (
    ConfigError,
    dump_yaml,
    exit_on_config_error,
    flatten,
    from_dict,
    load_config,
    parse_overrides,
    run_cli,
    to_dict,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True, kw_only=True, slots=True)
class OptimConfig:
    lr: float = 1e-4  # learning rate
    betas: tuple[float, ...] = (0.9, 0.999)  # Adam betas

    def validate(self) -> list[str]:
        return [] if self.lr > 0 else [f"lr: must be > 0, got {self.lr!r}"]


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainerConfig:
    k: int = 1  # DRaFT-K: number of final sampling steps with gradient
    steps: int = 50  # sampling steps per image
    scheduler: Literal["ddim", "euler"] = "ddim"  # sampler maths
    grad_clip: float | None = None  # max grad norm; None disables clipping
    optim: OptimConfig = field(default_factory=OptimConfig)  # optimiser section

    def validate(self) -> list[str]:
        problems = []
        if self.k < 1:
            problems.append(f"k: expected an integer >= 1, got {self.k!r}")
        if self.k > self.steps:
            problems.append(f"k ({self.k}) exceeds steps ({self.steps})")  # whole-object problem
        return problems


@dataclass(frozen=True, kw_only=True, slots=True)
class RewardConfig:
    name: Literal["aesthetic", "hps", "pickscore"]  # required: which reward model
    weight: float = 1.0  # weight in the summed reward


@dataclass(frozen=True, kw_only=True, slots=True)
class DraftAlgo:
    name: Literal["draft"] = "draft"  # union tag
    k: int = 1  # truncation depth


@dataclass(frozen=True, kw_only=True, slots=True)
class DrtuneAlgo:
    name: Literal["drtune"] = "drtune"  # union tag
    stop_step: int = 10  # early-stop step


@dataclass(frozen=True, kw_only=True, slots=True)
class RunConfig:
    run_name: str  # required
    seed: Optional[int] = 0  # noqa: UP045 -- exercises typing.Optional as well as `X | None`
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    rewards: list[RewardConfig] = field(default_factory=lambda: [RewardConfig(name="aesthetic")])
    algorithm: DraftAlgo | DrtuneAlgo = field(default_factory=DraftAlgo)
    tags: dict[str, str] = field(default_factory=dict)


def _yaml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return str(path)


def _problems(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        from_dict(RunConfig, data)
    return info.value.problems


GOOD_YAML = """\
run_name: exp1
trainer:
  k: 3
  optim:
    lr: 1e-3
rewards:
  - name: hps
    weight: 0.5
  - name: pickscore
algorithm:
  name: drtune
  stop_step: 4
"""


def test_defaults_fill_everything_but_required_fields():
    cfg = from_dict(RunConfig, {"run_name": "x"})
    assert cfg == RunConfig(run_name="x")
    assert cfg.trainer.optim.lr == 1e-4 and cfg.trainer.grad_clip is None
    assert cfg.algorithm == DraftAlgo() and cfg.rewards == [RewardConfig(name="aesthetic")]
    assert load_config(RunConfig, None, ["run_name=x"]) == cfg


def test_yaml_then_overrides_precedence(tmp_path):
    path = _yaml(tmp_path, GOOD_YAML)
    cfg = load_config(RunConfig, path, ["trainer.k=5", "trainer.optim.lr=2e-4", "seed=null"])
    assert cfg.trainer.k == 5  # override beats YAML
    assert cfg.trainer.optim.lr == 2e-4 and isinstance(cfg.trainer.optim.lr, float)
    assert cfg.trainer.steps == 50 and cfg.trainer.optim.betas == (0.9, 0.999)  # defaults kept
    assert cfg.seed is None
    assert cfg.rewards == [RewardConfig(name="hps", weight=0.5), RewardConfig(name="pickscore")]
    assert cfg.algorithm == DrtuneAlgo(stop_step=4)


def test_every_problem_reported_at_once(tmp_path):
    path = _yaml(tmp_path, "run_name: x\ntrainer:\n  k: five\n  kk: 1\n  scheduler: dpm\n")
    with pytest.raises(ConfigError) as info:
        load_config(RunConfig, path)
    lines = str(info.value).splitlines()
    assert lines[0] == f"invalid config (3 problems) in {path}:"
    assert lines[1:] == [
        "  - trainer.kk: unknown key; did you mean 'k'?",
        "  - trainer.k: expected an integer, got 'five' (str)",
        "  - trainer.scheduler: expected one of 'ddim', 'euler', got 'dpm' (str)",
    ]


def test_unknown_key_without_close_match_lists_valid_keys():
    assert _problems({"run_name": "x", "trainer": {"zzz": 1}}) == [
        "trainer.zzz: unknown key; valid keys: grad_clip, k, optim, scheduler, steps"
    ]


def test_literal_error_lists_allowed_values_and_suggests():
    (problem,) = _problems({"run_name": "x", "rewards": [{"name": "hsp"}]})
    assert problem == (
        "rewards.0.name: expected one of 'aesthetic', 'hps', 'pickscore', got 'hsp' (str); did you mean 'hps'?"
    )


def test_type_error_names_field_value_and_type():
    assert _problems({"run_name": "x", "trainer": {"grad_clip": "big"}}) == [
        "trainer.grad_clip: expected a number (e.g. 0.5 or 1e-4) or null, got 'big' (str)"
    ]
    (problem,) = _problems({"run_name": ["y" * 10] * 100})
    assert problem.startswith("run_name: expected a string, got ['yyyyyyyyyy', 'yyy")
    assert problem.endswith("... (list)") and len(problem) < 120  # the value's repr is truncated


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"trainer": {"k": True}}, "trainer.k: expected an integer, got True (bool)"),
        ({"trainer": {"optim": {"lr": False}}}, "trainer.optim.lr: expected a number (e.g. 0.5"),
        ({"trainer": {"k": 2.0}}, "trainer.k: expected an integer, got 2.0 (float)"),
        ({"trainer": {"k": None}}, "trainer.k: expected an integer, got None (NoneType)"),
        ({"trainer": {"optim": {"lr": "0.5"}}}, "trainer.optim.lr: expected a number"),
        ({"trainer": {"k": "1e3"}}, "trainer.k: expected an integer, got '1e3' (str)"),
        ({"tags": {"a": True}}, "tags.a: expected a string, got True (bool); YAML reads yes/no"),
        ({"tags": {1: "a"}}, "tags.1: keys must be strings, got 1 (int)"),
        ({"trainer": 5}, "trainer: expected a mapping of TrainerConfig fields, got 5 (int)"),
        ({"rewards": {"name": "hps"}}, "rewards: expected a list (each item a mapping of Reward"),
        ({"trainer": {"optim": {"betas": 0.9}}}, "trainer.optim.betas: expected a list (each item"),
        ({"rewards": [{"weight": 2}]}, "rewards.0.name: missing required field (one of 'aesthetic'"),
        ({"algorithm": None}, "algorithm: expected a mapping of DraftAlgo fields or a mapping of Drt"),
        ({"algorithm": {"k": 2}}, "algorithm: expected a mapping of DraftAlgo fields or a mapping"),
    ],
)
def test_strict_types(data, expected):
    (problem,) = _problems({"run_name": "x", **data})
    assert problem.startswith(expected)


def test_int_accepted_for_float_and_none_for_optional():
    cfg = from_dict(RunConfig, {"run_name": "x", "seed": None, "trainer": {"grad_clip": 1}})
    assert cfg.seed is None
    assert cfg.trainer.grad_clip == 1.0 and type(cfg.trainer.grad_clip) is float


def test_missing_required_and_non_mapping_root():
    assert _problems({}) == ["run_name: missing required field (a string)"]
    with pytest.raises(ConfigError, match=r"<top level>: expected a mapping of RunConfig fields, got \[1\]"):
        from_dict(RunConfig, [1])


def test_validate_prefixed_and_skipped_for_objects_that_failed_to_build():
    problems = _problems({"run_name": "x", "trainer": {"k": 0, "optim": {"lr": -1}}})
    assert problems == [
        "trainer.optim.lr: must be > 0, got -1.0",
        "trainer.k: expected an integer >= 1, got 0",
    ]
    assert _problems({"run_name": "x", "trainer": {"k": 9, "steps": 4}}) == ["trainer: k (9) exceeds steps (4)"]
    # k=0 would fail validate(), but the section has a type error, so validate() must not run.
    assert _problems({"run_name": "x", "trainer": {"k": 0, "steps": "many"}}) == [
        "trainer.steps: expected an integer, got 'many' (str)"
    ]


def test_tagged_union_selected_by_name():
    cfg = from_dict(RunConfig, {"run_name": "x", "algorithm": {"name": "drtune", "stop_step": 3}})
    assert cfg.algorithm == DrtuneAlgo(stop_step=3)
    assert _problems({"run_name": "x", "algorithm": {"name": "drtun"}}) == [
        "algorithm.name: expected one of 'draft', 'drtune', got 'drtun' (str); did you mean 'drtune'?"
    ]
    assert _problems({"run_name": "x", "algorithm": {"name": "draft", "stop_step": 3}}) == [
        "algorithm.stop_step: unknown key; valid keys: k, name"
    ]


def test_exponent_float_accepted_in_yaml_and_override(tmp_path):
    assert yaml.safe_load("lr: 1e-4") == {"lr": "1e-4"}  # the YAML 1.1 gap being handled
    path = _yaml(tmp_path, "run_name: x\ntrainer:\n  optim:\n    lr: 1e-4\n  grad_clip: 3E5\n")
    cfg = load_config(RunConfig, path)
    assert cfg.trainer.optim.lr == 1e-4 and type(cfg.trainer.optim.lr) is float
    assert cfg.trainer.grad_clip == 3e5
    cfg = load_config(RunConfig, path, ["trainer.optim.lr=2.5e-5", "trainer.optim.betas=[0.5, 1e-1]"])
    assert cfg.trainer.optim.lr == 2.5e-5 and cfg.trainer.optim.betas == (0.5, 0.1)


def test_parse_overrides_values_are_yaml():
    assert parse_overrides(["trainer.k=5", "x=[1,2]", "name=null", "a.b.c=hi", "s=a=b"]) == {
        "trainer": {"k": 5},
        "x": [1, 2],
        "name": None,
        "a": {"b": {"c": "hi"}},
        "s": "a=b",
    }


def test_list_index_override(tmp_path):
    path = _yaml(tmp_path, GOOD_YAML)
    cfg = load_config(RunConfig, path, ["rewards.1.weight=2", "rewards.0.name=aesthetic"])
    assert cfg.rewards == [RewardConfig(name="aesthetic", weight=0.5), RewardConfig(name="pickscore", weight=2.0)]
    with pytest.raises(ConfigError) as info:
        load_config(RunConfig, path, ["rewards.5.weight=2"])
    assert info.value.problems == ["rewards.5: no such list item; rewards has 2 items"]


@pytest.mark.parametrize("bad", ["trainer.k", "=5", "trainer..k=1", " =1"])
def test_malformed_override(bad):
    with pytest.raises(ConfigError) as info:
        load_config(RunConfig, None, ["run_name=x", bad])
    assert info.value.problems == [f"override {bad!r}: expected the form key.sub=value (e.g. a.b=1)"]


def test_override_problem_mentions_command_line(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(RunConfig, _yaml(tmp_path, GOOD_YAML), ["trainer.kk=5", "trainer.steps=x"])
    assert info.value.problems == [
        "trainer.kk: unknown key; did you mean 'k'? (from command-line override 'trainer.kk=5')",
        "trainer.steps: expected an integer, got 'x' (str) (from command-line override 'trainer.steps=x')",
    ]


def test_missing_file(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(RunConfig, missing)
    assert info.value.problems == [f"{missing}: cannot read config file (No such file or directory)"]


def test_yaml_syntax_error_names_line(tmp_path):
    path = _yaml(tmp_path, "run_name: x\ntrainer:\n  k: [1, 2\n  steps: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(RunConfig, path)
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}: YAML syntax error at line 4, column 8:")


def test_top_level_must_be_mapping_and_empty_file_means_defaults(tmp_path):
    with pytest.raises(ConfigError, match="top level must be a mapping of sections, got \\['a'\\]"):
        load_config(RunConfig, _yaml(tmp_path, "- a\n"))
    assert load_config(RunConfig, _yaml(tmp_path, ""), ["run_name=x"]) == RunConfig(run_name="x")


def test_round_trip_and_yaml_dump(tmp_path):
    cfg = load_config(RunConfig, _yaml(tmp_path, GOOD_YAML), ["tags={a: b}", "trainer.grad_clip=1"])
    data = to_dict(cfg)
    assert data["trainer"]["optim"]["betas"] == [0.9, 0.999]  # tuples become lists
    assert from_dict(RunConfig, data) == cfg
    assert from_dict(RunConfig, yaml.safe_load(dump_yaml(cfg))) == cfg
    assert dump_yaml(cfg).startswith("run_name: exp1\nseed: 0\ntrainer:\n")  # schema order


def test_flatten_keys():
    flat = flatten(from_dict(RunConfig, {"run_name": "x", "rewards": [{"name": "hps"}, {"name": "pickscore"}]}))
    assert flat["trainer.optim.lr"] == 1e-4
    assert flat["trainer.optim.betas.1"] == 0.999
    assert flat["rewards.1.name"] == "pickscore" and flat["algorithm.name"] == "draft"
    assert flat["tags"] == {}  # empty containers are kept as leaves
    assert sorted(flat) == [
        "algorithm.k", "algorithm.name", "rewards.0.name", "rewards.0.weight", "rewards.1.name",
        "rewards.1.weight", "run_name", "seed", "tags", "trainer.grad_clip", "trainer.k",
        "trainer.optim.betas.0", "trainer.optim.betas.1", "trainer.optim.lr", "trainer.scheduler",
        "trainer.steps",
    ]  # fmt: skip


def test_config_error_pickles():
    err = pickle.loads(pickle.dumps(ConfigError(["a: b"], "f.yaml")))
    assert err.problems == ["a: b"] and str(err) == "invalid config (1 problem) in f.yaml:\n  - a: b"


def test_run_cli_exit_codes(capsys):
    def bad() -> int:
        load_config(RunConfig, None, ["trainer.k=five"])
        return 0

    with pytest.raises(SystemExit) as info:
        run_cli(bad)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("invalid config (2 problems) in <no file> + command-line overrides:\n")
    assert "Traceback" not in err
    with pytest.raises(SystemExit) as info:
        run_cli(lambda: 3)
    assert info.value.code == 3
    with pytest.raises(KeyError), exit_on_config_error():  # only ConfigError is caught
        raise KeyError("x")


def test_cli_helper_in_subprocess_prints_one_message():
    script = (
        "from pipeline.config import ConfigError, run_cli\n"
        "def main():\n    raise ConfigError(['trainer.k: bad'], 'run.yaml')\n"
        "run_cli(main)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr == "invalid config (1 problem) in run.yaml:\n  - trainer.k: bad\n"
    assert proc.stdout == ""
