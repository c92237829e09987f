"""benchmark.py: one step per method and KV cache, timed after the untimed warm-up steps."""
import json

import pytest

import benchmark
import grpo
import run
from generation import Chain


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
        assert 0 < row["overlapped_steps"] <= row["decode_steps"]
    assert table["grpo, dynamic"]["overlapped_steps"] == table["grpo, dynamic"]["decode_steps"]  # one call


def test_overlapped_decode_steps_follow_each_prompts_chain_of_calls(monkeypatch):
    # Prompt 0 never fails: fresh solutions, then new fresh ones in the suffixes' call. Prompt 1
    # resets: fresh, localization, suffixes. Each call returns the lengths scripted for it.
    lengths = iter([[[5, 2], [9, 3]],  # fresh: prompt 0's longest 5, prompt 1's 9
                    [[20]],  # localization of prompt 1
                    [[4, 4], [7, 1]]])  # suffixes of prompt 1 (prompt + prefix), then prompt 0's new ones
    monkeypatch.setattr(grpo.Policy, "sample", lambda self, prompts, n, **kw: [
        [Chain([0] * length, [], "eos") for length in group] for group in next(lengths)])
    policy = benchmark.PhaseLog(None, None, grpo.Config())
    policy.examples = [{"prompt_ids": [1, 2]}, {"prompt_ids": [1, 2, 3]}]
    policy.sample([[1, 2], [1, 2, 3]], 2)
    policy.localizing = [1]
    policy.sample([[9, 9, 9]], 1, thoughts=False)
    policy.sample([[1, 2, 3, 8, 8], [1, 2]], 2)
    assert policy.overlapped_decode_steps() == max(5 + 7, 9 + 20 + 4) == 33  # the phased calls: 9 + 20 + 7
    with pytest.raises(ValueError, match="none of the step's prompts"):
        benchmark.owner([4, 1, 2], policy.examples)
    policy.examples.append({"prompt_ids": [1, 2]})
    assert policy.overlapped_decode_steps() is None  # two identical prompts: whose call is whose is unknown


def test_unknown_cache_is_refused(tiny_model_dir):
    cfg = run.parse_config(benchmark.BenchConfig, argv=["--model", str(tiny_model_dir), "--caches", "vllm"])
    with pytest.raises(SystemExit, match="--caches: unknown"):
        benchmark.measure(cfg)
