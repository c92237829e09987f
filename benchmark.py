"""The cost of a training step: GRPO, RRPO and SRPO side by side, same model, prompts and budget.

For each repeat, the three methods run one full step (rollouts and update) on the same prompts, in
a rotating order, from the same starting weights; the table reports the median time per phase and
the tokens generated. RRPO and SRPO sample extra sequences that GRPO does not: the parent search,
the localization pass (SRPO) and suffixes that start mid-solution.

    python benchmark.py                                   # the toy model, CPU
    python benchmark.py --model path/to/SmolLM2-135M-Instruct.Q4_1.gguf --dataset gsm8k.jsonl
"""
import copy
import random
import statistics
import time
from dataclasses import dataclass

import torch

import data
import grpo
import rrpo
import run
import srpo

METHODS = {
    "grpo": grpo.grpo_rollouts,
    "rrpo": lambda policy, examples, rng: rrpo.reset_rollouts(policy, examples, rng, rrpo.random_resets),
    "srpo": lambda policy, examples, rng: rrpo.reset_rollouts(policy, examples, rng, srpo.self_resets),
}


@dataclass
class BenchConfig(srpo.SRPOConfig):
    repeats: int = grpo.option(3, "steps measured per method; the table shows medians", at_least=1)


def measure(cfg: BenchConfig) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = run.load_model(cfg, device)
    start_weights = copy.deepcopy(model.state_dict())
    examples, _ = data.tokenize_prompts(run.load_examples(cfg.dataset, True, cfg), tokenizer, cfg.max_new_tokens,
                                        getattr(model.config, "max_position_embeddings", 10**9))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    policy = grpo.Policy(model, tokenizer, cfg)
    results = {name: {"rollout_s": [], "train_s": [], "tokens": []} for name in METHODS}
    for repeat in range(cfg.repeats):
        batch = run.step_examples(examples, repeat + 1, cfg, 0, 1)
        names = list(METHODS)[repeat % 3:] + list(METHODS)[:repeat % 3]
        for name in names:
            model.load_state_dict(start_weights)
            torch.manual_seed(repeat)
            policy.tokens_generated = 0
            if device.type == "cuda":
                torch.cuda.synchronize()
            begin = time.perf_counter()
            model.eval()
            rollouts, _ = METHODS[name](policy, batch, random.Random(repeat))
            middle = time.perf_counter()
            model.train()
            advantages = grpo.group_advantages(torch.tensor([r.reward for r in rollouts]),
                                               torch.tensor([r.group for r in rollouts]))
            grpo.train_on_rollouts(model, None, optimizer, rollouts, advantages, cfg, tokenizer.pad_token_id, device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            results[name]["rollout_s"].append(middle - begin)
            results[name]["train_s"].append(time.perf_counter() - middle)
            results[name]["tokens"].append(policy.tokens_generated)
    return {name: {key: statistics.median(values) for key, values in r.items()} for name, r in results.items()}


if __name__ == "__main__":
    cfg = run.parse_config(BenchConfig)
    table = measure(cfg)
    base = table["grpo"]["rollout_s"] + table["grpo"]["train_s"]
    print(f"\none step, {cfg.prompts_per_step} prompts x {cfg.group_size} scored rollouts, median of {cfg.repeats}:\n")
    print("| method | rollout s | update s | step s | vs GRPO | tokens generated |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, r in table.items():
        step = r["rollout_s"] + r["train_s"]
        print(f"| {name} | {r['rollout_s']:.2f} | {r['train_s']:.2f} | {step:.2f} | {step / base:.2f}x | "
              f"{r['tokens']:.0f} |")
