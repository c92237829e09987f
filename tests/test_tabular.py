"""tabular.py: the loss and its gradient against grpo.policy_loss and finite differences, the
advantages and the accuracy against hand computations, reset suffixes against the closed form of
their success probability, the budget accounting, and the script end to end."""
import itertools
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import grpo
import tabular

ROOT = Path(__file__).resolve().parents[1]


def random_batch(rng, runs=2, prompts=3, rollouts=4, horizon=5):
    types = rng.integers(0, tabular.N_TYPES, (runs, prompts, horizon))
    right = rng.random((runs, prompts, rollouts, horizon)) < 0.6
    first = rng.integers(0, horizon, (runs, prompts, rollouts, 1))  # suffix-like masks: steps first..n
    trained = np.arange(horizon) >= first
    advantages = rng.normal(size=(runs, prompts, rollouts))
    return rng.normal(size=(runs, tabular.N_TYPES)), types, right, trained, advantages


@pytest.mark.parametrize("agg", ["seq-mean", "token-mean"])
def test_loss_and_gradient_equal_grpo_policy_loss_through_autograd(agg):
    logits, types, right, trained, advantages = random_batch(np.random.default_rng(0))
    loss = tabular.policy_loss(logits, types, right, trained, advantages, agg)
    grad = tabular.loss_gradient(logits, types, right, trained, advantages, agg)
    for run in range(len(logits)):
        theta = torch.tensor(logits[run], dtype=torch.float64, requires_grad=True)
        step_logits = theta[torch.from_numpy(types[run])][:, None, :].expand(right.shape[1:])  # (prompts, B, n)
        logprobs = torch.where(torch.from_numpy(right[run]), torch.nn.functional.logsigmoid(step_logits),
                               torch.nn.functional.logsigmoid(-step_logits))
        horizon = right.shape[-1]
        reference = grpo.policy_loss(logprobs.reshape(-1, horizon), torch.from_numpy(advantages[run]).reshape(-1),
                                     torch.from_numpy(trained[run]).reshape(-1, horizon), agg=agg)
        reference.backward()
        assert abs(reference.item() - loss[run]) < 1e-12
        assert np.allclose(theta.grad.numpy(), grad[run], atol=1e-12)


@pytest.mark.parametrize("agg", ["seq-mean", "token-mean"])
def test_gradient_equals_finite_differences(agg):
    logits, types, right, trained, advantages = random_batch(np.random.default_rng(1))
    grad = tabular.loss_gradient(logits, types, right, trained, advantages, agg)
    eps = 1e-6
    for t in range(tabular.N_TYPES):
        shift = np.zeros_like(logits)
        shift[:, t] = eps
        numeric = (tabular.policy_loss(logits + shift, types, right, trained, advantages, agg)
                   - tabular.policy_loss(logits - shift, types, right, trained, advantages, agg)) / (2 * eps)
        assert np.allclose(numeric, grad[:, t], atol=1e-8)
    assert np.abs(grad).max() > 1e-3  # a real gradient, not zeros matching zeros


def test_token_mean_weights_steps_alike_and_leaves_full_rollouts_as_they_are():
    logits, types, right, trained, advantages = random_batch(np.random.default_rng(2))
    gradient = lambda mask, agg: tabular.loss_gradient(logits, types, right, mask, advantages, agg)  # noqa: E731
    # Every rollout trained on every step (GRPO): both averages give the same gradient; with
    # suffix-like masks they differ.
    full = np.ones_like(trained)
    assert np.allclose(gradient(full, "token-mean"), gradient(full, "seq-mean"), atol=1e-15)
    assert not np.allclose(gradient(trained, "token-mean"), gradient(trained, "seq-mean"), atol=1e-3)
    # By hand: a batch of two rollouts of 1 and 3 trained steps, A = 1 and 2. seq-mean weighs a
    # step by A_i / |S_i| / 2 (1/2 and 1/3), token-mean by A_i / 4 (1/4 and 1/2).
    mask = np.array([[[[True, False, False], [True, True, True]]]])
    two = np.array([[[1.0, 2.0]]])
    assert np.allclose(tabular.rollout_weights(mask, two, "seq-mean"), [[[1 / 2, 1 / 3]]])
    assert np.allclose(tabular.rollout_weights(mask, two, "token-mean"), [[[1 / 4, 1 / 2]]])


def test_gradient_of_one_step_by_hand():
    # One rollout, one step of type 2 done right, A = 1.5, p = sigmoid(0.4):
    # loss = -1.5 * log p, d loss / d theta_2 = -1.5 * (1 - p).
    logits = np.zeros((1, tabular.N_TYPES))
    logits[0, 2] = 0.4
    grad = tabular.loss_gradient(logits, np.array([[[2]]]), np.array([[[[True]]]]), np.array([[[[True]]]]),
                                 np.array([[[1.5]]]))
    expected = np.zeros(tabular.N_TYPES)
    expected[2] = -1.5 * (1 - 1 / (1 + np.exp(-0.4)))
    assert np.allclose(grad[0], expected)


def test_group_advantages_by_hand_and_against_grpo():
    rewards = np.array([[1., 0., 0., 0., 1., 1., 0., 1.], [1., 1., 1., 1., 0., 0., 0., 0.]])
    groups = np.array([[0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1, 1, 1]])
    s = np.sqrt(3) / 4  # population std of three equal rewards and one different
    expected = np.array([[0.75 / s, -0.25 / s, -0.25 / s, -0.25 / s, 0.25 / s, 0.25 / s, -0.75 / s, 0.25 / s],
                         [0.0] * 8])  # each group of the second prompt has equal rewards: no signal
    assert np.allclose(tabular.group_advantages(rewards, groups), expected)
    one_group = np.array([1., 0., 1., 1., 0., 0., 0., 1.])
    assert np.allclose(tabular.group_advantages(one_group, np.zeros(8, int)),
                       grpo.group_advantages(torch.tensor(one_group), torch.zeros(8, dtype=torch.long)).numpy())


def test_accuracy_is_the_mean_over_all_problems_by_enumeration():
    logits = np.random.default_rng(2).normal(size=tabular.N_TYPES)
    p = 1 / (1 + np.exp(-logits))
    exact = np.mean([np.prod(p[list(types)]) for types in itertools.product(range(tabular.N_TYPES), repeat=3)])
    assert abs(tabular.accuracy(logits, 3) - exact) < 1e-12


@pytest.mark.parametrize("place", ["first", "last"])
def test_with_the_hard_type_at_one_place_accuracy_is_the_mean_over_those_problems(place):
    """--hard-place: exactly one step of type 0, at that place; the others of types 1..7."""
    types = tabular.step_types(np.random.default_rng(1), (2000, 5), place)
    position = 0 if place == "first" else 4
    assert (types[:, position] == 0).all() and (np.delete(types, position, 1) > 0).all()
    assert set(np.unique(np.delete(types, position, 1))) == set(range(1, tabular.N_TYPES))
    logits = np.random.default_rng(2).normal(size=tabular.N_TYPES)
    p = 1 / (1 + np.exp(-logits))
    others = itertools.product(range(1, tabular.N_TYPES), repeat=2)
    exact = np.mean([np.prod(p[[0, *rest] if place == "first" else [*rest, 0]]) for rest in others])
    assert abs(tabular.accuracy(logits, 3, place) - exact) < 1e-12


@pytest.mark.parametrize("place", ["anywhere", "last"])
def test_initial_logits_hit_the_starting_accuracy_with_a_hard_type(place):
    for start, gap in ((0.8, 0.0), (0.3, 0.0), (0.1, 3.0), (0.57, 3.0)):
        logits = tabular.initial_logits(start, 8, gap, place)
        assert abs(tabular.accuracy(logits, 8, place) - start) < 1e-9
        assert np.allclose(logits[1:], logits[1]) and abs(logits[1] - logits[0] - gap) < 1e-9


def resets_of_one_problem(types, logits, noise, runs=20000, seed=3):
    """reset_rollouts with the same problem (one prompt) and policy in every run."""
    return tabular.reset_rollouts(np.random.default_rng(seed), np.tile(logits, (runs, 1)),
                                  np.tile(np.array([types]), (runs, 1, 1)), noise=noise)


def check_suffix_success(batch, types, logits):
    """Suffixes from a clean prefix succeed as often as the product of the probabilities of the
    steps they resample (within 4.5 binomial sd per reset step); from a prefix holding a wrong
    step, never. Returns the reset steps seen."""
    p_step = (1 / (1 + np.exp(-logits)))[np.array(types)]
    has_parent = batch["has_parent"][:, 0]
    k = batch["reset_step"][has_parent, 0]
    suffixes = batch["right"][has_parent, 0, 4:]  # (resets, 4, n)
    rewards = batch["reward"][has_parent, 0, 4:]
    clean = np.array([suffix[:, :step - 1].all() for suffix, step in zip(suffixes, k)])
    assert (rewards[~clean] == 0).all()
    for step in np.unique(k[clean]):
        observed = rewards[clean & (k == step)]
        expected = np.prod(p_step[step - 1:])
        sd = np.sqrt(expected * (1 - expected) / observed.size)
        assert abs(observed.mean() - expected) < 4.5 * sd, (step, observed.mean(), expected)
    return k


def test_oracle_suffixes_from_the_clean_prefix_succeed_as_the_closed_form_says():
    types, logits = [2, 0, 5, 0, 7, 1], np.linspace(-0.5, 2.5, tabular.N_TYPES)
    batch = resets_of_one_problem(types, logits, noise=0.0)
    k = check_suffix_success(batch, types, logits)
    assert len(np.unique(k)) == len(types)  # the first error lands on every step in some run
    has_parent = batch["has_parent"][:, 0]
    suffixes = batch["right"][has_parent, 0, 4:]
    assert all(suffix[:, :step - 1].all() for suffix, step in zip(suffixes, k))  # the oracle's prefix is clean
    trained = batch["trained"][has_parent, 0]
    assert (trained[:, :4].all(-1)).all()  # group 1: every step
    assert (trained[:, 4:] == (np.arange(len(types)) >= k[:, None, None] - 1)).all()  # group 2: steps k..n
    assert (batch["group"][has_parent, 0] == [0, 0, 0, 0, 1, 1, 1, 1]).all()


def test_random_reset_suffixes_succeed_only_from_a_clean_prefix():
    types, logits = [3, 3, 6, 1, 0], np.linspace(0.0, 2.0, tabular.N_TYPES)
    batch = resets_of_one_problem(types, logits, noise=1.0, seed=4)
    k = check_suffix_success(batch, types, logits)
    counts = np.bincount(k, minlength=len(types) + 1)[1:]  # uniform over 1..n
    assert np.abs(counts / k.size - 1 / len(types)).max() < 4.5 * np.sqrt(0.2 * 0.8 / k.size)


class ScriptedRandom:
    """A numpy Generator whose first `random` call (the fresh solutions) returns given uniforms."""

    def __init__(self, first_draw):
        self.first_draw, self.rng = first_draw, np.random.default_rng(0)

    def random(self, shape):
        draw, self.first_draw = self.first_draw, None
        return self.rng.random(shape) if draw is None else draw

    def integers(self, *args):
        return self.rng.integers(*args)


def test_group_one_is_the_first_four_fresh_solutions_other_than_the_parent():
    # p = 0.5 for every step; a uniform below 0.5 is a right step. Prompt 0: only fresh solution
    # #1 is wrong (at step 3), found in the first 5; prompt 1: only #7, found in the next 7.
    horizon = 5
    uniforms = np.full((1, 2, 16, horizon), 0.1)
    uniforms[0, 0, 1, 2] = uniforms[0, 1, 7, 0] = 0.9
    batch = tabular.reset_rollouts(ScriptedRandom(uniforms), np.zeros((1, tabular.N_TYPES)),
                                   np.zeros((1, 2, horizon), int), noise=0.0)
    assert (batch["reward"][0, :, :4] == 1).all()  # the parent (the only wrong one) is not in group 1
    assert (batch["reset_step"][0] == [3, 1]).all()
    assert batch["steps_sampled"][0] == (5 * horizon + 4 * 3) + (12 * horizon + 4 * 5)


def test_every_method_scores_eight_rollouts_per_prompt_and_counts_its_steps():
    horizon, prompts = 6, 50
    types = np.random.default_rng(5).integers(0, tabular.N_TYPES, (1, prompts, horizon))
    logits = np.full((1, tabular.N_TYPES), 30.0)
    logits[0, 0] = -30.0  # type 0 always wrong, the others always right: everything is known
    has_type0 = (types[0] == 0).any(-1)
    first_type0 = (types[0] == 0).argmax(-1) + 1
    for name, (make_rollouts, kwargs) in tabular.methods([0.0, 0.5, 1.0]).items():
        batch = make_rollouts(np.random.default_rng(6), logits, types, **kwargs)
        assert batch["right"].shape == (1, prompts, 8, horizon)
        assert batch["trained"].any(-1).all()  # all 8 are trained on at least one step
        sizes = [sorted(np.bincount(g, minlength=2)) for g in batch["group"][0]]
        if name == "GRPO":
            assert batch["steps_sampled"][0] == prompts * 8 * horizon
            assert all(s == [0, 8] for s in sizes)
            continue
        assert (batch["has_parent"][0] == has_type0).all()
        # A failing problem: its parent is the first fresh solution, found among the first 5;
        # 4 suffixes of n - k + 1 steps. Otherwise: 12 fresh without a failure, then 4 more.
        k = batch["reset_step"][0]
        if name == "start":  # the control: group 2 is 4 whole new solutions, trained on every step
            assert (k[has_type0] == 1).all() and batch["trained"][0, has_type0].all()
        elif kwargs["noise"] == 0.0:
            assert (k[has_type0] == first_type0[has_type0]).all()
        per_prompt = np.where(has_type0, 5 * horizon + 4 * (horizon - k + 1), 16 * horizon)
        assert batch["steps_sampled"][0] == per_prompt.sum()
        assert all(s == ([4, 4] if failing else [0, 8]) for s, failing in zip(sizes, has_type0))
        rewards = batch["reward"][0]
        assert (rewards[has_type0] == 0).all() and (rewards[~has_type0] == 1).all()


def small_sweep(**changes):
    settings = dict(start_acc=[0.3], hard_gap=3.0, horizon=8, iterations=6, prompts=8, lrs=[4.0], noise=[0.0],
                    seeds=3, seed=0, loss_agg="seq-mean", hard_place="anywhere")
    return SimpleNamespace(**{**settings, **changes})


def test_every_run_with_the_hard_type_last_starts_at_the_starting_accuracy():
    for (start, gap, method), by_lr in tabular.simulate(small_sweep(hard_place="last")).items():
        assert np.allclose(by_lr[4.0]["acc"][:, 0], start), (gap, method)


def test_the_loss_average_reaches_training_and_changes_only_the_resets_with_a_place():
    seq, token = tabular.simulate(small_sweep()), tabular.simulate(small_sweep(loss_agg="token-mean"))
    for key in seq:
        same = np.array_equal(seq[key][4.0]["acc"], token[key][4.0]["acc"])
        assert same == (key[2] in ("GRPO", "start")), key  # every rollout of these trains on all steps


def test_each_row_holds_its_gain_over_the_start_control():
    args = small_sweep(lrs=[2.0, 8.0])
    results = tabular.simulate(args)
    rows = tabular.summarize(results, args)
    for row in rows:
        control = results[(row["start"], row["gap"], "start")]
        lr = row["lr"] if row["lr"] != "best" else tabular.best_lr(control)
        mine = results[(row["start"], row["gap"], row["method"])][row["best_lr"] if row["lr"] == "best" else lr]
        expected = mine["acc"][:, -1].mean() - control[lr]["acc"][:, -1].mean()
        low, high = row["gain_over_start"][1:]
        assert row["gain_over_start"][0] == pytest.approx(expected) and low <= expected <= high
    assert any(abs(row["gain_over_start"][0]) > 1e-3 for row in rows if row["method"] == "oracle")


def test_training_raises_the_accuracy_for_every_method():
    start = tabular.initial_logits(0.3, 8, 3.0)
    problems = np.random.default_rng(7).integers(0, tabular.N_TYPES, (10, 4, 16, 8))
    for make_rollouts, kwargs in tabular.methods([0.0, 1.0]).values():
        acc, steps, silent, _ = tabular.train(np.random.default_rng(8), make_rollouts, np.tile(start, (4, 1)),
                                              np.full(4, 8.0), 8, problems, **kwargs)
        assert acc.shape == (11, 4) and steps.shape == (10, 4)
        assert np.allclose(acc[0], 0.3) and (acc[-1] > 0.5).all()
        assert ((silent > 0) & (silent < 1)).all()


def test_quick_run_prints_and_writes_the_tables(tmp_path):
    result = subprocess.run([sys.executable, "tabular.py", "--quick", "--out", str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "| start acc | GRPO iterations | oracle |" in result.stdout
    assert "| random | start |" in result.stdout and "| start acc | start final | oracle |" in result.stdout
    assert "every method at its best lr" in result.stdout and "random" in result.stdout
    assert (tmp_path / "tabular-results.md").read_text().startswith("Tabular stand-in")


def test_settings_other_than_the_defaults_write_to_runs_not_to_the_docs(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "tabular.py"), "--quick", "--hard-place", "last"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = (tmp_path / "runs" / "tabular" / "tabular-results.md").read_text()
    assert "### one hard step type, 3 nats lower, always the last step: every method at its best lr" in report
    assert not (tmp_path / "docs").exists()


@pytest.mark.parametrize("bad, message", [
    (["--lrs", "2", "-1"], "--lrs and --hard-gap must be above 0"),
    (["--hard-gap", "0"], "--lrs and --hard-gap must be above 0"),
    (["--start-acc", "0.5", "1"], "--start-acc 0.5 1.0: each must be between 0 and 1"),
    (["--noise", "0", "2"], "--noise 0.0 2.0: each is a probability"),
    (["--seeds", "1"], "--seeds at least 2"),
    (["--horizon", "0"], "--horizon, --iterations and --prompts must be at least 1"),
])
def test_out_of_range_settings_stop_before_anything_is_written(bad, message, capsys):
    with pytest.raises(SystemExit):
        tabular.parse_args(bad)
    assert message in capsys.readouterr().err
    assert tabular.parse_args(["--quick"]).lrs == [2, 8]
