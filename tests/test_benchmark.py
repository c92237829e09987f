"""benchmark.py: one step per method and KV cache, timed after the untimed warm-up steps."""
import json

import pytest

import benchmark
import run


def test_step_benchmark_times_each_method_with_each_cache(tiny_model_dir, tmp_path, monkeypatch):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {a} + 2?", "answer": str(a + 2)}) + "\n"
                            for a in range(6)))
    cfg = run.parse_config(benchmark.BenchConfig, argv=[
        "--model", str(tiny_model_dir), "--dataset", str(data), "--prompts-per-step", "2", "--group-size", "4",
        "--max-new-tokens", "8", "--loc-max-new-tokens", "6", "--repeats", "2", "--methods", "grpo,srpo",
        "--caches", "dynamic,static", "--beta", "0.1"])
    steps = []
    original = benchmark.grpo.train_on_rollouts
    monkeypatch.setattr(benchmark.grpo, "train_on_rollouts", lambda *a, **k: steps.append(1) or original(*a, **k))
    table = benchmark.measure(cfg)
    assert list(table) == ["grpo, dynamic", "srpo, dynamic", "grpo, static", "srpo, static"]
    assert len(steps) == 4 * (1 + 2)  # a static cache brings one untimed step per row first
    for row in table.values():
        assert row["rollout_s"] > 0 and row["train_s"] > 0 and row["tokens"] > 0
        assert 0 < row["decode_steps"] <= row["tokens"]  # the longest response of each call, not all of them


def test_unknown_cache_is_refused(tiny_model_dir):
    cfg = run.parse_config(benchmark.BenchConfig, argv=["--model", str(tiny_model_dir), "--caches", "vllm"])
    with pytest.raises(SystemExit, match="--caches: unknown"):
        benchmark.measure(cfg)
