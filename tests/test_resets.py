"""rrpo.py and srpo.py: the rollout buffer of one prompt, checked exactly with a scripted policy,
then end to end on a tiny random model and on the real SmolLM2."""
import json
import random

import pytest
import torch

import data
import generation
import grpo
import localize
import rrpo
import run
import srpo

RIGHT = "2 + 3 = 5</thought>Check: 5</thought>\\boxed{5}</thought>"
WRONG = "2 + 3 = 6</thought>6 is odd</thought>So 6</thought>\\boxed{6}</thought>"


class ScriptedPolicy(grpo.Policy):
    """grpo.Policy with `sample` replaced by a script: script(prompt_text, n, kind) -> n texts, where
    kind is fresh, suffix or localization: a call with budgets per prompt is a suffix call, which
    also samples the new fresh solutions of prompts with no parent. Records every call, so the
    tests can check what was asked, in how many batched calls."""

    def __init__(self, tokenizer, cfg, script):
        self.model, self.tokenizer, self.cfg, self.script = None, tokenizer, cfg, script
        self.tokens_generated, self.calls, self.untrained = 0, [], []

    def sample(self, prompts, n, max_new_tokens=None, max_thoughts=None, temperature=None, greedy=False,
               thoughts=True):
        kind = "localization" if not thoughts else "suffix" if max_new_tokens is not None else "fresh"
        self.calls.append({"prompts": prompts, "n": n, "temperature": temperature, "kind": kind,
                           "max_new_tokens": max_new_tokens, "max_thoughts": max_thoughts})
        texts = [self.script(self.tokenizer.decode(p), n, kind) for p in prompts]
        return [[scripted_chain(self.tokenizer, t) for t in group] for group in texts]


def scripted_chain(tokenizer, text):
    """The chain a model that writes `text` and then eos would give."""
    ids = tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    return generation.Chain(ids, localize.step_token_ends(tokenizer, ids), "answer" if "\\boxed{" in text else "eos")


def make_examples(tokenizer, n=1):
    examples = [{"question": f"What is 2 + 3? (copy {i})", "answer": "5"} for i in range(n)]
    for ex in examples:
        ex["prompt_ids"] = tokenizer(data.format_prompt(tokenizer, ex["question"]), add_special_tokens=False).input_ids
    return examples


def fresh_then_suffixes(fresh_texts, suffix_texts, localization="\\boxed{2}"):
    """Fresh solutions are taken in order from fresh_texts, suffixes from the start of suffix_texts."""
    def script(prompt, n, kind):
        if kind == "localization":
            return [localization]
        if kind == "suffix":
            return suffix_texts[:n]
        return [fresh_texts.pop(0) for _ in range(n)]
    return script


@pytest.fixture()
def cfg():
    return srpo.SRPOConfig(group_size=8, max_fresh=12)


def test_buffer_layout_parent_excluded_and_prefix_token_exact(tiny_tokenizer, cfg):
    fresh = [RIGHT, WRONG, RIGHT, WRONG, RIGHT]  # the first wrong one (index 1) is the parent
    suffixes = ["3 = 5</thought>\\boxed{5}</thought>", "\\boxed{6}</thought>"] * 2
    policy = ScriptedPolicy(tiny_tokenizer, cfg, fresh_then_suffixes(list(fresh), suffixes))
    [example] = make_examples(tiny_tokenizer)
    reset_step = random.Random(7).randint(1, 4)  # WRONG has 4 steps
    rollouts, diagnostics = rrpo.reset_rollouts(policy, [example], random.Random(7), rrpo.random_resets)

    group1 = [r for r in rollouts if r.group == rrpo.fresh_group(0)]
    group2 = [r for r in rollouts if r.group == 1]
    assert len(group1) == 4 and len(group2) == 4
    parent_ids = tiny_tokenizer(WRONG, add_special_tokens=False).input_ids + [tiny_tokenizer.eos_token_id]
    # Group 1: the four fresh solutions other than the parent, in order, on the bare prompt.
    expected = [fresh[j] for j in (0, 2, 3, 4)]
    assert [policy.text(r.response_ids) for r in group1] == expected
    assert all(r.prompt_ids == example["prompt_ids"] for r in group1)
    assert sum(r.response_ids == parent_ids for r in rollouts) == 1  # the other WRONG, not the parent
    # Group 2: context = prompt + the parent's own ids up to the end of step k-1.
    ends = localize.step_token_ends(tiny_tokenizer, parent_ids)
    prefix = parent_ids[:ends[reset_step - 2]] if reset_step > 1 else []
    steps = localize.split_steps(WRONG)
    for r in group2:
        assert r.prompt_ids == example["prompt_ids"] + prefix
        assert tiny_tokenizer.decode(prefix) == "".join(steps[:reset_step - 1])
    # Suffixes are judged as whole solutions: prefix + suffix.
    assert [r.reward for r in group2] == data.rewards(
        [example] * 4, [tiny_tokenizer.decode(prefix + r.response_ids, skip_special_tokens=True) for r in group2])
    assert [r.reward for r in group2] == [1.0, 0.0, 1.0, 0.0]  # by the suffixes' own boxed answers
    assert diagnostics["reset_frac"] == [1.0] and diagnostics["reset_step_mean"] == [reset_step]
    assert diagnostics["fresh_attempts_mean"] == [5]


def test_suffix_mask_covers_only_suffix_tokens(tiny_tokenizer, cfg):
    from conftest import make_model

    policy = ScriptedPolicy(tiny_tokenizer, cfg, fresh_then_suffixes(
        [WRONG, RIGHT, RIGHT, RIGHT, WRONG], ["\\boxed{5}</thought>", "x</thought>\\boxed{6}</thought>"] * 2))
    rollouts, _ = rrpo.reset_rollouts(policy, make_examples(tiny_tokenizer), random.Random(3),
                                      lambda *args: [3])  # reset at step 3: prefix = steps 1..2
    suffixes = [r for r in rollouts if r.group == 1]
    _, mask = grpo.response_logprobs(make_model(tiny_tokenizer), suffixes, tiny_tokenizer.pad_token_id, 1.0)
    assert mask.sum(-1).tolist() == [len(r.response_ids) for r in suffixes]
    parent_ids = tiny_tokenizer(WRONG, add_special_tokens=False).input_ids
    prefix_len = localize.step_token_ends(tiny_tokenizer, parent_ids)[1]
    assert all(len(r.prompt_ids) == len(make_examples(tiny_tokenizer)[0]["prompt_ids"]) + prefix_len
               for r in suffixes)


def test_advantages_are_normalised_within_each_group(tiny_tokenizer, cfg):
    policy = ScriptedPolicy(tiny_tokenizer, cfg, fresh_then_suffixes(
        [WRONG, RIGHT, RIGHT, RIGHT, RIGHT], ["\\boxed{5}</thought>", "\\boxed{6}</thought>",
                                              "\\boxed{6}</thought>", "\\boxed{6}</thought>"]))
    rollouts, _ = rrpo.reset_rollouts(policy, make_examples(tiny_tokenizer), random.Random(0), lambda *a: [4])
    advantages = grpo.group_advantages(torch.tensor([r.reward for r in rollouts]),
                                       torch.tensor([r.group for r in rollouts]))
    groups = [r.group for r in rollouts]
    # Group 1 is all right: zero advantage, even though group 2 has failures (no mixing).
    assert advantages[[g == 0 for g in groups]].tolist() == [0.0] * 4
    # Group 2: rewards 1, 0, 0, 0 -> mean 1/4, std sqrt(3)/4.
    assert advantages[[g == 1 for g in groups]].tolist() == pytest.approx([3 ** 0.5, -(3 ** -0.5), -(3 ** -0.5),
                                                                           -(3 ** -0.5)])


def test_no_failure_keeps_half_the_fresh_solutions_and_samples_half_anew(tiny_tokenizer, cfg):
    right = [RIGHT.replace("Check", f"Check {j}") for j in range(12)]  # right, and told apart
    policy = ScriptedPolicy(tiny_tokenizer, cfg, fresh_then_suffixes(list(right), [WRONG, RIGHT, RIGHT, RIGHT]))
    rollouts, diagnostics = rrpo.reset_rollouts(policy, make_examples(tiny_tokenizer), random.Random(0))
    assert len(rollouts) == 8 and {r.group for r in rollouts} == {0}
    assert diagnostics["reset_frac"] == [0.0] and diagnostics["fresh_attempts_mean"] == [12]
    assert [c["n"] for c in policy.calls] == [5, 7, 4]  # a second round only for the unfailed prompt
    assert policy.calls[-1]["max_new_tokens"] == [cfg.max_new_tokens]  # the whole budget, from the bare prompt
    assert policy.calls[-1]["max_thoughts"] == [cfg.max_thoughts]
    assert all(r.prompt_ids == make_examples(tiny_tokenizer)[0]["prompt_ids"] and r.kind == "fresh" for r in rollouts)
    assert [policy.text(r.response_ids) for r in rollouts] == right[:4] + [WRONG, RIGHT, RIGHT, RIGHT]
    # so the group can hold a failure and train
    advantages = grpo.group_advantages(torch.tensor([r.reward for r in rollouts]), torch.tensor([0] * 8))
    assert advantages.abs().sum() > 0


def test_failure_in_second_round_becomes_parent(tiny_tokenizer, cfg):
    fresh = [RIGHT] * 5 + [RIGHT, RIGHT, WRONG, RIGHT, RIGHT, RIGHT, RIGHT]
    policy = ScriptedPolicy(tiny_tokenizer, cfg, fresh_then_suffixes(fresh, [RIGHT] * 4))
    rollouts, diagnostics = rrpo.reset_rollouts(policy, make_examples(tiny_tokenizer), random.Random(0))
    assert diagnostics["reset_frac"] == [1.0]
    assert [r.group for r in rollouts] == [0] * 4 + [1] * 4


def test_phases_are_batched_over_prompts(tiny_tokenizer, cfg):
    examples = make_examples(tiny_tokenizer, n=3)
    policy = ScriptedPolicy(tiny_tokenizer, cfg, fresh_then_suffixes([WRONG, RIGHT, RIGHT, RIGHT, RIGHT] * 3,
                                                                     [RIGHT] * 4))
    rollouts, _ = rrpo.reset_rollouts(policy, examples, random.Random(0), srpo.self_resets)
    # fresh, localization, suffixes: one call each, for all three prompts
    assert [len(c["prompts"]) for c in policy.calls] == [3, 3, 3]
    assert [c["n"] for c in policy.calls] == [5, 1, 4]
    assert len(rollouts) == 3 * 8


def test_prompts_with_no_parent_sample_anew_in_the_suffixes_call(tiny_tokenizer, cfg):
    examples = make_examples(tiny_tokenizer, n=2)  # copy 0 fails at once; copy 1 never fails

    def script(prompt, n, kind):
        if kind == "localization":
            return ["\\boxed{2}"]
        if "copy 0" in prompt:
            return ["\\boxed{5}</thought>"] * n if kind == "suffix" else [WRONG] + [RIGHT] * (n - 1)
        return [WRONG] + [RIGHT] * (n - 1) if kind == "suffix" else [RIGHT] * n

    policy = ScriptedPolicy(tiny_tokenizer, cfg, script)
    rollouts, _ = rrpo.reset_rollouts(policy, examples, random.Random(0), srpo.self_resets)
    # fresh for both, more fresh for copy 1, localization of copy 0's parent, then one call for
    # copy 0's suffixes and copy 1's new fresh solutions
    assert [(len(c["prompts"]), c["n"], c["kind"]) for c in policy.calls] == [
        (2, 5, "fresh"), (1, 7, "fresh"), (1, 1, "localization"), (2, 4, "suffix")]
    parent_ids = tiny_tokenizer(WRONG, add_special_tokens=False).input_ids + [tiny_tokenizer.eos_token_id]
    prefix = parent_ids[:localize.step_token_ends(tiny_tokenizer, parent_ids)[0]]  # step 1 of the parent
    last = policy.calls[-1]
    assert last["prompts"] == [examples[0]["prompt_ids"] + prefix, examples[1]["prompt_ids"]]
    assert last["max_new_tokens"] == [cfg.max_new_tokens - len(prefix), cfg.max_new_tokens]
    assert last["max_thoughts"] == [cfg.max_thoughts - 1, cfg.max_thoughts]
    by_group = {g: [r for r in rollouts if r.group == g] for g in (0, 1, 2)}
    assert [len(rs) for rs in by_group.values()] == [4, 4, 8] and len(rollouts) == 16
    assert all(r.kind == "suffix" and r.prompt_ids == examples[0]["prompt_ids"] + prefix for r in by_group[1])
    assert [r.reward for r in by_group[1]] == [1.0] * 4
    assert all(r.kind == "fresh" and r.prompt_ids == examples[1]["prompt_ids"] for r in by_group[2])
    assert [r.reward for r in by_group[2]] == [1.0] * 4 + [0.0, 1.0, 1.0, 1.0]  # 4 kept, then 4 new
    assert [policy.text(r.response_ids) for r in by_group[2]] == [RIGHT] * 4 + [WRONG, RIGHT, RIGHT, RIGHT]


def test_self_localization_prompt_temperature_and_parse(tiny_tokenizer, cfg):
    policy = ScriptedPolicy(tiny_tokenizer, cfg, fresh_then_suffixes([WRONG] + [RIGHT] * 4, [RIGHT] * 4,
                                                                     localization="It starts in \\boxed{2}."))
    [example] = make_examples(tiny_tokenizer)
    rollouts, diagnostics = rrpo.reset_rollouts(policy, [example], random.Random(0), srpo.self_resets)
    localization_call = policy.calls[1]
    expected_prompt = data.format_chat(tiny_tokenizer,
                                       localize.localization_prompt(example["question"], localize.split_steps(WRONG)))
    assert tiny_tokenizer.decode(localization_call["prompts"][0]) == expected_prompt
    assert localization_call["temperature"] == 0.3
    assert diagnostics["reset_step_mean"] == [2] and diagnostics["loc_parse_fail_frac"] == [0.0]
    parent_ids = tiny_tokenizer(WRONG, add_special_tokens=False).input_ids + [tiny_tokenizer.eos_token_id]
    prefix = parent_ids[:localize.step_token_ends(tiny_tokenizer, parent_ids)[0]]
    assert all(r.prompt_ids == example["prompt_ids"] + prefix for r in rollouts if r.group == 1)
    localization_ids = tiny_tokenizer("It starts in \\boxed{2}.", add_special_tokens=False).input_ids
    assert all(r.response_ids[:len(localization_ids)] != localization_ids for r in rollouts)  # never trained


def test_unparseable_localization_resets_at_step_one(tiny_tokenizer, cfg):
    policy = ScriptedPolicy(tiny_tokenizer, cfg, fresh_then_suffixes([WRONG] + [RIGHT] * 4, [RIGHT] * 4,
                                                                     localization="I am not sure."))
    [example] = make_examples(tiny_tokenizer)
    rollouts, diagnostics = rrpo.reset_rollouts(policy, [example], random.Random(0), srpo.self_resets)
    assert diagnostics["loc_parse_fail_frac"] == [1.0] and diagnostics["reset_step_mean"] == [1]
    assert all(r.prompt_ids == example["prompt_ids"] for r in rollouts)  # k = 1: empty prefix


def test_oracle_resets_at_true_first_error(tiny_tokenizer, cfg):
    toy = pytest.importorskip("toy")
    example = toy.make_examples(1, seed=3)[0]
    steps = toy.solve_steps(example)
    wrong = toy.inject_error(example, 2, random.Random(0))  # corrupt step 2
    wrong_text = "".join(wrong) if isinstance(wrong, list) else wrong
    example = dict(example, step_checker=toy.first_wrong_step)
    example["prompt_ids"] = tiny_tokenizer(data.format_prompt(tiny_tokenizer, example["question"])).input_ids
    policy = ScriptedPolicy(tiny_tokenizer, cfg, fresh_then_suffixes(
        [wrong_text] + ["".join(steps)] * 4, ["".join(steps[1:])] * 4))
    rollouts, diagnostics = rrpo.reset_rollouts(policy, [example], random.Random(0), rrpo.oracle_resets)
    assert diagnostics["reset_step_mean"] == [2] and diagnostics["loc_exact"] == [1.0]
    assert diagnostics["suffix_acc_clean_prefix"] == [1.0] * 4


def test_start_resets_sample_fresh_solutions_as_group_two(tiny_tokenizer, cfg):
    """The control resets at step 1 whatever the parent: its suffixes start from the bare prompt
    with the whole budget, in their own group, and the parent is still not trained on."""
    policy = ScriptedPolicy(tiny_tokenizer, cfg, fresh_then_suffixes([RIGHT, WRONG] + [RIGHT] * 3, [RIGHT] * 4))
    [example] = make_examples(tiny_tokenizer)
    rollouts, diagnostics = rrpo.reset_rollouts(policy, [example], random.Random(0), rrpo.start_resets)
    suffixes = [r for r in rollouts if r.group == rrpo.suffix_group(0)]
    assert diagnostics["reset_step_mean"] == [1] and len(suffixes) == 4
    assert all(r.prompt_ids == example["prompt_ids"] and r.reward == 1.0 for r in suffixes)
    assert policy.calls[-1]["max_new_tokens"] == [cfg.max_new_tokens]
    assert [r.reward for r in rollouts if r.group == rrpo.fresh_group(0)] == [1.0] * 4  # the parent left out
    assert rrpo.resets_by_name("start") is rrpo.start_resets


def test_oracle_without_step_checker_fails_clearly(tiny_tokenizer, cfg):
    policy = ScriptedPolicy(tiny_tokenizer, cfg, fresh_then_suffixes([WRONG] + [RIGHT] * 4, [RIGHT] * 4))
    with pytest.raises(SystemExit, match="step checker"):
        rrpo.reset_rollouts(policy, make_examples(tiny_tokenizer), random.Random(0), rrpo.oracle_resets)


def test_odd_group_size_is_refused():
    with pytest.raises(ValueError, match="even"):
        rrpo.ResetConfig(group_size=7)


# ---------------------------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------------------------


def run_two_steps(config_class, choose, model_dir, tmp_path, *extra):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {a} + 2?", "answer": str(a + 2)}) + "\n"
                            for a in range(6)))
    out = tmp_path / "run"
    args = ["--model", str(model_dir), "--dataset", str(data), "--out", str(out), "--steps", "2",
            "--prompts-per-step", "2", "--group-size", "4", "--max-fresh", "4", "--max-new-tokens", "12",
            "--eval-size", "2", "--eval-every", "0", "--temperature", "1.0", "--beta", "0.1", *extra]
    if config_class is srpo.SRPOConfig:
        args += ["--loc-max-new-tokens", "6"]
    cfg = run.parse_config(config_class, argv=args)
    grpo.train(cfg, lambda policy, examples, rng: rrpo.reset_rollouts(policy, examples, rng, choose))
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_rrpo_two_steps_tiny_model(tiny_model_dir, tmp_path):
    lines = run_two_steps(rrpo.ResetConfig, rrpo.random_resets, tiny_model_dir, tmp_path)
    assert [line["step"] for line in lines] == [0, 1, 2]
    assert lines[1]["reset_frac"] == 1.0  # a random model fails every fresh attempt
    assert lines[1]["fresh_attempts_mean"] == 3.0 and 1 <= lines[1]["reset_step_mean"]
    assert (tmp_path / "run" / "checkpoint-2").is_dir()


@pytest.mark.parametrize("kv_cache", ["dynamic", "static", "paged"])
def test_srpo_two_steps_tiny_model(tiny_model_dir, tmp_path, kv_cache):
    lines = run_two_steps(srpo.SRPOConfig, srpo.self_resets, tiny_model_dir, tmp_path, "--kv-cache", kv_cache)
    assert [line["step"] for line in lines] == [0, 1, 2]
    assert lines[1]["loc_parse_fail_frac"] is not None and lines[1]["loc_len_mean"] <= 6
    assert lines[2]["samples_seen"] == 2 * 2 * 4


def test_srpo_one_step_smollm2_gsm8k(smollm2_gguf, shared_data, tmp_path):
    rows = [json.loads(line) for line in (shared_data / "gsm8k" / "test.jsonl").read_text().splitlines()[:2]]
    data = tmp_path / "gsm8k2.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    cfg = run.parse_config(srpo.SRPOConfig, argv=[
        "--model", str(smollm2_gguf), "--dataset", str(data), "--out", str(out), "--steps", "1",
        "--prompts-per-step", "2", "--group-size", "4", "--max-fresh", "4", "--max-new-tokens", "24",
        "--max-thought-tokens", "12", "--loc-max-new-tokens", "16", "--eval-size", "1", "--eval-every", "0", "--save-every", "100"])
    grpo.train(cfg, lambda policy, examples, rng: rrpo.reset_rollouts(policy, examples, rng, srpo.self_resets))
    line = json.loads((out / "metrics.jsonl").read_text().splitlines()[1])
    assert line["samples_seen"] == 2 * 4 and line["reset_frac"] is not None
    assert line["tokens_generated"] > 0


def test_code_rollouts_are_scored_by_running_the_programs(tiny_tokenizer, cfg):
    code_tasks = pytest.importorskip("code_tasks")
    example = next(e for e in code_tasks.builtin_examples() if "wrong_solution" in e)
    example["prompt_ids"] = tiny_tokenizer(data.format_prompt(tiny_tokenizer, example["question"])).input_ids

    def program(source):
        return f"Read n and the numbers.</thought>Take the maximum.</thought>\n```python\n{source}\n```"
    right, wrong = program(example["solution"]), program(example["wrong_solution"])
    policy = ScriptedPolicy(tiny_tokenizer, cfg, fresh_then_suffixes(
        [right, wrong, right, right, wrong], [f"Take the maximum.</thought>\n```python\n{example['solution']}\n```",
                                              f"Take the maximum.</thought>\n```python\n{example['wrong_solution']}\n```"] * 2))
    rollouts, diagnostics = rrpo.reset_rollouts(policy, [example], random.Random(1), lambda *a: [2])
    assert [r.reward for r in rollouts if r.group == 0] == [1.0, 1.0, 1.0, 0.0]
    assert [r.reward for r in rollouts if r.group == 1] == [1.0, 0.0, 1.0, 0.0]


def test_srpo_one_step_on_builtin_code_problems_tiny_model(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    cfg = run.parse_config(srpo.SRPOConfig, argv=[
        "--model", str(tiny_model_dir), "--dataset", "code", "--out", str(out), "--steps", "1",
        "--prompts-per-step", "2", "--group-size", "4", "--max-fresh", "4", "--max-new-tokens", "12",
        "--loc-max-new-tokens", "6", "--eval-size", "2", "--eval-every", "0", "--temperature", "1.0"])
    grpo.train(cfg, lambda policy, examples, rng: rrpo.reset_rollouts(policy, examples, rng, srpo.self_resets))
    line = json.loads((out / "metrics.jsonl").read_text().splitlines()[1])
    assert line["samples_seen"] == 2 * 4 and line["reset_frac"] == 1.0 and line["fresh_acc"] == 0.0


def test_oracle_noise_one_is_a_random_reset(tiny_tokenizer):
    toy = pytest.importorskip("toy")
    example = dict(toy.make_examples(1, seed=3)[0], step_checker=toy.first_wrong_step)
    steps = toy.inject_error(example, 2, random.Random(0))
    policy = ScriptedPolicy(tiny_tokenizer, srpo.SRPOConfig(oracle_noise=1.0), None)
    rng, expected = random.Random(5), random.Random(5)
    picks = [rrpo.oracle_resets(policy, [example], [steps], rng, {})[0] for _ in range(200)]
    assert picks == [(expected.random(), expected.randint(1, len(steps)))[1] for _ in range(200)]
    assert set(picks) == set(range(1, len(steps) + 1))
    exact = ScriptedPolicy(tiny_tokenizer, srpo.SRPOConfig(oracle_noise=0.0), None)
    assert rrpo.oracle_resets(exact, [example], [steps], random.Random(5), {}) == [2]


def test_an_empty_response_is_a_wrong_fresh_solution_not_a_parent(tiny_tokenizer, cfg):
    fresh = ["", RIGHT, RIGHT, RIGHT, RIGHT] + [RIGHT] * 7 + [RIGHT] * 4
    policy = ScriptedPolicy(tiny_tokenizer, cfg, fresh_then_suffixes(fresh, [RIGHT] * 4))
    rollouts, diagnostics = rrpo.reset_rollouts(policy, make_examples(tiny_tokenizer), random.Random(0))
    assert diagnostics["reset_frac"] == [0.0]
    assert [r.reward for r in rollouts] == [0.0] + [1.0] * 7 and {r.group for r in rollouts} == {0}
    assert rollouts[0].n_thoughts == 0


def test_a_suffix_shares_its_parents_budgets(tiny_tokenizer):
    cfg = srpo.SRPOConfig(group_size=8, max_fresh=12, max_new_tokens=200, max_thoughts=6)
    policy = ScriptedPolicy(tiny_tokenizer, cfg, fresh_then_suffixes([WRONG] + [RIGHT] * 4, [RIGHT] * 4))
    [example] = make_examples(tiny_tokenizer)
    rollouts, _ = rrpo.reset_rollouts(policy, [example], random.Random(0), lambda *a: [3])
    [suffix_call] = [c for c in policy.calls if c["kind"] == "suffix"]
    prefix_len = len(suffix_call["prompts"][0]) - len(example["prompt_ids"])
    assert prefix_len > 0 and suffix_call["max_new_tokens"] == [200 - prefix_len]
    assert suffix_call["max_thoughts"] == [6 - 2]  # thoughts 3..6 are left
    suffixes = [r for r in rollouts if r.kind == "suffix"]
    assert all(r.prefix_len == prefix_len and r.reset_step == 3 for r in suffixes)
    assert all(r.n_thoughts == 2 + len(localize.split_steps(RIGHT)) for r in suffixes)


def test_rollout_dump_has_every_sequence_of_the_step(tiny_model_dir, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {a} + 2?", "answer": str(a + 2)}) + "\n"
                            for a in range(6)))
    out = tmp_path / "run"
    cfg = run.parse_config(srpo.SRPOConfig, argv=[
        "--model", str(tiny_model_dir), "--dataset", str(data), "--out", str(out), "--steps", "1",
        "--prompts-per-step", "2", "--group-size", "4", "--max-fresh", "4", "--max-new-tokens", "24",
        "--max-thought-tokens", "6", "--max-thoughts", "3", "--loc-max-new-tokens", "6", "--eval-size", "2",
        "--eval-every", "0", "--temperature", "1.0", "--dump-rollouts"])
    grpo.train(cfg, lambda policy, examples, rng: rrpo.reset_rollouts(policy, examples, rng, srpo.self_resets))
    records = [json.loads(line) for line in (out / "rollouts" / "step-1.jsonl").read_text().splitlines()]
    kinds = [r["kind"] for r in records]
    # a random model fails every fresh attempt: each prompt has a parent, a localization, 2 + 2 trained
    assert sorted(kinds) == sorted(["fresh"] * 4 + ["suffix"] * 4 + ["parent"] * 2 + ["localization"] * 2)
    for r in records:
        assert {"step", "prompt_index", "kind", "group", "reward", "advantage", "text", "prefix_text",
                "reset_step", "n_thoughts", "finish", "new_tokens", "prefix_tokens"} <= r.keys()
        assert r["finish"] in ("answer", "eos", "max_thoughts", "budget") and r["prompt_index"] in (0, 1)
        if r["kind"] != "localization":
            assert r["n_thoughts"] <= 3 and r["prefix_tokens"] + r["new_tokens"] <= 24
        if r["kind"] in ("parent", "localization"):
            assert r["group"] is None and r["advantage"] is None
    suffixes = [r for r in records if r["kind"] == "suffix"]
    assert all(r["reset_step"] >= 1 and (r["prefix_text"] is None) == (r["reset_step"] == 1) for r in suffixes)
    assert len({r["group"] for r in records if r["kind"] != "parent" and r["group"] is not None}) == 4


def test_fresh_solutions_not_kept_are_remembered_for_the_dump(tiny_tokenizer):
    cfg = srpo.SRPOConfig(group_size=8, max_fresh=12, dump_rollouts=True)
    fresh = [RIGHT] * 5 + [RIGHT, RIGHT, WRONG, RIGHT, RIGHT, RIGHT, RIGHT]
    policy = ScriptedPolicy(tiny_tokenizer, cfg, fresh_then_suffixes(fresh, [RIGHT] * 4))
    rrpo.reset_rollouts(policy, make_examples(tiny_tokenizer), random.Random(0))
    kinds = [record["kind"] for record in policy.untrained]
    assert kinds.count("parent") == 1 and kinds.count("fresh") == 12 - 1 - 4


def test_a_parent_without_text_is_one_empty_step(tiny_tokenizer, cfg):
    pad, eos = tiny_tokenizer.pad_token_id, tiny_tokenizer.eos_token_id
    parent = grpo.Rollout([], [pad] * 8 + [eos], 0.0, 0, thought_ends=[9])  # a thought cut at 8 tokens, no text
    policy = ScriptedPolicy(tiny_tokenizer, cfg, None)
    assert rrpo.can_be_parent(parent) and rrpo.steps_of(policy, parent) == ([""], [9])
    assert rrpo.random_resets(policy, [{}], [[""]], random.Random(0), {}) == [1]
