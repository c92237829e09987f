"""The sweep's arithmetic, on hand-made metrics: intervals, paired gains, the target, rollouts and
tokens to reach it. (The sweep itself takes an hour; `reproduce.py --quick` is its smoke test.)"""
import json
import math
import statistics

import pytest

import reproduce


def write_run(folder, evals, tokens_per_step=100, rollouts_per_step=64, extra=None):
    """metrics.jsonl of a run evaluated at step 0 and then every step, with `evals` accuracies."""
    folder.mkdir(parents=True)
    lines = [{"step": 0, "eval_acc": evals[0]}]
    for step, acc in enumerate(evals[1:], 1):
        lines.append({"step": step, "eval_acc": acc, "samples_seen": step * rollouts_per_step,
                      "tokens_generated": tokens_per_step, **(extra or {})})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder


def test_interval_is_the_t_interval_by_hand():
    mean, half = reproduce.interval([0.1, 0.2, 0.3, 0.4, 0.5])
    sd = math.sqrt(sum((x - 0.3) ** 2 for x in [0.1, 0.2, 0.3, 0.4, 0.5]) / 4)
    assert mean == pytest.approx(0.3) and half == pytest.approx(2.776 * sd / math.sqrt(5))
    assert reproduce.interval([0.7]) == (0.7, 0.0)


def t_quantile_by_integration(df: int, p: float = 0.975) -> float:
    """Student t's p-quantile from its density, integrated by Simpson's rule and bisected."""
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(x: float, n: int = 2000) -> float:  # 0.5 + the integral of the density from 0 to x
        h = x / n
        f = [math.exp(log_c - (df + 1) / 2 * math.log1p((i * h) ** 2 / df)) for i in range(n + 1)]
        return 0.5 + h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))

    low, high = 0.0, 20.0
    for _ in range(50):
        low, high = ((low + high) / 2, high) if cdf((low + high) / 2) < p else (low, (low + high) / 2)
    return low


@pytest.mark.parametrize("df", [1, 4, 9, 19, 29, 30, 31, 45, 200])
def test_t_quantile_matches_the_density(df):
    assert reproduce.t95(df) == pytest.approx(t_quantile_by_integration(df), abs=1e-3)


def test_horizon_stats_pairs_seeds_and_finds_the_target(tmp_path):
    runs = {
        "grpo": {0: write_run(tmp_path / "g0", [0.2, 0.3, 0.4, 0.6]),
                 1: write_run(tmp_path / "g1", [0.2, 0.25, 0.3, 0.4])},
        "oracle": {0: write_run(tmp_path / "o0", [0.2, 0.45, 0.5, 0.7], tokens_per_step=150,
                                extra={"loc_exact": 1.0}),
                   1: write_run(tmp_path / "o1", [0.2, 0.3, 0.3, 0.35], tokens_per_step=150,
                                extra={"loc_exact": 1.0})},
    }
    stats = reproduce.horizon_stats(runs)
    assert stats["start_acc"] == 0.2
    assert stats["target"] == pytest.approx(0.2 + (0.5 - 0.2) / 2)  # halfway to GRPO's mean final 0.5
    oracle, grpo = stats["methods"]["oracle"], stats["methods"]["grpo"]
    assert oracle["final"] == [0.7, 0.35]
    assert oracle["gain"] == pytest.approx([0.1, -0.05])  # each seed against GRPO's run of the same seed
    assert oracle["area"] == pytest.approx([statistics.mean([0.45, 0.5, 0.7]) - statistics.mean([0.3, 0.4, 0.6]),
                                            statistics.mean([0.3, 0.3, 0.35]) - statistics.mean([0.25, 0.3, 0.4])])
    # target 0.35: oracle seed 0 at step 1 (64 rollouts, 150 tokens), seed 1 at step 3; GRPO seed 0
    # at step 2, seed 1 at step 3
    assert oracle["rollouts_to_target"] == [64, 192] and oracle["tokens_to_target"] == [150, 450]
    assert grpo["rollouts_to_target"] == [128, 192] and grpo["tokens_to_target"] == [200, 300]
    assert oracle["tokens_per_rollout"] == pytest.approx([150 / 64] * 2)
    assert oracle["loc_exact"] == [1.0, 1.0] and grpo["loc_exact"] == []


def test_a_target_never_reached_is_left_out_and_counted(tmp_path):
    runs = {"grpo": {0: write_run(tmp_path / "g0", [0.2, 0.4, 0.6])},
            "rrpo": {0: write_run(tmp_path / "r0", [0.2, 0.25, 0.3])}}
    stats = reproduce.horizon_stats(runs)
    assert stats["methods"]["rrpo"]["rollouts_to_target"] == []
    report = reproduce.summarize({"horizons": {"3": stats}}, type("Args", (), {
        "model": "toy", "steps": 2, "prompts_per_step": 8, "group_size": 8, "lr": 1e-4, "seeds": [0],
        "eval_size": 500, "loss_agg": "seq-mean"})())
    assert "| rrpo | 0.300 | -0.300 |" in report and "(0/1)" in report


def test_a_target_at_or_below_the_start_is_reached_by_no_run(tmp_path):
    runs = {"grpo": {0: write_run(tmp_path / "g0", [0.3, 0.2, 0.25])},
            "oracle": {0: write_run(tmp_path / "o0", [0.3, 0.35, 0.4])}}
    stats = reproduce.horizon_stats(runs)
    assert stats["target"] <= stats["start_acc"]
    assert stats["methods"]["oracle"]["rollouts_to_target"] == [] and stats["methods"]["grpo"]["tokens_to_target"] == []
    report = reproduce.summarize({"horizons": {"3": stats}}, type("Args", (), {
        "model": "toy", "steps": 2, "prompts_per_step": 8, "group_size": 8, "lr": 1e-4, "seeds": [0],
        "eval_size": 500, "loss_agg": "seq-mean"})())
    assert "No target" in report and "(0/1)" in report


@pytest.mark.parametrize("method", ["grpo", "rrpo", "srpo", "oracle", "oracle-noise0.25", "start"])
@pytest.mark.parametrize("group_size", [8, 16])
def test_each_run_passes_the_sweeps_settings_to_its_script(method, group_size, tmp_path, monkeypatch):
    """The flags of a run's command, parsed by the script's own parser, give a config whose fields
    equal the settings the sweep compares with a finished run's config."""
    import grpo, rrpo, run, srpo
    args = reproduce.parse_args(["--steps", "12", "--lr", "3e-5", "--eval-every", "3", "--out", str(tmp_path),
                                 "--group-size", str(group_size), "--loss-agg", "token-mean"])
    commands = []
    monkeypatch.setattr(reproduce.subprocess, "run", lambda command, **kwargs:
                        commands.append(command) or reproduce.subprocess.CompletedProcess(command, 0))
    reproduce.run(method, 8, 7, args)
    script, settings = reproduce.run_settings(method, 8, 7, args)
    assert commands[0][1].endswith(script)
    config_class = {"grpo.py": grpo.Config, "rrpo.py": rrpo.ResetConfig, "srpo.py": srpo.SRPOConfig}[script]
    parsed = run.parse_config(config_class, commands[0][2:])
    assert {key: getattr(parsed, key) for key in settings} == settings
    assert settings["lr"] == 3e-5 and settings["steps"] == 12 and settings["dataset"] == "toy-8"
    assert parsed.loss_agg == "token-mean"
    assert settings.get("oracle_noise") == (0.25 if method == "oracle-noise0.25" else None)
    assert parsed.group_size == group_size
    if method != "grpo":  # the paper's 12 attempts to find a parent for a budget of 8, in proportion
        assert parsed.max_fresh == {8: 12, 16: 24}[group_size]
        assert parsed.reset == {"rrpo": "random", "srpo": "self", "start": "start"}.get(method, "oracle")


def test_methods_and_group_size_are_checked(capsys):
    assert reproduce.parse_args([]).methods == ["grpo", "rrpo", "srpo", "oracle"]
    assert reproduce.parse_args(["--methods", "grpo", "start", "grpo"]).methods == ["grpo", "start"]
    for bad, message in ((["--methods", "oracle"], "add grpo"), (["--group-size", "7"], "an even number")):
        with pytest.raises(SystemExit):
            reproduce.parse_args(bad)
        assert message in capsys.readouterr().err


@pytest.mark.parametrize("bad, message", [
    (["--horizons", "4", "9"], "--horizons 9: must be at least 1 and at most 8"),
    (["--horizons", "0"], "--horizons 0: must be at least 1"),
    (["--oracle-noise", "0.5", "1.5"], "--oracle-noise 1.5: must be at least 0 and at most 1"),
    (["--steps", "0"], "--steps 0: must be at least 1"),
    (["--seeds", "-1"], "--seeds -1: must be at least 0"),
    (["--lr", "0"], "--lr 0.0: must be above 0"),
])
def test_out_of_range_settings_stop_before_any_run(bad, message, capsys):
    with pytest.raises(SystemExit):
        reproduce.parse_args(bad)
    assert message in capsys.readouterr().err


def test_a_failed_run_stops_the_sweep_with_the_end_of_its_log(tmp_path, monkeypatch):
    """The real script, given a setting it rejects: the sweep names the run and shows why."""
    args = reproduce.parse_args(["--steps", "12", "--out", str(tmp_path)])
    settings = reproduce.run_settings
    monkeypatch.setattr(reproduce, "run_settings", lambda *a: (settings(*a)[0], {**settings(*a)[1], "lr": -1}))
    with pytest.raises(SystemExit, match=r"(?s)grpo-seed0' failed \(exit status 2\).*--lr -1.0: must be at least 0"):
        reproduce.run("grpo", 4, 0, args)


def finished_run(folder, config):
    (folder / "checkpoint-12").mkdir(parents=True)
    reproduce.torch.save({"config": config}, folder / "checkpoint-12" / "trainer_state.pt")


def test_a_finished_run_is_reused_only_with_the_same_settings(tmp_path, monkeypatch):
    args = reproduce.parse_args(["--steps", "12", "--lr", "3e-5", "--out", str(tmp_path)])
    monkeypatch.setattr(reproduce.subprocess, "run", lambda *a, **k: pytest.fail("a finished run was run again"))
    out = tmp_path / "ops8" / "oracle-seed3"
    _, settings = reproduce.run_settings("oracle", 8, 3, args)
    finished_run(out, {**settings, "temperature": 1.0})
    assert reproduce.run("oracle", 8, 3, args) == out
    other = reproduce.parse_args(["--steps", "12", "--lr", "1e-4", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"lr 3e-05 there, 0.0001 here.*its own --out"):
        reproduce.run("oracle", 8, 3, other)
    token_mean = reproduce.parse_args(["--steps", "12", "--lr", "3e-5", "--loss-agg", "token-mean", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"loss_agg seq-mean there, token-mean here"):
        reproduce.run("oracle", 8, 3, token_mean)


def test_the_noise_horizon_must_be_swept_and_quick_runs_each_job_once(capsys):
    with pytest.raises(SystemExit):
        reproduce.parse_args(["--horizons", "2", "4", "--noise-horizon", "8"])
    assert "--noise-horizon 8 is not one of --horizons" in capsys.readouterr().err
    assert reproduce.parse_args(["--horizons", "2", "4", "--noise-horizon", "8", "--oracle-noise"]).noise_horizon == 8
    quick = reproduce.parse_args(["--quick", "--horizons", "4"])
    assert quick.horizons == [4] and quick.seeds == [0]


def test_gains_over_the_start_control_are_paired_by_seed(tmp_path):
    runs = {"grpo": {0: write_run(tmp_path / "g0", [0.2, 0.5]), 1: write_run(tmp_path / "g1", [0.2, 0.4])},
            "start": {0: write_run(tmp_path / "s0", [0.2, 0.45]), 1: write_run(tmp_path / "s1", [0.2, 0.30])},
            "oracle": {0: write_run(tmp_path / "o0", [0.2, 0.5]), 1: write_run(tmp_path / "o1", [0.2, 0.35])}}
    stats = reproduce.horizon_stats(runs)
    assert stats["methods"]["oracle"]["gain_over_start"] == pytest.approx([0.05, 0.05])
    assert stats["methods"]["grpo"]["gain_over_start"] == pytest.approx([0.05, 0.10])
    args = type("Args", (), {"model": "toy", "steps": 1, "prompts_per_step": 8, "group_size": 8, "lr": 1e-4,
                             "seeds": [0, 1], "eval_size": 500, "loss_agg": "seq-mean"})()
    report = reproduce.summarize({"horizons": {"8": stats}}, args)
    assert "gain over start |" in report and report.count(" 0.050 ± 0.000 |") == 1  # the oracle's row
    without = reproduce.summarize({"horizons": {"8": reproduce.horizon_stats({"grpo": runs["grpo"]})}}, args)
    assert "gain over start" not in without


def test_the_report_after_an_earlier_step_reads_the_runs_up_to_it(tmp_path, capsys):
    runs = {"grpo": {0: write_run(tmp_path / "g0", [0.2, 0.3, 0.4, 0.6])},
            "oracle": {0: write_run(tmp_path / "o0", [0.2, 0.45, 0.5, 0.55], tokens_per_step=150)}}
    early = reproduce.horizon_stats(runs, up_to_step=2)
    assert early["methods"]["oracle"]["final"] == [0.5] and early["methods"]["oracle"]["gain"] == pytest.approx([0.1])
    assert early["target"] == pytest.approx(0.3)  # halfway to GRPO's 0.4 at step 2
    assert early["methods"]["oracle"]["curves"][0][-1] == (128, 300, 0.5)
    assert reproduce.horizon_stats(runs)["methods"]["oracle"]["gain"] == pytest.approx([-0.05])
    assert reproduce.parse_args(["--steps", "60", "--report-at", "20", "40"]).report_at == [20, 40]
    for bad in (["--report-at", "6"], ["--report-at", "20"], ["--steps", "20", "--report-at", "0"]):
        with pytest.raises(SystemExit):
            reproduce.parse_args(["--steps", "20", *bad])
        assert "--report-at" in capsys.readouterr().err


def test_the_gain_at_grpos_tokens_reads_the_whole_run_between_evaluations(tmp_path):
    # GRPO 100 tokens a step: 300 after step 3. The oracle, 60 a step, has generated 300 half-way
    # between its steps 4 (240) and 6 (360); the control, 150 a step, after step 2 (300).
    runs = {"grpo": {0: write_run(tmp_path / "g0", [0.2, 0.3, 0.4, 0.5, 0.6, 0.6, 0.6])},
            "oracle": {0: write_run(tmp_path / "o0", [0.2, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55], tokens_per_step=60)},
            "start": {0: write_run(tmp_path / "s0", [0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5], tokens_per_step=150)}}
    early = reproduce.horizon_stats(runs, up_to_step=3)
    assert early["methods"]["oracle"]["gain"] == pytest.approx([0.4 - 0.5])  # at the same step
    assert early["methods"]["oracle"]["gain_at_grpo_tokens"] == pytest.approx([0.5 - 0.5])  # step 5: 300 tokens
    assert early["methods"]["start"]["gain_at_grpo_tokens"] == pytest.approx([0.3 - 0.5])
    assert reproduce.accuracy_at_tokens([(0, 0, 0.2), (64, 240, 0.45), (128, 480, 0.55)], 300) == pytest.approx(0.475)
    # after all 6 steps GRPO has generated 600 tokens; the oracle's run never got that far, the
    # control's had after its step 4
    whole = reproduce.horizon_stats(runs)
    assert whole["methods"]["oracle"]["gain_at_grpo_tokens"] == []
    assert whole["methods"]["start"]["gain_at_grpo_tokens"] == pytest.approx([0.4 - 0.6])
    args = type("Args", (), {"model": "toy", "steps": 6, "prompts_per_step": 8, "group_size": 8, "lr": 1e-4,
                             "seeds": [0], "eval_size": 500, "loss_agg": "seq-mean"})()
    report = reproduce.summarize({"horizons": {"8": whole}}, args)
    assert "| oracle | 0.550 | -0.050 | - (0/1) |" in report and "| start | 0.500 | -0.100 | -0.200 (1/1) |" in report
