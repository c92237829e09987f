"""SRPO: GRPO with self resets. The rollout buffer is RRPO's (rrpo.py); only the reset step differs:
the policy itself points at the step where its failed solution went wrong.

    fresh:    y_1  y_2  ...  parent (first wrong one; never trained on)
                               |  shown to the same model, numbered: "Step 1: ... Step n: ..."
                               |  "the final answer is wrong; which step did the error start in?
                               |   do not re-solve; end with \\boxed{k}"   (temperature 0.3)
                               v
                             k = the last \\boxed{k} with k in 1..n, else the last "Step k", else 1
    group 1:  B/2 other fresh solutions                     trained on every response token
    group 2:  B/2 suffixes from  prompt + s_1..s_{k-1}      trained on suffix tokens only

    advantages   A_i = (r_i - mean(r_g)) / std(r_g)  within each group g separately
    loss         - mean_i( A_i * mean_{t in trained tokens of i} log pi(y_i,t) )      (grpo.py)

Step k is resampled: if the model localized its error well, the suffixes restart from a clean
prefix and their reward differences credit the decision at step k. Localization tokens are never
trained on. `--reset random` gives RRPO and `--reset oracle` the true first error (toy task).

Deviations from the authors' code: the wording of the localization request is ours (PAPER.md
section 4 gives its content, not its text). As theirs, it is a chat-template generation at
temperature 0.3 of up to --loc-max-new-tokens (4,096 for a pretrained model) of free text.

    python srpo.py                                                    # built-in demo, CPU
    python srpo.py --model Qwen2.5-1.5B --dataset gsm8k               # one GPU
    torchrun --nproc_per_node 8 srpo.py --model Qwen2.5-1.5B --dataset gsm8k
"""
from dataclasses import dataclass

import data
import grpo
import localize
import run
import rrpo


@dataclass
class SRPOConfig(rrpo.ResetConfig):
    reset: str = grpo.option("self", "how the reset step is chosen: self (SRPO), random (RRPO), oracle "
                                     "(true first error), start (always step 1: a control)")
    loc_temperature: float = grpo.option(0.3, "sampling temperature of the localization pass", above=0)
    loc_max_new_tokens: int | None = grpo.option(None, "length cap of the localization reply; default 1024 "
                                                       "for the toy model, else 4096 (the paper)", at_least=1)
    out: str = grpo.option("runs/srpo", "output folder: metrics.jsonl and checkpoint-{step}/")

    def __post_init__(self):
        super().__post_init__()
        self.loc_max_new_tokens = grpo.or_default(self.loc_max_new_tokens, 1024 if run.is_baby_model(self.model) else 4096)


def self_resets(policy, examples, parent_steps, rng, diagnostics):
    """Ask the policy, in one batched call, where each failed solution went wrong."""
    cfg, tokenizer = policy.cfg, policy.tokenizer
    prompts = [tokenizer(data.format_chat(tokenizer, localize.localization_prompt(ex["question"], steps)),
                         add_special_tokens=False).input_ids for ex, steps in zip(examples, parent_steps)]
    # A localization reply is free text, not a chain of thoughts: it ends at eos or at its cap.
    replies = policy.sample(prompts, 1, max_new_tokens=cfg.loc_max_new_tokens, temperature=cfg.loc_temperature,
                            thoughts=False)
    reset_steps = []
    for (reply,), example, steps in zip(replies, examples, parent_steps):
        k = localize.parse_error_step_or_none(policy.text(reply.ids), len(steps))
        diagnostics.setdefault("loc_parse_fail_frac", []).append(float(k is None))
        diagnostics.setdefault("loc_len_mean", []).append(len(reply.ids))
        policy.remember("localization", example.get("prompt_index", 0), reply.ids, reply.finish)
        reset_steps.append(k or 1)
    return reset_steps


if __name__ == "__main__":
    cfg = run.parse_config(SRPOConfig)
    choose = self_resets if cfg.reset == "self" else rrpo.resets_by_name(cfg.reset)
    grpo.train(cfg, lambda policy, examples, rng: rrpo.reset_rollouts(policy, examples, rng, choose))
