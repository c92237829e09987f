"""grpo.py: cached sampling against plain generate, log-probs against a naive computation, the
advantage and loss functions against hand computations, and the training loop end to end."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import add_head_bias, make_model

import data
import generation
import grpo
import run

ROOT = Path(__file__).resolve().parents[1]


def plain_greedy(model, tokenizer, prompts, max_new_tokens):
    """Reference: one left-padded `generate` call, no cache tricks, cut at the first eos."""
    ids, mask = generation.left_pad(prompts, tokenizer.pad_token_id, model.device)
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    responses = []
    for tokens in out[:, ids.shape[1]:].tolist():
        end = next((i + 1 for i, t in enumerate(tokens) if t == tokenizer.eos_token_id), len(tokens))
        responses.append(tokens[:end])
    return responses


def check_cached_equals_plain(model, tokenizer, texts, max_new_tokens=24, cache="dynamic"):
    tokenizer.padding_side = "left"
    prompts = [tokenizer(t, add_special_tokens=False).input_ids for t in texts]
    cached = generation.sample(model, tokenizer, prompts, n=3, max_new_tokens=max_new_tokens, greedy=True,
                               cache=cache)
    reference = plain_greedy(model, tokenizer, prompts, max_new_tokens)
    for group, expected in zip(cached, reference):
        assert len(expected) > 0
        assert all(chain.ids == expected for chain in group)


@pytest.fixture(scope="module")
def chaotic_model(tiny_tokenizer):
    # A large init makes a random model's greedy text varied, so a wrong cache shows up at once.
    return make_model(tiny_tokenizer, initializer_range=1.0)


@pytest.mark.parametrize("cache", ["dynamic", "static", "paged"])
def test_cached_sampling_equals_plain_generate_one_prompt(chaotic_model, tiny_tokenizer, cache):
    check_cached_equals_plain(chaotic_model, tiny_tokenizer, ["Start at 7.</thought> Add 5"], cache=cache)


@pytest.mark.parametrize("cache", ["dynamic", "static", "paged"])
def test_cached_sampling_equals_plain_generate_left_padded_batch(chaotic_model, tiny_tokenizer, cache):
    texts = ["Start at 7.</thought> Add 5: 7 + 5 = 12.</thought>", "Natalia", "Solve the problem one step"]
    check_cached_equals_plain(chaotic_model, tiny_tokenizer, texts, cache=cache)


@pytest.mark.parametrize("cache", ["dynamic", "static", "paged"])
def test_cached_sampling_equals_plain_generate_smollm2(smollm2_model, smollm2_tokenizer, cache):
    model = smollm2_model
    texts = [data.format_prompt(smollm2_tokenizer, "What is 12 times 3?"),
             data.format_prompt(smollm2_tokenizer, "Natalia sold clips to 48 of her friends in April, "
                                "and then she sold half as many clips in May. How many clips in total?")]
    check_cached_equals_plain(model, smollm2_tokenizer, texts, max_new_tokens=16, cache=cache)


def test_sampling_keeps_eos_and_marks_truncation(chaotic_model, tiny_tokenizer):
    tiny_tokenizer.padding_side = "left"
    prompt = tiny_tokenizer("Natalia").input_ids
    responses = generation.sample(chaotic_model, tiny_tokenizer, [prompt], n=4, max_new_tokens=6, temperature=1.0)
    assert len(responses) == 1 and len(responses[0]) == 4
    for chain in responses[0]:
        response = chain.ids
        assert chain.finish == ("eos" if response[-1] == tiny_tokenizer.eos_token_id else "budget")
        assert 1 <= len(response) <= 6
        eos_at = [i for i, t in enumerate(response) if t == tiny_tokenizer.eos_token_id]
        assert eos_at in ([], [len(response) - 1])  # nothing kept after the first eos


def test_decode_steps_count_the_forward_passes_of_generate(tiny_tokenizer):
    # One forward pass per new token of each call's longest response, counted by a hook on the
    # model; sample() itself adds one for each call with n > 1 (the prefix it shares).
    tiny_tokenizer.padding_side = "left"
    # eos is likely enough that responses end at different lengths
    model = add_head_bias(make_model(tiny_tokenizer), {tiny_tokenizer.eos_token_id: 4.5})
    policy = grpo.Policy(model, tiny_tokenizer, grpo.Config(max_new_tokens=24))
    prompts = [tiny_tokenizer(t, add_special_tokens=False).input_ids for t in ("Natalia sold", "Start at 7.", "Add 5")]
    forwards, lengths = [], []
    hook = model.register_forward_hook(lambda *args: forwards.append(1))
    torch.manual_seed(0)
    try:
        for budget in (24, 24, 3):
            chains = policy.sample(prompts, 2, max_new_tokens=[budget] * 3, thoughts=False, temperature=1.0)
            lengths.append([len(chain.ids) for group in chains for chain in group])
    finally:
        hook.remove()
    assert len(set(lengths[0])) > 1 and max(lengths[0]) < 24  # the case is not trivial
    assert policy.decode_steps == sum(map(max, lengths)) == len(forwards) - 3


def test_response_logprobs_match_naive_computation(chaotic_model):
    rollouts = [grpo.Rollout([5, 6, 7], [8, 9], 1.0, 0),
                grpo.Rollout([5], [10, 11, 12, 13], 0.0, 0),
                grpo.Rollout([3, 4, 5, 6, 7, 8], [9], 1.0, 1)]
    temperature = 0.7
    logprobs, mask = grpo.response_logprobs(chaotic_model, rollouts, pad_id=0, temperature=temperature)
    for row, r in enumerate(rollouts):
        ids = torch.tensor([r.prompt_ids + r.response_ids], device=chaotic_model.device)
        full = torch.log_softmax(chaotic_model(ids).logits[0].float() / temperature, -1)  # (seq, vocab)
        expected = [full[len(r.prompt_ids) - 1 + j, t].item() for j, t in enumerate(r.response_ids)]
        got = logprobs[row][mask[row]].tolist()
        assert got == pytest.approx(expected, abs=1e-4)
    assert mask.sum(-1).tolist() == [2, 4, 1]


def each_alone_matches(model, rollouts, logprobs, mask, temperature):
    """Asserts that each rollout's log-probs computed alone equal its row of the batch's; returns
    the (log-probs, mask) of each alone."""
    out = []
    for row, r in enumerate(rollouts):
        alone, alone_mask = grpo.response_logprobs(model, [r], pad_id=0, temperature=temperature)
        assert logprobs[row][mask[row]].tolist() == pytest.approx(alone[0][alone_mask[0]].tolist(), rel=1e-5)
        out.append((alone, alone_mask))
    return out


def test_shared_context_is_computed_once_with_the_same_logprobs_and_gradients(chaotic_model):
    """A group's prompt, and a reset's prompt + prefix beside it, go through the model once; the
    log-probs and the gradients equal those of each rollout alone (no shared part)."""
    model = chaotic_model
    prompt = [5, 6, 7, 8, 9, 10]
    rollouts = [grpo.Rollout(prompt, [11, 12], 1.0, 0), grpo.Rollout(prompt, [13, 14, 15, 16], 0.0, 0),
                grpo.Rollout(prompt + [20, 21, 22], [23], 1.0, 1, prefix_len=3),  # a suffix
                grpo.Rollout(prompt[:4], [30, 31, 32], 0.0, 2)]
    assert grpo.shared_context(rollouts) == 3  # the shortest context keeps one token of its own
    model.train()
    try:
        model.zero_grad()
        logprobs, mask = grpo.response_logprobs(model, rollouts, pad_id=0, temperature=0.7)
        (logprobs * mask).sum().backward()
        shared_grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        for alone, alone_mask in each_alone_matches(model, rollouts, logprobs, mask, temperature=0.7):
            (alone * alone_mask).sum().backward()
        for shared, separate in zip(shared_grads, (p.grad for p in model.parameters())):
            assert (shared - separate).norm() <= 1e-4 * separate.norm()  # float32 sums in another order
        assert any(g.abs().sum() > 0 for g in shared_grads)
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def test_a_sliding_window_model_computes_each_context_whole(tiny_tokenizer):
    """Padding between a shared context and the rest would take places in a sliding window: such a
    model's log-probs are computed without sharing, and equal each rollout's alone."""
    model = make_model(tiny_tokenizer, seed=5, initializer_range=1.0, use_sliding_window=True, sliding_window=6,
                       max_window_layers=0)
    prompt = list(range(5, 17))
    rollouts = [grpo.Rollout(prompt, [20, 21], 1.0, 0), grpo.Rollout(prompt, [22, 23, 24, 25, 26, 27], 0.0, 0),
                grpo.Rollout(prompt, [28], 1.0, 0)]
    logprobs, mask = grpo.response_logprobs(model, rollouts, pad_id=0, temperature=1.0)
    each_alone_matches(model, rollouts, logprobs, mask, temperature=1.0)


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    advantages = grpo.group_advantages(rewards, groups)
    # group 0: mean 1/4, population std sqrt(3)/4
    assert advantages[:4].tolist() == pytest.approx([3 / math.sqrt(3), -1 / math.sqrt(3), -1 / math.sqrt(3),
                                                     -1 / math.sqrt(3)])
    assert advantages[4:6].tolist() == [0.0, 0.0]  # zero variance: no signal
    assert advantages[6:].tolist() == pytest.approx([-1.0, 1.0])


def test_policy_loss_seq_mean_and_token_mean_by_hand():
    logprobs = torch.tensor([[-1.0, -3.0, -5.0], [-2.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    advantages = torch.tensor([2.0, -1.0])
    # seq-mean: -mean(2 * (-1 - 3) / 2, -1 * -2 / 1) = -mean(-4, 2) = 1
    assert grpo.policy_loss(logprobs, advantages, mask).item() == pytest.approx(1.0)
    # token-mean: -(2*-1 + 2*-3 + -1*-2) / 3 = 2
    assert grpo.policy_loss(logprobs, advantages, mask, agg="token-mean").item() == pytest.approx(2.0)


def test_masked_tokens_get_exactly_zero_gradient():
    logprobs = torch.tensor([[-1.0, -3.0, -5.0], [-2.0, -0.5, -0.7]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [0, 1, 0]])
    for agg in ("seq-mean", "token-mean"):
        logprobs.grad = None
        grpo.policy_loss(logprobs, torch.tensor([1.5, -2.0]), mask, agg=agg).backward()
        assert (logprobs.grad[mask == 0] == 0).all()
        assert (logprobs.grad[mask == 1] != 0).all()
    # seq-mean gradient of token t in sequence i: -A_i / (n_i * batch)
    assert logprobs.grad is not None
    logprobs.grad = None
    grpo.policy_loss(logprobs, torch.tensor([1.5, -2.0]), mask).backward()
    assert logprobs.grad.flatten().tolist() == pytest.approx([-1.5 / 4, -1.5 / 4, 0.0, 0.0, 2.0 / 2, 0.0])


def test_policy_loss_ppo_clip_and_k3_kl_by_hand():
    old = torch.tensor([[-1.0, -1.0]])
    new = torch.tensor([[-1.0 + math.log(1.5), -1.0 + math.log(0.5)]])  # ratios 1.5 and 0.5
    mask = torch.ones(1, 2)
    # A = +1: min(1.5, 1.2) and min(0.5, 0.8) -> 1.2, 0.5; loss = -(1.7 / 2)
    assert grpo.policy_loss(new, torch.tensor([1.0]), mask, old_logprobs=old, clip_eps=0.2).item() == \
        pytest.approx(-0.85)
    # A = -1: min(-1.5, -1.2) and min(-0.5, -0.8) -> -1.5, -0.8; loss = 2.3 / 2
    assert grpo.policy_loss(new, torch.tensor([-1.0]), mask, old_logprobs=old, clip_eps=0.2).item() == \
        pytest.approx(1.15)
    # k3 KL with zero advantage: exp(d) - d - 1 with d = ref - new, averaged, times beta
    ref = torch.tensor([[-1.0, -2.0]])
    d = (ref - new)[0]
    kl = (torch.exp(d) - d - 1).mean().item()
    assert grpo.policy_loss(new, torch.tensor([0.0]), mask, ref_logprobs=ref, beta=0.1).item() == \
        pytest.approx(0.1 * kl)


def test_short_model_names_resolve_and_unknown_fails_clearly():
    assert run.resolve_model_name("Qwen2.5-1.5B") == "Qwen/Qwen2.5-1.5B"
    assert run.resolve_model_name("SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert run.resolve_model_name("Qwen/Qwen2.5-7B-Instruct") == "Qwen/Qwen2.5-7B-Instruct"
    assert run.resolve_model_name("org/repo/model-Q8_0.gguf") == "org/repo/model-Q8_0.gguf"  # a GGUF on the hub
    for missing in ("/no/such/model", "./no-such-folder", "org/repo/sub/folder"):
        with pytest.raises(SystemExit, match="no such file or folder"):
            run.resolve_model_name(missing)
    with pytest.raises(SystemExit, match="full hub id"):
        run.resolve_model_name("MyModel-7B")


def test_local_dataset_fields_detected_or_listed(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n")
    examples = run.load_examples(str(path), True, grpo.Config())
    assert examples == [{"question": "1+1?", "answer": "2"}]
    path.write_text(json.dumps({"text": "1+1?", "label": "2"}) + "\n")
    with pytest.raises(SystemExit, match=r"\['text', 'label'\].*--question-field"):
        run.load_examples(str(path), True, grpo.Config())
    examples = run.load_examples(str(path), True, grpo.Config(question_field="text", answer_field="label"))
    assert examples == [{"question": "1+1?", "answer": "2"}]


# ---------------------------------------------------------------------------------------------
# The training loop, end to end
# ---------------------------------------------------------------------------------------------


def write_problems(path: Path, n=8):
    rows = [{"question": f"What is {a} + {b}?", "answer": f"#### {a + b}"} for a, b in zip(range(n), range(3, 3 + n))]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_run_args(model_dir, data, out, *extra):
    return ["--model", str(model_dir), "--dataset", str(data), "--out", str(out), "--prompts-per-step", "2",
            "--group-size", "4", "--max-new-tokens", "8", "--eval-size", "2", "--eval-every", "0",
            "--lr", "1e-3", "--temperature", "1.0", *extra]


def update(model, optimizer, rollouts, cfg):
    """grpo.train_on_rollouts with the advantages of the rollouts' groups."""
    advantages = grpo.group_advantages(torch.tensor([r.reward for r in rollouts]),
                                       torch.tensor([r.group for r in rollouts]))
    return grpo.train_on_rollouts(model, None, optimizer, rollouts, advantages, cfg, 0, torch.device("cpu"))


def state_dict_of(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).state_dict()


def test_two_steps_end_to_end_then_resume(tiny_model_dir, tmp_path):
    data, out = write_problems(tmp_path / "train.jsonl"), tmp_path / "run"
    # every rollout of a random model fails, so make the reward vary: a custom rollout builder is
    # not needed for plumbing, but equal rewards would skip the update; beta > 0 keeps it training.
    args = tiny_run_args(tiny_model_dir, data, out, "--steps", "2", "--beta", "0.1")
    grpo.train(run.parse_config(grpo.Config, argv=args))
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 1, 2]
    for key in ("reward_mean", "frac_zero_std_groups", "response_len_mean", "truncated_frac", "loss",
                "grad_norm", "lr", "rollout_s", "train_s", "step_s", "samples_seen", "tokens_generated"):
        assert key in lines[1], key
    assert lines[2]["samples_seen"] == 2 * 2 * 4 and "eval_acc" in lines[2]
    before, after = state_dict_of(tiny_model_dir), state_dict_of(out / "checkpoint-2")
    assert any(not torch.equal(before[k], after[k]) for k in before)

    grpo.train(run.parse_config(grpo.Config, argv=tiny_run_args(tiny_model_dir, data, out, "--steps", "3", "--beta", "0.1",
                                                    "--resume")))
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 1, 2, 3]
    assert (out / "checkpoint-3" / "trainer_state.pt").exists()


def test_resume_without_checkpoint_fails_clearly(tiny_model_dir, tmp_path):
    args = tiny_run_args(tiny_model_dir, write_problems(tmp_path / "d.jsonl"), tmp_path / "nothing", "--resume")
    with pytest.raises(SystemExit, match="no checkpoint"):
        grpo.train(run.parse_config(grpo.Config, argv=args))
    broken = tmp_path / "broken" / "checkpoint-4"
    broken.mkdir(parents=True)
    (broken / "trainer_state.pt").write_text("not a checkpoint")
    args = tiny_run_args(tiny_model_dir, write_problems(tmp_path / "d.jsonl"), tmp_path / "broken", "--resume")
    with pytest.raises(SystemExit, match="not a readable checkpoint"):
        grpo.train(run.parse_config(grpo.Config, argv=args))


def test_partial_checkpoint_is_never_resumed(tmp_path):
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / ".partial-checkpoint-3").mkdir()
    assert run.newest_checkpoint(tmp_path).name == "checkpoint-2"


def test_no_signal_step_makes_no_update(tiny_model_dir, tmp_path):
    """A random model never answers right: every group has zero variance, so nothing changes."""
    out = tmp_path / "run"
    grpo.train(run.parse_config(grpo.Config, argv=tiny_run_args(tiny_model_dir, write_problems(tmp_path / "d.jsonl"), out,
                                                    "--steps", "1")))
    line = json.loads((out / "metrics.jsonl").read_text().splitlines()[1])
    assert line["skipped"] == "no-signal" and line["frac_zero_std_groups"] == 1.0
    before, after = state_dict_of(tiny_model_dir), state_dict_of(out / "checkpoint-1")
    assert all(torch.equal(before[k], after[k]) for k in before)


def first_token_rollouts(targets):
    """Reward 1 for a completion whose first token is in `targets`: a trivially learnable behaviour."""
    def make_rollouts(policy, examples, rng):
        groups = policy.sample([ex["prompt_ids"] for ex in examples], policy.cfg.group_size)
        rollouts = [grpo.Rollout(ex["prompt_ids"], chain.ids, float(chain.ids[0] in targets), i, chain.finish, i)
                    for i, (ex, chains) in enumerate(zip(examples, groups)) for chain in chains]
        return rollouts, {}
    return make_rollouts


def test_reward_rises_on_a_trivial_behaviour(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    args = tiny_run_args(tiny_model_dir, write_problems(tmp_path / "d.jsonl"), out, "--steps", "30",
                         "--prompts-per-step", "4", "--group-size", "8", "--max-new-tokens", "2",
                         "--lr", "1e-2", "--eval-size", "1", "--save-every", "1000")
    targets = set(range(200, 264))  # 64 of the 512 tokens: about 1 in 8 at the start
    grpo.train(run.parse_config(grpo.Config, argv=args), make_rollouts=first_token_rollouts(targets))
    rewards = [json.loads(line)["reward_mean"] for line in (out / "metrics.jsonl").read_text().splitlines()[1:]]
    assert sum(rewards[:5]) / 5 < 0.2
    assert sum(rewards[-5:]) / 5 > 0.6


def test_non_finite_loss_never_reaches_the_weights(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    rollouts = [grpo.Rollout([5, 6], [7, 8], 1.0, 0), grpo.Rollout([5, 6], [9, 8], 0.0, 0)]
    cfg = grpo.Config()
    cfg.temperature = 0.0  # refused as a flag; set here to make the log-probs non-finite (logits / 0)
    loss, grad_norm, skipped = update(model, optimizer, rollouts, cfg)
    assert skipped == "non-finite"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_cli_help_lists_every_config_field():
    out = subprocess.run([sys.executable, "grpo.py", "--help"], cwd=ROOT, capture_output=True, text=True, check=True)
    for name in ("--model", "--dataset", "--group-size", "--beta", "--clip-eps", "--updates-per-batch",
                 "--loss-agg", "--micro-batch", "--grad-checkpointing", "--resume"):
        assert name in out.stdout


def test_two_processes_end_with_identical_weights(tiny_model_dir, tmp_path):
    """train() ends by comparing a fingerprint of the weights across processes and raises if they
    differ, so a clean exit of both ranks means identical weights."""
    data = write_problems(tmp_path / "d.jsonl")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           str(ROOT / "grpo.py"), *tiny_run_args(tiny_model_dir, data, tmp_path / "ddp", "--steps", "2",
                                                 "--beta", "0.1")]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 1, 2]
    assert lines[2]["samples_seen"] == 2 * 2 * 4  # both ranks' rollouts are counted
    before, after = state_dict_of(tiny_model_dir), state_dict_of(tmp_path / "ddp" / "checkpoint-2")
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_prompts_longer_than_the_context_are_skipped_and_counted(tiny_tokenizer, tmp_path):
    folder = tmp_path / "short-context"
    make_model(tiny_tokenizer, max_position_embeddings=160).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    data = tmp_path / "d.jsonl"
    rows = [{"question": "What is 1 + 1?", "answer": "2"}, {"question": "What is 2 + 2?", "answer": "4"},
            {"question": "Natalia sold clips " * 40 + "?", "answer": "4"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="1 prompts leave no room"):
        grpo.train(run.parse_config(grpo.Config, argv=tiny_run_args(folder, data, out, "--steps", "1")))
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert first["skipped_long_prompts"] == 1


def test_missing_model_and_dataset_fail_with_a_message(tmp_path):
    for missing in (tmp_path / "no-such-model.gguf", tmp_path / "no-such-folder", "./no-such-folder"):
        with pytest.raises(SystemExit, match="no such file or folder"):
            run.load_model(grpo.Config(model=str(missing)), torch.device("cpu"))
    with pytest.raises(SystemExit, match="Cannot load the dataset 'no-such-file.jsonl'"):
        run.load_examples("no-such-file.jsonl", True, grpo.Config())


def test_ctrl_c_saves_the_last_step_and_exits(tiny_model_dir, tmp_path):
    import signal
    import time

    out = tmp_path / "run"
    args = tiny_run_args(tiny_model_dir, write_problems(tmp_path / "d.jsonl"), out, "--steps", "10000", "--beta", "0.1",
                         "--save-every", "10000")
    process = subprocess.Popen([sys.executable, str(ROOT / "grpo.py"), *args], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-2000:]
    assert "saving after this step" in output
    last_step = json.loads(metrics.read_text().splitlines()[-1])["step"]
    assert 2 <= last_step < 10000
    assert run.newest_checkpoint(out).name == f"checkpoint-{last_step}"


def test_gradient_checkpointing_gives_the_same_gradients(tiny_tokenizer):
    rollouts = [grpo.Rollout([5, 6, 7], [8, 9], 1.0, 0), grpo.Rollout([5], [10, 11, 12], 0.0, 0)]
    grads = []
    for checkpointing in (False, True):
        model = make_model(tiny_tokenizer, seed=1).train()
        if checkpointing:
            getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
        logprobs, mask = grpo.response_logprobs(model, rollouts, 0, 1.0)
        grpo.policy_loss(logprobs, torch.tensor([1.0, -1.0]), mask).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


# ---------------------------------------------------------------------------------------------
# The update schedule: mini-batches, and averages over all processes
# ---------------------------------------------------------------------------------------------


def small_model(seed=1):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True))


def prompts_rollouts(first_prompt, n_prompts):
    """Two rollouts per prompt (rewards 1 and 0), of lengths that differ from prompt to prompt."""
    return [grpo.Rollout([5, 6, p], list(range(10, 12 + p + j)), float(j == 0), group=p, prompt_index=p)
            for p in range(first_prompt, first_prompt + n_prompts) for j in range(2)]


def test_mini_batches_are_one_optimizer_step_per_slice_of_prompts():
    rollouts = prompts_rollouts(0, 4)
    cfg = grpo.Config(mini_batches=2, temperature=1.0)
    model = small_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    update(model, optimizer, rollouts, cfg)
    # reference: two separate updates, one on each half of the prompts
    reference = small_model()
    ref_optimizer = torch.optim.AdamW(reference.parameters(), lr=1e-2)
    for half in (rollouts[:4], rollouts[4:]):
        update(reference, ref_optimizer, half, grpo.Config(mini_batches=1, temperature=1.0))
    for p, q in zip(model.parameters(), reference.parameters()):
        assert torch.allclose(p, q, atol=1e-6)
    one_step = small_model()
    update(one_step, torch.optim.AdamW(one_step.parameters(), lr=1e-2), rollouts,
           grpo.Config(mini_batches=1, temperature=1.0))
    assert any(not torch.allclose(p, q) for p, q in zip(model.parameters(), one_step.parameters()))


def test_prompt_slices_keep_a_prompts_rollouts_together():
    rollouts = [grpo.Rollout([], [], 0.0, g, prompt_index=g // 2) for g in (0, 1, 0, 1, 2, 3, 2, 3, 4, 5)]
    assert grpo.prompt_slices(rollouts, 2) == [[0, 1, 2, 3, 4, 5, 6, 7], [8, 9]]
    assert grpo.prompt_slices(rollouts, 3) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    five = [grpo.Rollout([], [], 0.0, p, prompt_index=p) for p in range(5)]
    assert [len(part) for part in grpo.prompt_slices(five, 4)] == [2, 1, 1, 1]  # balanced, none empty


def update_on_two_processes(rank, loss_agg, path):
    # a file store: no port to collide with another run, no store server to outlive
    torch.distributed.init_process_group("gloo", init_method=f"file://{path}.store", rank=rank, world_size=2)
    rollouts = prompts_rollouts(0, 2) if rank == 0 else prompts_rollouts(2, 1)  # unequal shares
    model = small_model()
    update(model, torch.optim.SGD(model.parameters(), lr=1.0), rollouts,
           grpo.Config(mini_batches=1, loss_agg=loss_agg, temperature=1.0))
    if rank == 0:
        torch.save(model.state_dict(), path)
    run.close_process_group()


@pytest.mark.parametrize("loss_agg", ["seq-mean", "token-mean"])
def test_two_processes_average_over_all_sequences_and_tokens(loss_agg, tmp_path):
    """Three prompts split 2 + 1 over two processes give the update of one process with all three."""
    import torch.multiprocessing as mp

    path = tmp_path / "weights.pt"
    mp.spawn(update_on_two_processes, args=(loss_agg, path), nprocs=2)
    model = small_model()
    update(model, torch.optim.SGD(model.parameters(), lr=1.0), prompts_rollouts(0, 3),
           grpo.Config(mini_batches=1, loss_agg=loss_agg, temperature=1.0))
    two_processes = torch.load(path)
    for name, value in model.state_dict().items():
        assert torch.allclose(value, two_processes[name], atol=1e-6), name


def test_evaluation_runs_in_eval_mode_and_restores_the_mode(tiny_model_dir, tiny_tokenizer, monkeypatch):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).train()
    modes = []

    def recording_sample(model, *args, **kwargs):
        modes.append(model.training)
        return [[generation.Chain([1], [1], "eos")] for _ in args[1]]
    monkeypatch.setattr(grpo, "sample", recording_sample)
    examples = [{"question": "1+1?", "answer": "2", "prompt_ids": [5, 6]}] * 3
    grpo.evaluate(model, tiny_tokenizer, examples, grpo.Config(), 0, 1, torch.device("cpu"), batch=2)
    assert modes == [False, False] and model.training


# ---------------------------------------------------------------------------------------------
# Evaluation problems are held out; rollout dumps
# ---------------------------------------------------------------------------------------------


def test_a_dataset_without_a_test_split_gets_a_held_out_slice(tmp_path, capsys):
    data = write_problems(tmp_path / "d.jsonl", n=8)
    train, held_out = run.train_and_eval_examples(grpo.Config(dataset=str(data), eval_size=3, seed=1), rank=0)
    assert len(train) == 5 and len(held_out) == 3
    assert not {ex["question"] for ex in train} & {ex["question"] for ex in held_out}
    assert "Training on 5 problems of" in capsys.readouterr().out
    # the same slice for every seed
    assert run.train_and_eval_examples(grpo.Config(dataset=str(data), eval_size=3, seed=7), rank=0)[1] == held_out
    # asked for on purpose: the overlap is counted
    run.train_and_eval_examples(grpo.Config(dataset=str(data), eval_dataset=str(data), eval_size=3), rank=0)
    out = capsys.readouterr().out
    assert "3 training problems are also evaluated on" in out and f"evaluating on 3 problems of '{data}'." in out


def test_toy_training_never_sees_an_evaluation_problem(capsys):
    train, held_out = run.train_and_eval_examples(grpo.Config(eval_size=500), rank=0)
    assert "evaluating on 500 problems of the test split of 'toy'." in capsys.readouterr().out
    assert not {ex["question"] for ex in train} & {ex["question"] for ex in held_out}
