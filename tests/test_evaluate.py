"""evaluate.py: pass@k against hand computations and the binomial formula, greedy pass@1 against a
model whose answers are known and against training's evaluation, two processes against one, the
per-problem JSONL against the table, and SmolLM2 on two real benchmarks end to end."""
import dataclasses
import json
import math
import os
import socket
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from conftest import make_model

import data
import evaluate
import grpo
import run
import verify


def evaluate_cli(*argv) -> dict:
    return evaluate.main(run.parse_config(evaluate.Config, [str(a) for a in argv]))


# ---------------------------------------------------------------------------------------------
# pass@k and the table
# ---------------------------------------------------------------------------------------------


def test_pass_at_k_by_hand_and_against_the_binomial_formula():
    # n = 4 samples, c = 1 right, k = 2: 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert evaluate.pass_at_k(4, 1, 2) == pytest.approx(0.5)
    # n = 5, c = 2, k = 3: 1 - C(3,3)/C(5,3) = 1 - 1/10
    assert evaluate.pass_at_k(5, 2, 3) == pytest.approx(0.9)
    assert evaluate.pass_at_k(6, 0, 3) == 0.0 and evaluate.pass_at_k(6, 6, 3) == 1.0
    assert evaluate.pass_at_k(6, 4, 3) == 1.0  # fewer than k wrong: every k-subset holds a right one
    for n in range(1, 13):
        for c in range(n + 1):
            assert evaluate.pass_at_k(n, c, 1) == pytest.approx(c / n)
            for k in range(1, n + 1):
                assert evaluate.pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k))
    # large n: the binomials have hundreds of digits, the product form stays exact enough
    exact = 1 - Fraction(math.comb(990, 500), math.comb(1000, 500))
    assert evaluate.pass_at_k(1000, 10, 500) == pytest.approx(float(exact), rel=1e-12)


def test_summary_and_table_by_hand():
    def record(reward, sample_rewards, finish="answer", extracted="7"):
        return {"reward": reward, "extracted": extracted, "finish": finish, "tokens": 10,
                "samples": [{"reward": r} for r in sample_rewards]}

    records = [record(1.0, [1, 0, 0, 0]), record(0.0, [1, 1, 0, 0], "budget", None), record(0.0, [0, 0, 0, 0])]
    summary = evaluate.summarize(records, samples=4)
    assert summary["n"] == 3 and summary["pass@1"] == pytest.approx(1 / 3)
    assert summary["answered"] == pytest.approx(2 / 3) and summary["truncated"] == pytest.approx(1 / 3)
    assert summary["mean@4"] == pytest.approx((1 / 4 + 2 / 4 + 0) / 3)
    # pass@2: 1 - C(3,2)/C(4,2) = 1/2, 1 - C(2,2)/C(4,2) = 5/6, 0
    assert summary["pass@2"] == pytest.approx((1 / 2 + 5 / 6 + 0) / 3)
    assert summary["pass@4"] == pytest.approx(2 / 3)
    assert sorted(k for k in evaluate.summarize([record(1.0, [1] * 6)], 6) if k.startswith("pass@")) == \
        ["pass@1", "pass@2", "pass@4", "pass@6"]

    results = {"gsm8k": {"a": {"n": 8, "pass@1": 0.5}, "b": {"n": 8, "pass@1": 0.25}},
               "math500": {"a": {"n": 8, "pass@1": 0.125}, "b": {"n": 8, "pass@1": 0.0}}}
    table = evaluate.markdown_table(results, ["a", "b"], "pass@1", "pass@1 (greedy)").splitlines()
    assert table[0] == "| pass@1 (greedy) | n | a | b |"
    assert table[2:] == ["| gsm8k | 8 | 50.0 | 25.0 |", "| math500 | 8 | 12.5 | 0.0 |", "| average | | 31.2 | 12.5 |"]


def test_limits_come_from_the_flags_then_the_checkpoints_training_run_then_trainings_defaults(tmp_path):
    checkpoint = tmp_path / "run" / "checkpoint-3"
    checkpoint.mkdir(parents=True)
    trained = grpo.Config(model="HuggingFaceTB/SmolLM2-135M-Instruct", max_new_tokens=300, max_thought_tokens=40,
                          max_thoughts=7, temperature=0.9, top_p=0.8)
    torch.save({"optimizer": {}, "step": 3, "config": dataclasses.asdict(trained)}, checkpoint / "trainer_state.pt")

    def limits(models, *flags):
        gen = evaluate.generation_settings(run.parse_config(evaluate.Config, list(flags)), models)
        return gen.max_new_tokens, gen.max_thought_tokens, gen.max_thoughts, gen.temperature, gen.top_p

    assert limits(["Qwen/Qwen2.5-1.5B", str(checkpoint)]) == (300, 40, 7, 0.9, 0.8)  # the base model alike
    assert limits([str(checkpoint)], "--max-new-tokens", "100", "--max-thoughts", "3", "--temperature", "0.5") == (
        100, 40, 3, 0.5, 0.8)
    assert limits(["Qwen/Qwen2.5-1.5B"]) == (4096, 256, 20, 0.7, 0.95)
    assert limits(["toy"]) == (96, 16, 20, 1.0, 1.0)  # a baby model's slips are sampled at temperature 1


def test_a_checkpoint_loads_the_tokenizer_it_was_saved_with(tiny_model_dir, tiny_tokenizer):
    """A tokenizer built in code (the toy's, the tests') in a Qwen2 folder: AutoTokenizer alone would
    give Qwen2's pre-tokenizer and other ids, so a toy checkpoint would be evaluated on garbage."""
    model, tokenizer = run.load_model(grpo.Config(model=str(tiny_model_dir)), torch.device("cpu"))
    text = data.format_prompt(tiny_tokenizer, "Natalia sold clips to 48 of her friends in April.")
    assert tokenizer(text).input_ids == tiny_tokenizer(text).input_ids


# ---------------------------------------------------------------------------------------------
# Models whose answers are known
# ---------------------------------------------------------------------------------------------


def boxed_model(tokenizer, answer: str):
    """A tiny model that answers every prompt with `\\boxed{answer}</thought>`: its one layer adds
    nothing to the residual stream, so the next token depends on the current token only, and the
    lm head maps each token of the answer (from the chat template's last token on) to the next."""
    model = make_model(tokenizer, tie_word_embeddings=False)
    chain = [tokenizer.convert_tokens_to_ids("<|assistant|>")]
    chain += tokenizer(f"\\boxed{{{answer}}}</thought>", add_special_tokens=False).input_ids
    chain += [tokenizer.eos_token_id]
    assert len(set(chain)) == len(chain)  # a bigram chain needs distinct tokens
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        for i, (token, following) in enumerate(zip(chain, chain[1:])):
            model.model.embed_tokens.weight[token] = torch.nn.functional.one_hot(torch.tensor(i), 64).float()
            model.lm_head.weight[following, i] = 10.0
    return model


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_tokenizer):
    """Folders of three tiny models: always \\boxed{7}, always \\boxed{8}, and random text."""
    base, folders = tmp_path_factory.mktemp("models"), {}
    for name, model in [("seven", boxed_model(tiny_tokenizer, "7")), ("eight", boxed_model(tiny_tokenizer, "8")),
                        ("random", make_model(tiny_tokenizer, initializer_range=1.0))]:
        folders[name] = base / name
        model.save_pretrained(folders[name])
        tiny_tokenizer.save_pretrained(folders[name])
    return folders


def write_problems(path: Path, golds: list[str]) -> Path:
    rows = [{"question": f"Problem {i}: what is the sum?" + " Think." * i, "answer": g} for i, g in enumerate(golds)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


GOLDS = ["7", "8", "7", "9", "7", "8", "10"]  # \boxed{7}: 3 of 7 right; \boxed{8}: 2 of 7


@pytest.mark.parametrize("kv_cache", ["dynamic", "static", "paged"])
def test_greedy_pass_at_1_is_the_hand_count_and_training_evaluations(models, tiny_tokenizer, tmp_path, kv_cache):
    problems = write_problems(tmp_path / "sums.jsonl", GOLDS)
    results = evaluate_cli("--model", f"{models['seven']},{models['eight']}", "--benchmarks", problems,
                           "--out", tmp_path / "eval", "--batch-size", "3", "--max-new-tokens", "16",
                           "--kv-cache", kv_cache)
    assert results["sums"]["seven"]["pass@1"] == pytest.approx(3 / 7)
    assert results["sums"]["eight"]["pass@1"] == pytest.approx(2 / 7)
    assert results["sums"]["seven"]["answered"] == 1.0 and results["sums"]["seven"]["n"] == 7

    # training's evaluation (grpo.evaluate) on the same problems and settings gives the same number
    cfg = grpo.Config(model=str(models["seven"]), max_new_tokens=16, kv_cache=kv_cache)
    model, tokenizer = run.load_model(cfg, torch.device("cpu"))
    examples, _ = data.tokenize_prompts(run.load_examples(str(problems), False, cfg), tokenizer, 16, 2048)
    assert grpo.evaluate(model, tokenizer, examples, cfg, 0, 1, torch.device("cpu")) == pytest.approx(3 / 7)

    table = (tmp_path / "eval" / "results.md").read_text()
    assert "| sums | 7 | 42.9 | 28.6 |" in table


def evaluate_on_two_processes(rank, argv, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    torch.set_num_threads(1)
    evaluate_cli(*argv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sharded_and_single(models, tmp_path_factory):
    """The same evaluation, greedy and sampled, by two gloo processes and by one."""
    import torch.multiprocessing as mp

    folder = tmp_path_factory.mktemp("sharding")
    problems = write_problems(folder / "sums.jsonl", GOLDS)
    argv = ["--model", f"{models['seven']},{models['random']}", "--benchmarks", problems,
            "--samples", "3", "--batch-size", "3", "--max-new-tokens", "12", "--max-thought-tokens", "8",
            "--temperature", "1.0"]
    mp.spawn(evaluate_on_two_processes, args=([*argv, "--out", str(folder / "two")], free_port()), nprocs=2)
    evaluate_cli(*argv, "--out", folder / "one")
    return folder / "one", folder / "two"


def test_two_processes_give_exactly_the_results_of_one(sharded_and_single):
    one, two = sharded_and_single
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert len(files) == 2 + 2  # results.md, results.json, one JSONL per model
    assert files == sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
    for name in files:
        assert (one / name).read_text() == (two / name).read_text(), name
    # the random model's responses differ from problem to problem and from sample to sample, so a
    # shuffled order or a sampling seed that depends on the process would show
    records = [json.loads(line) for line in (one / "random" / "sums.jsonl").read_text().splitlines()]
    assert len({r["response"] for r in records}) > 1
    assert any(len({s["response"] for s in r["samples"]}) > 1 for r in records)


def test_the_jsonl_rescores_to_the_table(sharded_and_single):
    one, _ = sharded_and_single
    results = json.loads((one / "results.json").read_text())["results"]["sums"]
    rescored = {}
    for model in ("seven", "random"):
        records = [json.loads(line) for line in (one / model / "sums.jsonl").read_text().splitlines()]
        assert [r["index"] for r in records] == list(range(7)) and [r["gold"] for r in records] == GOLDS
        assert all(r["prompt"].endswith("<|assistant|>") and f"Problem: {r['question']}" in r["prompt"]
                   for r in records)
        greedy = [verify.math_reward(r["response"], r["gold"]) for r in records]
        assert greedy == [r["reward"] for r in records]
        right = [int(sum(verify.math_reward(s["response"], r["gold"]) for s in r["samples"])) for r in records]
        rescored[model] = {"pass@1": sum(greedy) / 7, "mean@3": sum(right) / 21,
                           "pass@2": sum(evaluate.pass_at_k(3, c, 2) for c in right) / 7,
                           "pass@3": sum(c > 0 for c in right) / 7}
        assert {k: results[model][k] for k in rescored[model]} == pytest.approx(rescored[model])
    assert rescored["seven"]["pass@1"] == pytest.approx(3 / 7)
    row = f"| sums | 7 | {100 * rescored['seven']['pass@1']:.1f} | {100 * rescored['random']['pass@1']:.1f} |"
    assert row in (one / "results.md").read_text()


# ---------------------------------------------------------------------------------------------
# Bad input; a real model on real benchmarks
# ---------------------------------------------------------------------------------------------


def test_bad_input_fails_with_a_message(tmp_path, models, capsys):
    with pytest.raises(SystemExit, match="Pass --model"):
        evaluate_cli("--benchmarks", "gsm8k")
    with pytest.raises(SystemExit, match="given twice"):
        evaluate_cli("--model", "a,a")
    with pytest.raises(SystemExit, match="--data-dir: .*minerva_math/test.jsonl' does not exist"):
        evaluate_cli("--model", models["seven"], "--benchmarks", "minerva", "--data-dir", tmp_path)
    with pytest.raises(SystemExit) as refused:  # a usage error, before any model loads
        evaluate_cli("--model", models["seven"], "--samples=-1")
    assert refused.value.code == 2 and "--samples -1: must be at least 0" in capsys.readouterr().err


def test_check_agreement_needs_math_verify(models, tmp_path):
    import importlib.util

    if importlib.util.find_spec("math_verify") is not None:
        pytest.skip("math-verify is installed")
    with pytest.raises(SystemExit, match="pip install math-verify"):
        evaluate_cli("--model", models["seven"], "--check-agreement")


def test_check_agreement_counts_both_checkers(models, tmp_path):
    pytest.importorskip("math_verify")
    # against the answer 7: math-verify drops the base of 7_8 and reads 7e0 as 7 times Euler's number
    problems = write_problems(tmp_path / "sums.jsonl", ["7", "8", "7_8", "7e0"])
    results = evaluate_cli("--model", models["seven"], "--benchmarks", problems, "--out", tmp_path / "eval",
                           "--max-new-tokens", "16", "--check-agreement")
    assert results["sums"]["seven"]["pass@1"] == 0.5 and results["sums"]["seven"]["checker_agreement"] == 0.5
    records = [json.loads(line) for line in (tmp_path / "eval" / "seven" / "sums.jsonl").read_text().splitlines()]
    assert [r["reward"] for r in records] == [1.0, 0.0, 0.0, 1.0]
    assert [r["math_verify"] for r in records] == [1.0, 0.0, 1.0, 0.0]
    assert "| verify.py agrees with math-verify | n | seven |\n| --- | --- | --- |\n| sums | 4 | 50.0 |" in \
        (tmp_path / "eval" / "results.md").read_text()


def test_smollm2_on_two_shared_benchmarks_end_to_end(smollm2_gguf, smollm2_model, smollm2_tokenizer, shared_data,
                                                     tmp_path, capsys, monkeypatch):
    def load_once(cfg, device, path=None):  # the GGUF as loaded once for all tests (parsing it takes a minute)
        assert cfg.model == str(smollm2_gguf) and path is None
        smollm2_tokenizer.padding_side = "left"
        return smollm2_model, smollm2_tokenizer
    monkeypatch.setattr(run, "load_model", load_once)
    evaluate_cli("--model", smollm2_gguf, "--benchmarks", "gsm8k,math500", "--data-dir", shared_data, "--limit", "4",
                 "--max-new-tokens", "16", "--max-thought-tokens", "8", "--out", tmp_path)
    printed = capsys.readouterr().out
    label = smollm2_gguf.name
    assert f"| pass@1 (greedy) | n | {label} |" in printed and "| gsm8k | 4 |" in printed
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    for benchmark, field in (("gsm8k", "answer"), ("math500", "answer")):
        assert results[benchmark][label]["n"] == 4
        rows = [json.loads(line) for line in (shared_data / evaluate.LOCAL_FILES[benchmark]).read_text().splitlines()]
        records = [json.loads(line) for line in (tmp_path / label / f"{benchmark}.jsonl").read_text().splitlines()]
        assert [r["gold"] for r in records] == [verify.gold_answer(row[field]) for row in rows[:4]]
        assert all(r["response"] and 0 < r["tokens"] <= 16 for r in records)
        assert results[benchmark][label]["pass@1"] == sum(r["reward"] for r in records) / 4
