"""RRPO: GRPO with random resets. Only the rollouts of a prompt differ from grpo.py.

With a budget of B scored rollouts per prompt (--group-size, default 8):

    fresh:    y_1  y_2  y_3  ...           sample until the first wrong one, at most --max-fresh
                    |
                  parent (wrong; picks the reset, never trained on)
                    |  steps s_1 .. s_n ; reset step k (uniform in 1..n for RRPO)
                    v
    group 1:  B/2 other fresh solutions            trained on every response token
    group 2:  B/2 suffixes sampled from  prompt + s_1..s_{k-1}   (the parent's exact token ids)
              trained on the suffix tokens only: the shared prefix is context, masked out

    advantages   A_i = (r_i - mean(r_g)) / std(r_g)  within each group g separately
    loss         - mean_i( A_i * mean_{t in trained tokens of i} log pi(y_i,t) )      (grpo.py)

A suffix continues its parent's chain: it is rewarded as a whole solution (prefix + suffix), its
thoughts count on from k, and prefix + suffix share one budget of --max-new-tokens tokens and
--max-thoughts thoughts. Step k itself is resampled, so the suffixes' reward differences are
caused by decisions from step k on. The parent's steps are its thoughts, as recorded while it was
generated. If no wrong solution turns up within --max-fresh attempts, the prompt keeps B/2 of its
(right) fresh solutions and gets B/2 new ones in the same group, which may hold a failure: GRPO,
as in the authors' code (the new ones are sampled in the suffixes' batch). A fresh solution with
no thought at all (an empty output) is a wrong member of group 1, never a parent. `--reset oracle`
resets at the true first wrong step instead, for tasks with a step checker (the built-in toy
task): the credit-assignment oracle of the paper's theory. `--reset start` always resets at step
1, so that group 2 is B/2 more fresh solutions: the buffer with no reset in it, a control that
tells what the buffer costs (a failure spent as the parent, two groups of B/2) from what the
reset's place brings.

Deviations from the authors' code: none in the buffer above. `--reset oracle`, `--oracle-noise`
and `--reset start` are additions, for experiments.

    python rrpo.py                                                    # built-in demo, CPU
    python rrpo.py --model Qwen2.5-1.5B --dataset gsm8k               # one GPU
    torchrun --nproc_per_node 8 rrpo.py --model Qwen2.5-1.5B --dataset gsm8k
"""
import bisect
import dataclasses
from dataclasses import dataclass

import grpo
import localize
import run


@dataclass
class ResetConfig(grpo.Config):
    reset: str = grpo.option("random", "how the reset step is chosen: random (RRPO), self (SRPO), oracle "
                                       "(true first error), start (always step 1: a control)")
    max_fresh: int = grpo.option(12, "fresh attempts per prompt to find a wrong solution before falling "
                                     "back to GRPO; at least --group-size", at_least=2)
    oracle_noise: float = grpo.option(0.0, "with --reset oracle: chance of a uniformly random step instead, "
                                           "to blur the oracle", at_least=0, at_most=1)
    out: str = grpo.option("runs/rrpo", "output folder: metrics.jsonl and checkpoint-{step}/")

    def __post_init__(self):
        super().__post_init__()
        if self.group_size % 2 or self.max_fresh < self.group_size:
            raise ValueError(f"--group-size must be even and --max-fresh >= --group-size (got "
                             f"{self.group_size} and {self.max_fresh}): half the budget goes to each group.")


def fresh_group(i):
    """Group 1 of prompt i: fresh solutions."""
    return 2 * i


def suffix_group(i):
    """Group 2 of prompt i: suffixes from the reset state."""
    return 2 * i + 1


def can_be_parent(rollout):
    """A wrong solution with at least one thought to reset into; an empty one is only wrong."""
    return rollout.reward < 1 and rollout.n_thoughts > 0


def sample_fresh(policy, examples):
    """Fresh scored rollouts per prompt: B/2 + 1 for everyone, then more (up to --max-fresh in
    total) only for prompts that have no parent yet."""
    cfg = policy.cfg
    fresh = [[] for _ in examples]
    pending = list(range(len(examples)))
    for n in (cfg.group_size // 2 + 1, cfg.max_fresh - cfg.group_size // 2 - 1):
        if not pending or n <= 0:
            break
        for i, rollouts in zip(pending, grpo.sample_rollouts(policy, [examples[i] for i in pending], n, pending)):
            fresh[i] += rollouts
        pending = [i for i in pending if not any(map(can_be_parent, fresh[i]))]
    return fresh


def steps_of(policy, parent):
    """(steps, token ends) of a parent: its recorded thoughts, or paragraphs without a delimiter.
    A parent whose thoughts hold no text (special tokens only) is one empty step: reset at k = 1."""
    steps, ends = localize.response_steps(policy.tokenizer, parent.response_ids, parent.thought_ends,
                                          max_steps=policy.cfg.max_thoughts)
    return (steps, ends) if steps else ([""], [len(parent.response_ids)])


def random_resets(policy, examples, parent_steps, rng, diagnostics):
    """RRPO: k uniform in 1..n."""
    return [localize.random_reset_step(len(steps), rng) for steps in parent_steps]


def oracle_resets(policy, examples, parent_steps, rng, diagnostics):
    """CPI-CARO: the true first wrong step, from the task's step checker; with probability
    --oracle-noise a random step instead, which interpolates between oracle and RRPO."""
    if "step_checker" not in examples[0]:
        raise SystemExit("--reset oracle needs a dataset with a step checker, such as --dataset toy.")
    return [localize.random_reset_step(len(steps), rng) if rng.random() < policy.cfg.oracle_noise
            else min(ex["step_checker"](ex, steps) or 1, len(steps)) for ex, steps in zip(examples, parent_steps)]


def start_resets(policy, examples, parent_steps, rng, diagnostics):
    """The control: k = 1, an empty prefix, whatever the parent; the suffixes are fresh solutions."""
    return [1 for _ in parent_steps]


def reset_rollouts(policy, examples, rng, choose_resets=random_resets):
    """The rollout buffer of the diagram above, built for all prompts of a step together:
    one batched phase for fresh solutions, one for choosing resets, one for suffixes (and for the
    new fresh solutions of prompts with no parent)."""
    cfg, half = policy.cfg, policy.cfg.group_size // 2
    fresh = sample_fresh(policy, examples)
    diagnostics = new_diagnostics(fresh, "step_checker" in examples[0])
    rollouts, parents = [], {}  # parents: prompt index -> its parent rollout
    for i, samples in enumerate(fresh):
        parent = next((r for r in samples if can_be_parent(r)), None)
        others = [r for r in samples if r is not parent]
        rollouts += [dataclasses.replace(r, group=fresh_group(i)) for r in others[:half]]
        for r in others[half:]:  # sampled while looking for a parent, not trained on
            policy.remember("fresh", i, r.response_ids, r.finish, r.n_thoughts, r.reward)
        diagnostics["reset_frac"].append(float(parent is not None))
        if parent is not None:
            parents[i] = parent
            policy.remember("parent", i, parent.response_ids, parent.finish, parent.n_thoughts, parent.reward)
    reset_examples = [{**examples[i], "prompt_index": i} for i in parents]
    parent_steps, prefixes, used, reset_steps = [], [], [], []
    if parents:
        parent_steps, parent_ends = zip(*(steps_of(policy, parent) for parent in parents.values()))
        reset_steps = choose_resets(policy, reset_examples, parent_steps, rng, diagnostics)
        # The suffix continues the parent's chain: steps 1..k-1 (its exact ids) are context, and
        # prefix + suffix share one budget of tokens and of thoughts. The thoughts the prefix used
        # are k - 1, or, when the steps are paragraphs (no delimiter), the recorded thoughts it covers.
        prefixes = [parent.response_ids[:ends[k - 2]] if k > 1 else []
                    for parent, ends, k in zip(parents.values(), parent_ends, reset_steps)]
        used = [bisect.bisect_right(parent.thought_ends, len(prefix))
                for parent, prefix in zip(parents.values(), prefixes)]
    # No parent: keep B/2 of the (right) fresh solutions and sample B/2 more into the same group,
    # so that it can still hold a failure and carry signal. They start from the bare prompt with the
    # whole budget, in the suffixes' generate call: one sequential phase less.
    unfailed = [i for i in range(len(examples)) if i not in parents]
    starts = reset_examples + [examples[i] for i in unfailed]
    prefixes, used = prefixes + [[]] * len(unfailed), used + [0] * len(unfailed)
    chains = policy.sample([ex["prompt_ids"] + prefix for ex, prefix in zip(starts, prefixes)], half,
                           max_new_tokens=[cfg.max_new_tokens - len(prefix) for prefix in prefixes],
                           max_thoughts=[cfg.max_thoughts - n for n in used])
    # Each suffix is judged as a whole solution: the parent's prefix followed by the suffix.
    scores = iter(policy.score([ex for ex in starts for _ in range(half)],
                               [prefix + chain.ids for prefix, group in zip(prefixes, chains) for chain in group]))
    for i, example, prefix, group, steps, k, n in zip(parents, reset_examples, prefixes, chains, parent_steps,
                                                      reset_steps, used):
        group_rollouts = [grpo.Rollout(example["prompt_ids"] + prefix, chain.ids, next(scores), suffix_group(i),
                                       chain.finish, i, chain.thought_ends, len(prefix), k, n)
                          for chain in group]
        rollouts += group_rollouts
        record_reset(diagnostics, example, steps, k, [r.reward for r in group_rollouts])
    for i, example, group in zip(unfailed, starts[len(parents):], chains[len(parents):]):
        rollouts += [grpo.Rollout(example["prompt_ids"], chain.ids, next(scores), fresh_group(i), chain.finish, i,
                                  chain.thought_ends) for chain in group]
    return rollouts, diagnostics


def new_diagnostics(fresh, has_step_checker):
    """The per-step diagnostics of the reset buffer, averaged over prompts (or resets) in the log."""
    diagnostics = {"reset_frac": [], "reset_step_mean": [], "reset_pos_mean": [], "suffix_acc": [],
                   "fresh_acc": [r.reward for samples in fresh for r in samples],
                   "fresh_attempts_mean": [len(samples) for samples in fresh]}
    if has_step_checker:
        for name in ("loc_exact", "loc_early", "loc_late", "suffix_acc_clean_prefix", "suffix_acc_wrong_prefix"):
            diagnostics[name] = []
    return diagnostics


def record_reset(diagnostics, example, steps, k, suffix_rewards):
    """Where the reset landed and how its suffixes did; with a step checker (the toy task), also
    against the true first error: localization exact, early or late, and correction rate from a
    clean prefix (the first error at step k or later) against a wrong one."""
    diagnostics["reset_step_mean"].append(k)
    diagnostics["reset_pos_mean"].append(k / len(steps))
    diagnostics["suffix_acc"].extend(suffix_rewards)
    if "step_checker" in example:
        first_error = example["step_checker"](example, steps) or len(steps)
        diagnostics["loc_exact"].append(float(k == first_error))
        diagnostics["loc_early"].append(float(k < first_error))
        diagnostics["loc_late"].append(float(k > first_error))
        clean = "suffix_acc_clean_prefix" if k <= first_error else "suffix_acc_wrong_prefix"
        diagnostics[clean].extend(suffix_rewards)


def resets_by_name(name: str):
    """The reset rule a config names; srpo.py adds "self"."""
    choices = {"random": random_resets, "oracle": oracle_resets, "start": start_resets}
    if name not in choices:
        raise SystemExit(f"--reset {name}: rrpo.py knows {sorted(choices)}; use srpo.py for self resets.")
    return choices[name]


if __name__ == "__main__":
    cfg = run.parse_config(ResetConfig)
    choose = resets_by_name(cfg.reset)
    grpo.train(cfg, lambda policy, examples, rng: reset_rollouts(policy, examples, rng, choose))
