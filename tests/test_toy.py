"""The built-in demo task: generator, step checker (the oracle), tokenizer and the baby model's
cache. No real warm start here (that takes minutes): the cache is tested with a tiny one, and the
pinned thread count with three steps of the real size."""
import dataclasses
import random
import statistics
from pathlib import Path

import pytest
import torch

import data
import grpo
import localize
import run
import toy
import verify

TINY = toy.BabySettings(hidden_size=16, n_layers=1, n_heads=2, sft_steps=2, batch_size=4,
                        tokenizer_problems=50)


def malformed_versions(step, is_last):
    """Ways to write step text that is wrong whatever its numbers."""
    body = step.replace("</thought>", "")
    unboxed = body.replace("\\boxed{", "").replace("}", "")
    boxed = body if is_last else body.replace("=", "=\\boxed{") + "}"
    return [
        body.replace("=", " ") + "</thought>",  # no "=": not a calculation
        "Let me think.</thought>",  # no calculation at all
        unboxed + "</thought>" if is_last else boxed + "</thought>",  # missing box / early box
        body.replace("=", "=0", 1) + "</thought>",  # a leading zero: not the value
    ]


@pytest.mark.parametrize("n_ops", [1, 3, toy.DEFAULT_N_OPS])
def test_checker_finds_an_error_injected_at_every_step(n_ops):
    rng = random.Random(n_ops)
    for example in toy.make_examples(20, seed=n_ops, n_ops=n_ops):
        steps = toy.solve_steps(example)
        assert toy.first_wrong_step(example, steps) is None
        for k in range(1, n_ops + 1):
            for mistake in toy.MISTAKES:
                wrong = toy.inject_error(example, k, rng, mistake)
                assert wrong[:k - 1] == steps[:k - 1]
                assert toy.first_wrong_step(example, wrong) == k, (mistake, wrong)
                assert verify.math_reward("".join(wrong), example["answer"]) == 0.0
            for bad_step in malformed_versions(steps[k - 1], is_last=k == n_ops):
                wrong = steps[:k - 1] + [bad_step] + steps[k:]
                assert toy.first_wrong_step(example, wrong) == k, wrong


def test_checker_on_missing_and_extra_steps():
    example = {"start": 7, "ops": [("+", 5), ("*", 3), ("-", 4)], "answer": "32"}
    steps = toy.solve_steps(example)
    assert toy.first_wrong_step(example, steps[:2]) == 3  # stopped without an answer
    assert toy.first_wrong_step(example, []) == 1
    assert toy.first_wrong_step(example, steps + ["32+0=32</thought>"]) == 4
    # how a solution is cut (white space, a final step without its delimiter) does not matter
    assert toy.first_wrong_step(example, [" 7+5=12</thought>\n", "12*3=36</thought>", "36-4=\\boxed{32}"]) is None


def test_generator_is_reproducible_and_keeps_its_difficulty():
    assert toy.make_examples(30, seed=1) == toy.make_examples(30, seed=1)
    assert toy.make_examples(30, seed=1) != toy.make_examples(30, seed=2)
    assert len({ex["question"] for ex in toy.make_examples(100, seed=0)}) == 100
    for n_ops, max_value in [(1, 5), (4, 20), (8, 99)]:
        for example in toy.make_examples(50, seed=3, n_ops=n_ops, max_value=max_value):
            assert len(example["ops"]) == n_ops
            value = example["start"]
            for operator, operand in example["ops"]:
                assert operand in range(1, 10)
                value = toy.apply(value, operator, operand)
                assert 1 <= value <= max_value
            assert example["answer"] == str(value)


def test_solution_is_accepted_by_the_verifier_the_checker_and_the_step_splitter():
    for example in toy.make_examples(50, seed=4):
        text = toy.solve(example)
        assert verify.math_reward(text, example["answer"]) == 1.0
        assert localize.split_steps(text) == toy.solve_steps(example)
        assert toy.first_wrong_step(example, localize.split_steps(text)) is None


def test_localization_reply_names_the_step_it_is_taught_to():
    example, rng = toy.make_examples(1, seed=5, n_ops=toy.MAX_N_OPS)[0], random.Random(5)
    right_steps = [step.replace("</thought>", "") for step in toy.solve_steps(example)]
    for k in range(1, toy.MAX_N_OPS + 1):
        wrong = toy.inject_error(example, k, rng)
        reply = toy.localization_reply(example, wrong, k)
        assert localize.parse_error_step_or_none(reply, toy.MAX_N_OPS) == k
        lines = reply.splitlines()
        assert len(lines) == k + 1 and reply.count(", right.") == k - 1 and lines[k - 1].endswith(", wrong.")
        for j, line in enumerate(lines[:-1]):  # each step copied, next to the step as it should read
            shown = wrong[j].replace("</thought>", "")
            assert line == f"Step {j + 1}: {shown} vs {right_steps[j]}, {'wrong' if j + 1 == k else 'right'}."


def test_slipping_solver_slips_at_its_rates():
    """The taught slips: results off by 1 or 2, at slip_rate per step (multiply_slip_rate on
    multiplications, final_slip_rate on the last step), carried on by the later steps, never below 0."""
    rng, counts = random.Random(0), {"*": [0, 0], "other": [0, 0], "final": [0, 0]}
    for example in toy.make_examples(3000, seed=9, n_ops=toy.MAX_N_OPS):
        steps = toy.slipping_steps(example, rng, slip_rate=0.1, multiply_slip_rate=0.5, final_slip_rate=0.3)
        value = example["start"]
        for k, (step, (operator, operand)) in enumerate(zip(steps, example["ops"]), 1):
            shown_value, shown_operator, shown_operand, plain, boxed = toy.STEP.fullmatch(step).groups()
            assert (int(shown_value), shown_operator, int(shown_operand)) == (value, operator, operand)
            result = int(plain or boxed)
            assert result >= 0 and abs(result - toy.apply(value, operator, operand)) <= 2
            slipped = result != toy.apply(value, operator, operand)
            counts["final" if k == len(steps) else "*" if operator == "*" else "other"][slipped] += 1
            value = result
    for kind, rate in [("*", 0.5), ("other", 0.1), ("final", 0.3)]:
        right, slipped = counts[kind]
        assert slipped / (right + slipped) == pytest.approx(rate, abs=0.03)  # slips refused below 0 lower it


@pytest.mark.parametrize("injected_fraction", [0.0, 0.2, 1.0])
def test_localization_texts_mix_own_slips_and_injected_errors(injected_fraction):
    """An injected error is at a uniformly random step and can be of any kind; the solver's own
    slips only get results wrong, and land mostly on multiplications for toy-hard's rates."""
    settings = dataclasses.replace(toy.MODELS["toy-hard"], injected_fraction=injected_fraction)
    rng, not_slips, on_multiplications, n = random.Random(1), 0, 0, 2000
    examples = toy.make_examples(n, seed=4, n_ops=4)
    for example in examples:
        steps = toy.failed_solution(example, rng, settings)
        k = toy.first_wrong_step(example, steps)
        shown = toy.STEP.fullmatch(steps[k - 1]).groups()
        value = toy.chain_values(example["start"], example["ops"][:k - 1])[-1] if k > 1 else example["start"]
        not_slips += (int(shown[0]), shown[1], int(shown[2])) != (value, *example["ops"][k - 1])
        on_multiplications += example["ops"][k - 1][0] == "*"
    # injected: a wrong operand, operator or copied value 3 times in 4; a step of 4 on a multiplication
    # about as often as multiplications occur (measured below on the problems themselves)
    assert not_slips / n == pytest.approx(0.75 * injected_fraction, abs=0.04)
    share = statistics.mean(op == "*" for ex in examples for op, _ in ex["ops"])
    if injected_fraction == 1.0:
        assert on_multiplications / n == pytest.approx(share, abs=0.04)
    else:
        assert on_multiplications / n > share + 0.15


@pytest.fixture(scope="module")
def baby_tokenizer():
    rng = random.Random(0)
    texts = [prompt + target for prompt, target in
             (toy.warm_start_pair(rng, toy.NO_CHAT_TEMPLATE, toy.BabySettings()) for _ in range(300))]
    return toy.make_tokenizer(texts)


def test_tokenizer_round_trips_and_keeps_sequences_short(baby_tokenizer):
    rng = random.Random(1)
    for example in toy.make_examples(20, seed=6):
        prompt, solution = data.format_prompt(baby_tokenizer, example["question"]), toy.solve(example)
        wrong = toy.inject_error(example, 2, rng)
        reply = toy.localization_reply(example, wrong, 2)
        localization = data.format_chat(baby_tokenizer, localize.localization_prompt(example["question"], wrong))
        for text in [prompt, solution, prompt + solution, localization + reply, "Unseen text: é 北 12"]:
            ids = baby_tokenizer(text, add_special_tokens=False).input_ids
            assert baby_tokenizer.decode(ids) == text
        assert len(baby_tokenizer(prompt + solution).input_ids) < 100
    tokens = baby_tokenizer.convert_ids_to_tokens(baby_tokenizer("1234</thought>").input_ids)
    assert tokens == ["1", "2", "3", "4", "</thought>"]


def test_sft_batch_trains_on_the_target_and_its_eos_only(baby_tokenizer):
    pairs = [("Problem: Start at 3, add 4.\n\n", "3+4=\\boxed{7}</thought>"), ("Hi\n\n", "1+1=\\boxed{2}")]
    input_ids, labels, attention_mask = toy.sft_batch(baby_tokenizer, pairs)
    for row, (prompt, target) in enumerate(pairs):
        n_prompt = len(baby_tokenizer(prompt).input_ids)
        n_target = len(baby_tokenizer(target).input_ids) + 1
        assert labels[row, :n_prompt].eq(-100).all()
        assert labels[row, n_prompt:n_prompt + n_target].tolist() == input_ids[row, n_prompt:n_prompt + n_target].tolist()
        assert labels[row, n_prompt + n_target - 1] == baby_tokenizer.eos_token_id
        assert labels[row, n_prompt + n_target:].eq(-100).all()
        assert attention_mask[row].sum() == n_prompt + n_target


def test_baby_model_is_cached_and_not_retrained(tmp_path, monkeypatch):
    model, tokenizer = toy.load_baby_model(tmp_path, TINY)
    folders = list(tmp_path.iterdir())
    assert [folder.name for folder in folders] == [f"toy-{toy.cache_key(TINY)}"]  # no leftovers

    def no_training(settings):
        raise AssertionError("a cached model was trained again")

    monkeypatch.setattr(toy, "warm_start", no_training)
    cached_model, cached_tokenizer = toy.load_baby_model(tmp_path, TINY)
    for name, weight in model.state_dict().items():
        assert torch.equal(weight, cached_model.state_dict()[name]), name
    text = toy.solve(toy.make_examples(1, seed=0)[0])
    assert cached_tokenizer(text).input_ids == tokenizer(text).input_ids
    assert cached_tokenizer.eos_token == "<|eos|>" and cached_tokenizer.chat_template is None
    monkeypatch.setenv("RESETS_CACHE", str(tmp_path))
    toy.load_baby_model(settings=TINY)  # the environment variable points at the same cache
    assert toy.cache_key(TINY) != toy.cache_key(toy.BabySettings())


@pytest.mark.parametrize("name", sorted(toy.MODELS))
def test_the_baby_models_ship_for_their_settings(name, tmp_path, monkeypatch):
    """MODELS load from baby_models/ without a warm start or a cache write. A change of their
    settings or of the prompts they learn from changes the hash: then warm-start them again (on
    one machine, `python toy.py --model NAME`) and replace their folders in baby_models/."""
    folder = toy.SHIPPED / f"toy-{toy.cache_key(toy.MODELS[name])}"
    assert folder.is_dir(), f"{folder.name} is not shipped: the baby models' settings or prompts changed"

    def no_training(settings):
        raise AssertionError("a shipped model was trained again")

    monkeypatch.setattr(toy, "warm_start", no_training)
    model, tokenizer = toy.load_baby_model(tmp_path, toy.MODELS[name])
    assert list(tmp_path.iterdir()) == []
    # The shipped weights are the ones measured: greedy accuracy on 200 chains of 8 operations was
    # 0.975 for toy, 0.555 for toy-hard (a warm start on another machine gave toy-hard 0.82), 0.26
    # for toy-slippy, 0.45 for toy-late and 0.935 for toy-late-long.
    examples = toy.make_examples(200, seed=123, n_ops=8)
    accuracy = statistics.mean(toy.sampled_solutions(model, tokenizer, examples, 0.0)[1])
    expected = {"toy": 0.975, "toy-hard": 0.555, "toy-slippy": 0.26, "toy-late": 0.45,
                "toy-late-long": 0.935}[name]
    assert accuracy == pytest.approx(expected, abs=0.03)


def test_warm_start_gives_the_same_model_whatever_the_callers_threads():
    # Three steps of the real model's size: on 1 and 2 threads, unpinned, they already differ.
    settings = dataclasses.replace(toy.BabySettings(), sft_steps=3)
    callers = torch.get_num_threads()
    weights = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            weights.append(toy.warm_start(settings)[0].state_dict())
            assert torch.get_num_threads() == threads  # given back
    finally:
        torch.set_num_threads(callers)
    for name, weight in weights[0].items():
        assert torch.equal(weight, weights[1][name]), name


def test_interrupted_warm_start_leaves_no_cache(tmp_path, monkeypatch):
    def interrupted_save(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(toy.PreTrainedTokenizerFast, "save_pretrained", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        toy.load_baby_model(tmp_path, TINY)
    assert list(tmp_path.iterdir()) == []


def test_evaluate_scores_against_the_oracle(monkeypatch):
    """With a stand-in model that solves greedily, fails at step 2 when sampling and always
    blames step 2, every number `evaluate` reports is known in advance."""
    n_ops = 3
    examples = {ex["question"]: ex for seed in range(7, 27) for ex in toy.make_examples(10, seed, n_ops)}

    def stand_in_generate(model, tokenizer, prompts, max_new_tokens, temperature=0.0):
        replies = []
        for prompt in prompts:
            if "Solution:\n" in prompt:
                replies.append("Step 1: 1+1=2 vs 1+1=2, right.\nStep 2: 2+1=4 vs 2+1=3, wrong.\n\\boxed{2}")
                continue
            example = examples[prompt.split("Problem: ")[1].strip()]
            wrong = "".join(toy.inject_error(example, 2, random.Random(0), "result"))
            replies.append(wrong if temperature else toy.solve(example))
        return replies

    monkeypatch.setattr(toy, "generate", stand_in_generate)
    results = toy.evaluate(model=None, tokenizer=toy.NO_CHAT_TEMPLATE, n_ops=n_ops, n=10, min_failures=25, seed=7)
    assert results["answer_acc"] == 0.0 and results["greedy_answer_acc"] == 1.0
    assert results["own_failures"] == 30  # 10 problems a round, until 25 failures
    assert results["loc_exact_own"] == 1.0
    assert results["loc_exact_random"] == pytest.approx(1 / n_ops)
    assert 0.0 < results["loc_exact_injected"] < 1.0  # injected at a random step: step 2 a third of the time
    shares = {toy.OPERATIONS[ex["ops"][1][0]] for ex in examples.values()}
    assert set(results["first_error_ops"]) <= shares and sum(results["first_error_ops"].values()) == pytest.approx(1)
    # it always blames step 2, the true first error: exact on every operation, naming each as often as it errs
    assert {exact for exact, _ in results["loc_exact_by_op"].values()} == {1.0}
    assert sum(count for _, count in results["loc_exact_by_op"].values()) == 30
    assert results["loc_named_ops"] == results["first_error_ops"]
    assert results["first_error_steps"] == {1: 0.0, 2: 1.0, 3: 0.0}


def test_localization_by_operation_shows_a_model_that_always_names_the_multiplication():
    example = {"start": 7, "ops": [("+", 5), ("*", 3), ("-", 4)]}
    right = ["7+5=12</thought>", "12*3=36</thought>", "36-4=\\boxed{32}"]
    wrong_at = {1: ["7+5=13</thought>", "13*3=39</thought>", "39-4=\\boxed{35}"],
                2: ["7+5=12</thought>", "12*3=35</thought>", "35-4=\\boxed{31}"],
                3: [*right[:2], "36-4=\\boxed{31}"]}
    assert all(toy.first_wrong_step(example, steps) == k for k, steps in wrong_at.items())
    solutions = [wrong_at[1], wrong_at[2], wrong_at[2], wrong_at[3]]
    exact, named = toy.localization_by_operation([example] * 4, solutions, named=[2, 2, 2, None])
    assert exact == {"add": (0.0, 1), "multiply by": (1.0, 2), "subtract": (0.0, 1)}
    assert named == {"multiply by": 0.75, "none": 0.25}


@pytest.mark.parametrize("reset", ["self", "oracle"])
def test_demo_runs_end_to_end_with_a_quickly_warmed_model(tmp_path, monkeypatch, reset):
    """`python srpo.py` with no model or dataset: the toy model on the toy task, with the step
    checker's diagnostics. The baby model is swapped for a tiny, quickly warmed one."""
    import json

    import rrpo
    import srpo

    load = toy.load_baby_model
    monkeypatch.setattr(toy, "load_baby_model", lambda cache_dir=None, settings=None: load(tmp_path / "cache", TINY))
    cfg = run.parse_config(srpo.SRPOConfig, argv=["--out", str(tmp_path / "run"), "--steps", "2", "--reset", reset,
                                                   "--prompts-per-step", "2", "--eval-size", "4",
                                                   "--max-new-tokens", "24", "--loc-max-new-tokens", "8"])
    assert (cfg.model, cfg.dataset, cfg.lr, cfg.temperature, cfg.eval_temperature) == ("toy", "toy", 1e-4, 1.0, 1.0)
    choose = srpo.self_resets if reset == "self" else rrpo.oracle_resets
    grpo.train(cfg, lambda policy, examples, rng: rrpo.reset_rollouts(policy, examples, rng, choose))
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 1, 2] and "eval_acc" in lines[2]
    if lines[1]["reset_frac"]:
        assert lines[1]["loc_exact"] is not None
    if reset == "oracle" and lines[1]["reset_frac"]:
        assert lines[1]["loc_exact"] == 1.0


def test_every_baby_model_is_a_model_name_of_the_scripts():
    import reproduce

    for name in toy.MODELS:
        assert run.is_baby_model(name)
        assert reproduce.parse_args(["--model", name]).model == name
    assert not run.is_baby_model("toy-unknown") and not run.is_baby_model(Path("toy"))
