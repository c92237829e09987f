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

A suffix is rewarded as a whole solution (prefix + suffix). Step k itself is resampled, so the
suffixes' reward differences are caused by decisions from step k on. If no wrong solution turns
up within --max-fresh attempts, the prompt gets B fresh solutions in one group: exactly GRPO.
`--reset oracle` resets at the true first wrong step instead, for tasks with a step checker
(the built-in toy task): the credit-assignment oracle of the paper's theory.

    python rrpo.py                                                    # built-in demo, CPU
    python rrpo.py --model Qwen2.5-1.5B --dataset gsm8k               # one GPU
    torchrun --nproc_per_node 8 rrpo.py --model Qwen2.5-1.5B --dataset gsm8k
"""
from dataclasses import dataclass

import grpo
import localize


@dataclass
class ResetConfig(grpo.Config):
    reset: str = "random"  # how the reset step is chosen: random (RRPO), self (SRPO), oracle (true first error)
    max_fresh: int = 12  # fresh attempts per prompt to find a wrong solution before falling back to GRPO
    max_steps: int = 20  # a parent's steps beyond this many are merged into the last one
    oracle_noise: float = 0.0  # with --reset oracle: chance of a uniformly random step instead, to blur the oracle
    out: str = "runs/rrpo"  # output folder: metrics.jsonl and checkpoint-{step}/

    def __post_init__(self):
        super().__post_init__()
        if self.group_size % 2 or self.max_fresh < self.group_size:
            raise SystemExit(f"--group-size must be even and --max-fresh >= --group-size (got "
                             f"{self.group_size} and {self.max_fresh}): half the budget goes to each group.")


def sample_fresh(policy, examples):
    """Fresh (response ids, reward) per prompt: B/2 + 1 for everyone, then more (up to
    --max-fresh in total) only for prompts that have no wrong solution yet."""
    cfg = policy.cfg
    fresh = [[] for _ in examples]
    pending = list(range(len(examples)))
    for n in (cfg.group_size // 2 + 1, cfg.max_fresh - cfg.group_size // 2 - 1):
        if not pending or n <= 0:
            break
        groups = policy.sample([examples[i]["prompt_ids"] for i in pending], n)
        flat = [(i, ids) for i, responses in zip(pending, groups) for ids in responses]
        scores = policy.score([examples[i] for i, _ in flat], [ids for _, ids in flat])
        for (i, ids), score in zip(flat, scores):
            fresh[i].append((ids, score))
        pending = [i for i in pending if all(score == 1 for _, score in fresh[i])]
    return fresh


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


def reset_rollouts(policy, examples, rng, choose_resets=random_resets):
    """The rollout buffer of the diagram above, built for all prompts of a step together:
    one batched phase for fresh solutions, one for choosing resets, one for suffixes."""
    cfg, half = policy.cfg, policy.cfg.group_size // 2
    fresh = sample_fresh(policy, examples)
    diagnostics = {"reset_frac": [], "reset_step_mean": [], "reset_pos_mean": [], "suffix_acc": [],
                   "fresh_acc": [score for samples in fresh for _, score in samples],
                   "fresh_attempts_mean": [len(samples) for samples in fresh]}
    if "step_checker" in examples[0]:
        for name in ("loc_exact", "loc_early", "loc_late", "suffix_acc_clean_prefix", "suffix_acc_wrong_prefix"):
            diagnostics[name] = []
    rollouts, resets = [], []  # resets: (example index, parent ids)
    for i, (example, samples) in enumerate(zip(examples, fresh)):
        parent = next((j for j, (_, score) in enumerate(samples) if score < 1), None)
        kept = [s for j, s in enumerate(samples) if j != parent][:half if parent is not None else cfg.group_size]
        rollouts += [grpo.Rollout(example["prompt_ids"], ids, score, 2 * i, policy.truncated(ids))
                     for ids, score in kept]
        diagnostics["reset_frac"].append(float(parent is not None))
        if parent is not None:
            resets.append((i, samples[parent][0]))
    if not resets:
        return rollouts, diagnostics

    reset_examples = [examples[i] for i, _ in resets]
    parent_text = [policy.text(ids) for _, ids in resets]
    # A parent that is only an end-of-sequence token has no text: one empty step, reset at k = 1.
    parent_steps = [localize.split_steps(text, max_steps=cfg.max_steps) or [text] for text in parent_text]
    reset_steps = choose_resets(policy, reset_examples, parent_steps, rng, diagnostics)
    prefixes = []
    for (_, parent_ids), steps, k in zip(resets, parent_steps, reset_steps):
        ends = localize.step_token_ends(policy.tokenizer, parent_ids, max_steps=cfg.max_steps)
        prefixes.append(parent_ids[:ends[k - 2]] if k > 1 else [])  # steps 1..k-1, token-exact
        diagnostics["reset_step_mean"].append(k)
        diagnostics["reset_pos_mean"].append(k / len(steps))

    contexts = [ex["prompt_ids"] + prefix for ex, prefix in zip(reset_examples, prefixes)]
    suffixes = policy.sample(contexts, half)
    # Each suffix is judged as a whole solution: the parent's prefix followed by the suffix.
    scores = policy.score([ex for ex in reset_examples for _ in range(half)],
                          [prefix + suffix for prefix, group in zip(prefixes, suffixes) for suffix in group])
    for n, ((i, _), example, context, group, steps, k) in enumerate(
            zip(resets, reset_examples, contexts, suffixes, parent_steps, reset_steps)):
        for suffix, score in zip(group, scores[n * half:(n + 1) * half]):
            rollouts.append(grpo.Rollout(context, suffix, score, 2 * i + 1, policy.truncated(suffix)))
            diagnostics["suffix_acc"].append(score)
        if "step_checker" in example:
            first_error = example["step_checker"](example, steps) or len(steps)
            diagnostics["loc_exact"].append(float(k == first_error))
            diagnostics["loc_early"].append(float(k < first_error))
            diagnostics["loc_late"].append(float(k > first_error))
            # A prefix s_1..s_{k-1} is clean when the first error is at step k or later.
            clean = "suffix_acc_clean_prefix" if k <= first_error else "suffix_acc_wrong_prefix"
            diagnostics[clean].extend(r.reward for r in rollouts[-half:])
    return rollouts, diagnostics


def resets_by_name(name: str):
    """The reset rule a config names; srpo.py adds "self"."""
    choices = {"random": random_resets, "oracle": oracle_resets}
    if name not in choices:
        raise SystemExit(f"--reset {name}: rrpo.py knows {sorted(choices)}; use srpo.py for self resets.")
    return choices[name]


if __name__ == "__main__":
    cfg = grpo.parse_config(ResetConfig)
    choose = resets_by_name(cfg.reset)
    grpo.train(cfg, lambda policy, examples, rng: reset_rollouts(policy, examples, rng, choose))
