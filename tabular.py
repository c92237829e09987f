r"""The theory's side of the comparison: a tabular stand-in for a reasoning model, where the
policy has 8 numbers and the expected accuracy is known exactly.

The model. A problem is a chain of n steps (--horizon, 8), each of one of 8 step types drawn
uniformly per step. The policy has one logit per type: a step of type t is done right with
probability p_t = sigmoid(theta_t), independently; a solution is right (reward 1) iff every step
is. The expected accuracy over problems is therefore exactly mean_t(p_t)^n, with no evaluation
noise. The starting logits are set so that this is --start-acc; with --hard-gap g > 0, type 0
starts g nats below the others (a systematically hard step, where most errors are), else all
types start equal (errors are slips spread over every type). With --hard-place first or last,
every chain has exactly one step of type 0, always its first or always its last step, and its
other steps are drawn from the 7 other types: the accuracy is p_0 * mean_{t>0}(p_t)^(n-1), and
the errors come early or late in the chain.

The methods, with this project's buffer and loss (grpo.py, rrpo.py), B = 8 scored rollouts per
prompt for every method:
- GRPO: 8 fresh solutions, one group.
- Resets: fresh solutions, 5 first and 7 more for a prompt with no wrong one yet (at most 12);
  the first wrong one is the parent (not trained on); group 1 = 4 other fresh solutions; the
  reset step k is the parent's first wrong step (oracle), with probability q a uniform step of
  1..n instead (noisy oracle; q = 1 is random resets, RRPO); group 2 = 4 suffixes that keep the
  parent's steps 1..k-1 and resample steps k..n, trained on those steps only. No wrong fresh
  solution among 12: 4 of them and 4 new ones form one group (the no-failure fallback).
- start, the control: the same buffer with the reset always at step 1, so group 2 is 4 more fresh
  solutions in their own group and the parent is still left out: the buffer without a reset's
  place. The reset methods' final accuracy is also reported against it.

    advantages  A_i = (r_i - mean(r_g)) / std(r_g) within each group g, population std; 0 if std = 0
    loss        L = - mean_i( A_i * mean_{j in trained steps of i} log pi(step j of i) )
    gradient    dL/dtheta_t = - mean_i( A_i / |S_i| * sum_{j in S_i, type t} (right_ij - p_t) )

The mean over i runs over all 8 x --prompts rollouts of an iteration (zero-advantage ones too).
With --loss-agg token-mean every trained step has the same weight instead: A_i / |S_i| becomes
A_i / mean_i |S_i|, which for GRPO (every |S_i| = n) changes nothing.
The update is plain gradient descent, theta <- theta - lr * dL/dtheta, one step per iteration:
the project's AdamW and gradient clipping are left out, so that a step is proportional to the
signal a buffer carries, as in the theory. (With Adam's per-logit normalisation, 8 logits whose
gradients are nearly always positive take nearly the same steps under every method.)

Measured, per method against GRPO, mean and 95% bootstrap interval over --seeds runs: accuracy
after each iteration (exact, from the logits); iterations to the target, halfway from the start
to GRPO's final accuracy; steps sampled to it; the share of groups whose rewards are all equal.
Budget accounting as in rrpo.py: every method trains on exactly 8 rollouts per prompt; "steps
sampled" (the tokens of this model) also counts the parent search, the fallback's extra
solutions and the suffixes (n - k + 1 steps each). Every method runs every lr of --lrs; it is
reported at each lr against GRPO at the same lr, and at its best lr (highest mean accuracy over
the iterations) against GRPO at its own. Nothing in this model punishes a large step, so the
best lr is the largest of the grid: the by-lr tables show how the comparison turns with the step.

    python tabular.py            # the sweep of docs/tabular-results.md, about 30 s on 2 cores
    python tabular.py --quick    # a few seconds
"""
import argparse
import time
from pathlib import Path

import numpy as np

N_TYPES = 8


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def initial_logits(start_acc: float, horizon: int, hard_gap: float = 0.0, place: str = "anywhere") -> np.ndarray:
    """Logits (8,) whose expected accuracy (`accuracy`) is start_acc, type 0 hard_gap lower.

    >>> round(float(accuracy(initial_logits(0.3, 8, hard_gap=3.0), 8)), 6)
    0.3
    """
    gap = np.zeros(N_TYPES)
    gap[0] = hard_gap
    low, high = -30.0, 30.0
    for _ in range(100):  # accuracy grows with the common logit: bisection
        mid = (low + high) / 2
        low, high = (mid, high) if accuracy(mid - gap, horizon, place) < start_acc else (low, mid)
    return (low + high) / 2 - gap


def accuracy(logits: np.ndarray, horizon: int, place: str = "anywhere") -> np.ndarray:
    """Exact expected accuracy, logits (..., 8) -> (...): the types of the n steps are independent
    and uniform, so E[prod_j p_{t_j}] = mean_t(p_t)^n; with the hard type at one place (first or
    last), one step is of type 0 and n-1 are uniform over the others: p_0 * mean_{t>0}(p_t)^(n-1)."""
    p = sigmoid(logits)
    if place == "anywhere":
        return p.mean(-1) ** horizon
    return p[..., 0] * p[..., 1:].mean(-1) ** (horizon - 1)


def step_types(rng, shape, place: str = "anywhere") -> np.ndarray:
    """Step types of problems, shape (..., n): uniform over the 8 types, or with --hard-place one
    step of type 0 at that place and the others uniform over types 1..7."""
    if place == "anywhere":
        return rng.integers(0, N_TYPES, shape)
    types = rng.integers(1, N_TYPES, shape)
    types[..., 0 if place == "first" else -1] = 0
    return types


def group_advantages(rewards: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """(r - group mean) / group population std along the last axis, groups labelled 0 and 1;
    zero for a group whose rewards are all equal (as grpo.group_advantages, batched).

    >>> group_advantages(np.array([1., 0., 0., 0., 1., 1.]), np.array([0, 0, 0, 0, 1, 1])).round(4)
    array([ 1.7321, -0.5774, -0.5774, -0.5774,  0.    ,  0.    ])
    """
    advantages = np.zeros_like(rewards)
    for g in (0, 1):
        member = groups == g
        count = np.maximum(member.sum(-1, keepdims=True), 1)
        mean = (rewards * member).sum(-1, keepdims=True) / count
        std = np.sqrt((((rewards - mean) * member) ** 2).sum(-1, keepdims=True) / count)
        advantages += member * np.where(std > 0, (rewards - mean) / np.where(std > 0, std, 1), 0)
    return advantages


def rollout_weights(trained, advantages, agg="seq-mean") -> np.ndarray:
    """The weight of each trained step's log pi in the loss, per rollout, (runs, prompts, B):
    seq-mean (the paper) A_i / |S_i| / (rollouts of the batch), every rollout the same total weight;
    token-mean A_i / (trained steps of the batch), every step the same weight."""
    if agg == "seq-mean":
        return advantages / np.maximum(trained.sum(-1), 1) / np.prod(advantages.shape[1:])
    if agg == "token-mean":
        return advantages / np.maximum(trained.sum((1, 2, 3)), 1)[:, None, None]
    raise ValueError(f"agg must be 'seq-mean' or 'token-mean', not '{agg}'")


def policy_loss(logits, types, right, trained, advantages, agg="seq-mean") -> np.ndarray:
    """grpo.policy_loss (on-policy, `agg` as its loss_agg) of each run's batch, -> (runs,).

    logits (runs, 8); types (runs, prompts, n); right, trained (runs, prompts, B, n) bool;
    advantages (runs, prompts, B). log pi of a step is log p_t if right, log(1 - p_t) if not.
    """
    theta = np.take_along_axis(logits[:, None, None, :], types[:, :, None, :], -1)  # (runs, prompts, 1, n)
    logp = np.where(right, -np.logaddexp(0, -theta), -np.logaddexp(0, theta))
    return -(rollout_weights(trained, advantages, agg) * (logp * trained).sum(-1)).sum((1, 2))


def loss_gradient(logits, types, right, trained, advantages, agg="seq-mean") -> np.ndarray:
    """d policy_loss / d logits, (runs, 8), in closed form: d log p_t / d theta_t = 1 - p_t and
    d log(1 - p_t) / d theta_t = -p_t, i.e. right - p_t for a step of type t."""
    runs = len(logits)
    p_step = np.take_along_axis(sigmoid(logits)[:, None, :], types.reshape(runs, 1, -1), -1).reshape(types.shape)
    score = trained * (right - p_step[:, :, None, :])  # (runs, prompts, B, n)
    per_step = (score * rollout_weights(trained, advantages, agg)[..., None]).sum(2)  # (runs, prompts, n)
    index = np.arange(runs)[:, None, None] * N_TYPES + types
    return -np.bincount(index.ravel(), per_step.ravel(), minlength=runs * N_TYPES).reshape(runs, N_TYPES)


def sample_steps(rng, logits, types, count) -> np.ndarray:
    """count solutions per prompt: (runs, prompts, count, n) bool, step j right w.p. p_{type j}."""
    p_step = np.take_along_axis(sigmoid(logits)[:, None, :], types.reshape(len(types), 1, -1), -1)
    return rng.random((*types.shape[:2], count, types.shape[2])) < p_step.reshape(types.shape)[:, :, None, :]


def grpo_rollouts(rng, logits, types, group_size=8):
    """GRPO's buffer: group_size fresh solutions per prompt, one group, every step trained."""
    right = sample_steps(rng, logits, types, group_size)
    runs, prompts, _, horizon = right.shape
    return {"right": right, "trained": np.ones_like(right), "reward": right.all(-1).astype(float),
            "group": np.zeros((runs, prompts, group_size), int),
            "steps_sampled": np.full(runs, prompts * group_size * horizon),
            "has_parent": np.zeros((runs, prompts), bool), "reset_step": np.zeros((runs, prompts), int)}


def reset_rollouts(rng, logits, types, noise=0.0, group_size=8, max_fresh=12, reset_at=None):
    """The buffer of rrpo.reset_rollouts for every prompt at once; the reset step is the parent's
    first wrong step (or `reset_at` in its place; 1: the control, the reset buffer without a reset,
    4 more fresh solutions as group 2), with probability `noise` a uniform one instead. reset_step
    is 1-based (0: none)."""
    half, horizon = group_size // 2, types.shape[2]
    fresh = sample_steps(rng, logits, types, max_fresh + half)  # the last `half`: the fallback's
    runs, prompts = types.shape[:2]
    wrong = ~fresh[:, :, :max_fresh].all(-1)  # (runs, prompts, max_fresh)
    has_parent = wrong.any(-1)
    parent_index = wrong.argmax(-1)  # the first wrong one, in sampling order
    fresh_sampled = np.where(wrong[:, :, :half + 1].any(-1), half + 1, max_fresh)  # 5, then 7 more
    # Group 1: the first `half` fresh solutions other than the parent.
    others = np.arange(half)[None, None, :] + (np.arange(half)[None, None, :] >= parent_index[..., None])
    group1 = np.take_along_axis(fresh, others[..., None], 2)  # (runs, prompts, half, n)

    parent = np.take_along_axis(fresh, parent_index[..., None, None], 2)[:, :, 0]  # (runs, prompts, n)
    first_wrong = (~parent).argmax(-1) + 1  # 1-based
    uniform = rng.integers(1, horizon + 1, (runs, prompts))
    placed = first_wrong if reset_at is None else np.full_like(first_wrong, reset_at)
    reset_step = np.where(rng.random((runs, prompts)) < noise, uniform, placed)
    suffix_steps = np.arange(horizon) >= (reset_step - 1)[..., None, None]  # steps k..n, (runs, prompts, 1, n)
    resampled = sample_steps(rng, logits, types, half)
    suffixes = np.where(suffix_steps, resampled, parent[:, :, None, :])  # the parent's steps 1..k-1, then new ones

    fallback = np.concatenate([fresh[:, :, :half], fresh[:, :, max_fresh:]], 2)
    with_reset = np.concatenate([group1, suffixes], 2)
    reset_trained = np.concatenate([np.ones_like(group1), np.broadcast_to(suffix_steps, suffixes.shape)], 2)
    right = np.where(has_parent[..., None, None], with_reset, fallback)
    trained = np.where(has_parent[..., None, None], reset_trained, True)
    group = np.where(has_parent[..., None], np.repeat([0, 1], half), 0)
    suffix_steps_sampled = half * (horizon - reset_step + 1)
    steps_sampled = horizon * fresh_sampled + np.where(has_parent, suffix_steps_sampled, half * horizon)
    return {"right": right, "trained": trained, "reward": right.all(-1).astype(float), "group": group,
            "steps_sampled": steps_sampled.sum(1), "has_parent": has_parent,
            "reset_step": np.where(has_parent, reset_step, 0)}


def train(rng, make_rollouts, logits, lrs, horizon, problems, agg="seq-mean", place="anywhere", **method):
    """Runs side by side: logits (runs, 8), lrs (runs,), problems: per iteration the step types
    (runs, prompts, n). Returns accuracy (iterations + 1, runs), steps sampled (iterations, runs), and the
    share of groups with no signal (all, suffix groups), each (runs,)."""
    logits = logits.copy()
    acc, steps_sampled = [accuracy(logits, horizon, place)], []
    groups = suffix_groups = silent = silent_suffix = 0
    for types in problems:
        batch = make_rollouts(rng, logits, types, **method)
        reward, group = batch["reward"], batch["group"]
        advantages = group_advantages(reward, group)
        for g in (0, 1):  # a group whose rewards are equal teaches nothing
            member = group == g
            present = member.any(-1)
            flat = present & ~(member & (advantages != 0)).any(-1)
            groups, silent = groups + present.sum(1), silent + flat.sum(1)
            if g == 1:
                suffix_groups, silent_suffix = suffix_groups + present.sum(1), silent_suffix + flat.sum(1)
        logits -= lrs[:, None] * loss_gradient(logits, types, batch["right"], batch["trained"], advantages, agg)
        acc.append(accuracy(logits, horizon, place))
        steps_sampled.append(batch["steps_sampled"])
    return (np.array(acc), np.array(steps_sampled), silent / groups,
            np.where(suffix_groups > 0, silent_suffix / np.maximum(suffix_groups, 1), np.nan))


def methods(noises):
    """name -> (rollout builder, its keyword arguments)."""
    named = {0.0: "oracle", 1.0: "random"}
    out = {"GRPO": (grpo_rollouts, {})}
    for q in noises:
        out[named.get(q, f"oracle, {q:.0%} noise")] = (reset_rollouts, {"noise": q})
    out["start"] = (reset_rollouts, {"reset_at": 1})  # last: the other methods keep their random streams
    return out


# The places of the hard type (--hard-place), as the report's titles name them.
HARD_PLACES = {"anywhere": "", "first": ", always the first step", "last": ", always the last step"}


def simulate(args):
    """Every method on every (start accuracy, hard gap) x lr x seed, side by side. Returns
    {(start, gap, method): {lr: dict of per-seed arrays}}."""
    conditions = [(s, g) for g in (0.0, args.hard_gap) for s in args.start_acc]
    start = np.array([initial_logits(s, args.horizon, g, args.hard_place) for s, g in conditions])
    cond_index = np.repeat(np.arange(len(conditions)), len(args.lrs) * args.seeds)
    lrs = np.tile(np.repeat(args.lrs, args.seeds), len(conditions))
    # Every method and lr sees the same problems, seed by seed.
    seed_problems = step_types(np.random.default_rng(args.seed),
                               (args.iterations, len(conditions), 1, args.seeds, args.prompts, args.horizon),
                               args.hard_place)
    shape = (len(conditions), len(args.lrs), args.seeds, args.prompts, args.horizon)
    results = {}
    for m, (name, (make_rollouts, kwargs)) in enumerate(methods(args.noise).items()):
        rng = np.random.default_rng([args.seed, m])
        problems = (np.broadcast_to(types, shape).reshape(-1, args.prompts, args.horizon) for types in seed_problems)
        acc, steps, silent, silent_suffix = train(rng, make_rollouts, start[cond_index], lrs, args.horizon,
                                                  problems, args.loss_agg, args.hard_place, **kwargs)
        for c, (s, g) in enumerate(conditions):
            for li, lr in enumerate(args.lrs):
                runs = slice((c * len(args.lrs) + li) * args.seeds, (c * len(args.lrs) + li + 1) * args.seeds)
                results.setdefault((s, g, name), {})[lr] = {
                    "acc": acc[:, runs].T, "steps": steps[:, runs].T, "silent": silent[runs],
                    "silent_suffix": silent_suffix[runs]}
    return results


def best_lr(by_lr: dict) -> float:
    """The lr with the highest accuracy averaged over iterations and seeds."""
    return max(by_lr, key=lambda lr: by_lr[lr]["acc"][:, 1:].mean())


def first_reach(acc: np.ndarray, target: float) -> np.ndarray:
    """Per seed, the first iteration at which accuracy >= target; iterations + 1 if never."""
    reached = acc >= target
    return np.where(reached.any(1), reached.argmax(1), acc.shape[1])


def interval(rng, a, b=None, stat=lambda a, b: a.mean(-1), draws=2000) -> tuple[float, float, float]:
    """stat(a, b) over the seeds (last axis) and its 95% percentile-bootstrap interval, the seeds
    of a and of b resampled independently."""
    value = float(stat(a, b))
    resample = lambda x: None if x is None else x[rng.integers(0, len(x), (draws, len(x)))]  # noqa: E731
    low, high = np.percentile(stat(resample(a), resample(b)), [2.5, 97.5])
    return value, low, high


def final_gain(rng, run, base) -> tuple[float, float, float]:
    """Final accuracy minus base's, mean over seeds and its 95% interval."""
    return interval(rng, run["acc"][:, -1], base["acc"][:, -1], lambda a, b: a.mean(-1) - b.mean(-1))


def compare(rng, run, grpo, args) -> dict:
    """One method's runs against GRPO's, seed by seed: final accuracy and its gain, iterations and
    steps sampled to reach the target (halfway from the start to GRPO's final mean accuracy)
    relative to GRPO's, and the share of groups with no signal. Mean and 95% interval over seeds."""
    ratio = lambda a, b: a.mean(-1) / b.mean(-1)  # noqa: E731
    start = run["acc"][0, 0]
    target = start + 0.5 * (grpo["acc"][:, -1].mean() - start)
    iters, grpo_iters = first_reach(run["acc"], target), first_reach(grpo["acc"], target)
    def steps_to(runs, iters):  # steps sampled in the iterations up to the one that reached the target
        cumulative = np.concatenate([np.zeros((len(iters), 1)), np.cumsum(runs["steps"], 1)], 1)
        return cumulative[np.arange(len(iters)), np.minimum(iters, args.iterations)]

    return {"target": target, "reached": int((iters <= args.iterations).sum()),
            "final": interval(rng, run["acc"][:, -1]), "gain": final_gain(rng, run, grpo),
            "iters": interval(rng, iters.astype(float)),
            "iters_ratio": interval(rng, iters.astype(float), grpo_iters.astype(float), ratio),
            "steps_ratio": interval(rng, steps_to(run, iters), steps_to(grpo, grpo_iters), ratio),
            "steps_per_iter": run["steps"].mean() / grpo["steps"].mean(),
            "silent": run["silent"].mean(), "silent_suffix": run["silent_suffix"].mean()}


def summarize(results, args) -> list[dict]:
    """A row per (start accuracy, hard gap, method, lr), against GRPO at the same lr, and one per
    (start accuracy, hard gap, method) with lr "best": each method at its own best lr. Each row also
    holds the final accuracy's gain over the start control (at the same lr; at its best lr)."""
    rng, control_rng = np.random.default_rng(0), np.random.default_rng(1)
    rows = []
    for (s, g, name), by_lr in results.items():
        grpo, control = results[(s, g, "GRPO")], results[(s, g, "start")]
        for lr in args.lrs:
            rows.append({"start": s, "gap": g, "method": name, "lr": lr, **compare(rng, by_lr[lr], grpo[lr], args),
                         "gain_over_start": final_gain(control_rng, by_lr[lr], control[lr])})
        best, grpo_best = best_lr(by_lr), best_lr(grpo)
        rows.append({"start": s, "gap": g, "method": name, "lr": "best", "best_lr": best,
                     **compare(rng, by_lr[best], grpo[grpo_best], args),
                     "gain_over_start": final_gain(control_rng, by_lr[best], control[best_lr(control)])})
    return rows


def fmt(value_low_high, digits=2, signed=False) -> str:
    value, low, high = value_low_high
    sign = "+" if signed else ""
    return f"{value:{sign}.{digits}f} [{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]"


def iters_cell(row, args) -> str:
    """Iterations to the target relative to GRPO; a run that never reached it counts as
    iterations + 1, so the ratio is then a lower bound."""
    missed = "" if row["reached"] == args.seeds else f" ({row['reached']}/{args.seeds} reached)"
    return fmt(row["iters_ratio"]) + missed


def header(*columns) -> list[str]:
    return ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]


def tables(rows, args) -> str:
    """The markdown report: per hard-type setting, every method at its best lr (ratios, gains,
    details), then by lr."""
    names = list(methods(args.noise))
    resets, lr_names = names[1:], [f"lr {lr:g}" for lr in args.lrs]
    placed = [m for m in resets if m != "start"]  # the resets with a place, against the control
    conditions = [(0.0, "no hard step type"), (args.hard_gap, f"one hard step type, {args.hard_gap:g} nats lower"
                                                           + HARD_PLACES[args.hard_place])]
    out = []
    for g, title in conditions:
        best = {(r["start"], r["method"]): r for r in rows if r["gap"] == g and r["lr"] == "best"}
        out += [f"### {title}: every method at its best lr", "",
                "Iterations to the target relative to GRPO (below 1: sooner):", "",
                *header("start acc", "GRPO iterations", *resets)]
        out += [f"| {s:.2f} | {best[s, 'GRPO']['iters'][0]:.1f} | "
                + " | ".join(iters_cell(best[s, m], args) for m in resets) + " |" for s in args.start_acc]
        out += ["", f"Final accuracy after {args.iterations} iterations, gain over GRPO:", "",
                *header("start acc", "GRPO final", *resets)]
        out += [f"| {s:.2f} | {fmt(best[s, 'GRPO']['final'], 3)} | "
                + " | ".join(fmt(best[s, m]["gain"], 3, signed=True) for m in resets) + " |" for s in args.start_acc]
        out += ["", "Final accuracy minus the start control's (the reset's place, against the reset buffer alone):",
                "", *header("start acc", "start final", *placed)]
        out += [f"| {s:.2f} | {fmt(best[s, 'start']['final'], 3)} | "
                + " | ".join(fmt(best[s, m]["gain_over_start"], 3, signed=True) for m in placed) + " |"
                for s in args.start_acc]
        out += ["", "Details. lr: the method's best; steps to target: steps sampled (tokens) until the target, "
                "relative to GRPO; silent: share of groups (all; suffix groups) whose rewards are all equal.", "",
                *header("start acc", "method", "lr", "target", "iterations", "steps to target", "steps / iteration",
                        "silent groups", "silent suffix groups")]
        out += [f"| {s:.2f} | {m} | {r['best_lr']:g} | {r['target']:.3f} | {fmt(r['iters'], 1)} | "
                f"{fmt(r['steps_ratio'])} | {r['steps_per_iter']:.2f} | {r['silent']:.2f} | "
                f"{'' if m == 'GRPO' else format(r['silent_suffix'], '.2f')} |"
                for s in args.start_acc for m in names for r in [best[s, m]]]
        out.append("")
    for g, title in conditions:
        at = {(r["start"], r["method"], r["lr"]): r for r in rows if r["gap"] == g}
        out += [f"### {title}: by lr, each method against GRPO at the same lr", "",
                "GRPO: iterations to the target; final accuracy:", "", *header("start acc", *lr_names)]
        out += [f"| {s:.2f} | " + " | ".join(f"{at[s, 'GRPO', lr]['iters'][0]:.1f}; {at[s, 'GRPO', lr]['final'][0]:.3f}"
                                            for lr in args.lrs) + " |" for s in args.start_acc]
        for m in resets:
            over_start = m != "start"
            out += ["", f"{m}: iterations to the target relative to GRPO; gain in final accuracy"
                        + (" over GRPO; over the start control:" if over_start else ":"), "",
                    *header("start acc", *lr_names)]
            out += [f"| {s:.2f} | " + " | ".join(
                f"{iters_cell(at[s, m, lr], args)}; {at[s, m, lr]['gain'][0]:+.3f}"
                + (f"; {at[s, m, lr]['gain_over_start'][0]:+.3f}" if over_start else "") for lr in args.lrs) + " |"
                for s in args.start_acc]
        out.append("")
    return "\n".join(out)


def plot(rows, args, path: Path) -> bool:
    """Iterations to the target relative to GRPO against starting accuracy, one line per reset
    method: at the smallest lr of the grid and at each method's best lr, without and with a hard type."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharey=True)
    for row, lr in zip(axes, (min(args.lrs), "best")):
        titles = ("no hard step type", "one hard step type" + HARD_PLACES[args.hard_place])
        for ax, g, title in zip(row, (0.0, args.hard_gap), titles):
            for name in list(methods(args.noise))[1:]:
                mine = sorted((r for r in rows if r["gap"] == g and r["method"] == name and r["lr"] == lr),
                              key=lambda r: r["start"])
                y = np.array([r["iters_ratio"] for r in mine])
                ax.errorbar([r["start"] for r in mine], y[:, 0], yerr=[y[:, 0] - y[:, 1], y[:, 2] - y[:, 0]],
                            marker="o", capsize=3, label=name)
            ax.axhline(1.0, color="gray", lw=1, ls="--")
            ax.set_title(f"{title}, {'lr ' + format(lr, 'g') if lr != 'best' else 'best lr'}")
            ax.set_xlabel("starting accuracy")
        row[0].set_ylabel("iterations to target / GRPO's")
    axes[0, 0].legend()
    fig.suptitle(f"Tabular stand-in, n = {args.horizon}: below 1, resets reach the target sooner "
                 f"(mean, 95% interval over {args.seeds} seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--start-acc", type=float, nargs="+", default=[0.8, 0.7, 0.57, 0.45, 0.3, 0.2, 0.1],
                        help="starting accuracies, one condition each")
    parser.add_argument("--hard-gap", type=float, default=3.0, help="the hard type's logit starts this much lower")
    parser.add_argument("--hard-place", default="anywhere", choices=sorted(HARD_PLACES),
                        help="where the hard type's steps are: any step (types uniform), or exactly one step "
                             "per chain, always the first or always the last")
    parser.add_argument("--horizon", type=int, default=8, help="n: steps per problem")
    parser.add_argument("--iterations", type=int, default=40, help="updates per run")
    parser.add_argument("--prompts", type=int, default=16, help="prompts per iteration, 8 scored rollouts each")
    parser.add_argument("--lrs", type=float, nargs="+", default=[2, 4, 8, 16, 32], help="learning-rate grid")
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0],
                        help="reset methods: oracle noise q (0 = oracle, 1 = random resets)")
    parser.add_argument("--loss-agg", default="seq-mean", choices=["seq-mean", "token-mean"],
                        help="the loss's average: over each rollout's trained steps, then rollouts (the paper), "
                             "or over all trained steps of the batch")
    parser.add_argument("--seeds", type=int, default=20, help="independent runs per method, condition and lr")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a small sweep for a smoke test")
    parser.add_argument("--out", default=None, help="folder for tabular-results.md and tabular-gain.png; "
                                                    "default docs for the default settings, else runs/tabular")
    args = parser.parse_args(argv)
    if args.quick:
        args.start_acc, args.seeds, args.iterations, args.lrs = [0.6, 0.2], 4, 10, [2, 8]
    if not all(0 < acc < 1 for acc in args.start_acc):
        parser.error(f"--start-acc {' '.join(map(str, args.start_acc))}: each must be between 0 and 1, exclusive.")
    if not all(0 <= q <= 1 for q in args.noise):
        parser.error(f"--noise {' '.join(map(str, args.noise))}: each is a probability, from 0 to 1.")
    if not all(lr > 0 for lr in args.lrs) or args.hard_gap <= 0:
        parser.error("--lrs and --hard-gap must be above 0 (the conditions without a hard type have a gap of 0).")
    if min(args.horizon, args.iterations, args.prompts) < 1 or args.seeds < 2:
        parser.error("--horizon, --iterations and --prompts must be at least 1, and --seeds at least 2 "
                     "(for an interval).")
    return args


def main():
    args = parse_args()
    defaults = vars(parse_args([])) | {"out": args.out}
    out = Path(args.out or ("docs" if vars(args) == defaults else "runs/tabular"))
    began = time.time()
    rows = summarize(simulate(args), args)
    report = (f"Tabular stand-in: n = {args.horizon} steps of 8 types, {args.prompts} prompts x 8 scored rollouts "
              f"per iteration, {args.iterations} iterations, {args.seeds} seeds, lr grid {args.lrs}, {args.loss_agg} loss: "
              f"every method at its best lr, then at every lr against GRPO at the same lr. Target: halfway from the starting accuracy "
              f"to GRPO's final. Mean [95% bootstrap interval over seeds].\n\n" + tables(rows, args))
    out.mkdir(parents=True, exist_ok=True)
    (out / "tabular-results.md").write_text(report)
    print(report)
    if plot(rows, args, out / "tabular-gain.png"):
        print(f"figure: {out / 'tabular-gain.png'}")
    print(f"{time.time() - began:.0f} s")


if __name__ == "__main__":
    main()
