"""The cost of a training step: GRPO, RRPO and SRPO side by side, same model, prompts and budget.

For each repeat, the three methods run one full step (rollouts and update) on the same prompts, in
a rotating order, from the same starting weights; the table reports the median time per phase and
the tokens generated. RRPO and SRPO sample extra sequences that GRPO does not: the parent search,
the localization pass (SRPO) and suffixes that start mid-solution. Their phases run one after the
other, so the table also counts sequential decode steps: the sum, over the step's `generate` calls,
of the longest response of each. Where decoding is bound by memory bandwidth rather than compute (a
GPU at small batch), a call's time follows its decode steps, not its rows. A second count says what
overlapping the phases could save: the decode steps of the step if each prompt's next phase began
as soon as its own previous phase ended (as continuous batching could schedule them), with room for
every row at once, which is the longest chain of one prompt's phases.

With --trl, TRL's GRPOTrainer runs the same work (same model, prompts, group size, token budget,
one optimizer step per batch, the same --beta) and its steps are timed the same way; its first step
is a warm-up and is not counted. TRL always runs the backward pass, while ours skips rollouts with
zero advantage (and the whole update when every group has equal rewards): with --beta > 0 both
train on every rollout, which is equal work whatever the rewards. With --sampling, the table compares
ways to sample the rollouts of a step instead: plain `generate` with every prompt repeated n times,
ours (`generation.sample`: each prompt prefilled once) with a dynamic, a static and a paged KV cache
(transformers' continuous batching), and plain `generate` with a static cache. On a GPU,
`generate` compiles the decoding step for a static cache (torch.compile); an untimed call on the
same shapes comes first. With --kv-cache static or paged (or --caches dynamic,static,paged, which
times each method with each), each method's steps are preceded by --warmup-repeats untimed ones,
for the same reason. The caches sample from the same distribution but not the same draws.

    python benchmark.py                                   # the toy model, CPU
    python benchmark.py --model path/to/SmolLM2-135M-Instruct.Q4_1.gguf --dataset gsm8k.jsonl --trl
    python benchmark.py --model path/to/model --dataset gsm8k.jsonl --sampling
"""
import copy
import dataclasses
import random
import statistics
import tempfile
import time
from dataclasses import dataclass

import torch

import data
import generation
import grpo
import rrpo
import run
import srpo


def self_resets(policy, examples, parent_steps, rng, diagnostics):
    """srpo.self_resets, first telling a PhaseLog which prompt each localization request is for."""
    policy.localizing = [example["prompt_index"] for example in examples]
    return srpo.self_resets(policy, examples, parent_steps, rng, diagnostics)


METHODS = {
    "grpo": grpo.grpo_rollouts,
    "rrpo": lambda policy, examples, rng: rrpo.reset_rollouts(policy, examples, rng, rrpo.random_resets),
    "srpo": lambda policy, examples, rng: rrpo.reset_rollouts(policy, examples, rng, self_resets),
}


class PhaseLog(grpo.Policy):
    """A policy that notes, for each sample call, which of the step's prompts each of its prompts
    works for and the longest response that prompt got: per prompt, its chain of phases."""

    def __init__(self, *args):
        super().__init__(*args)
        self.examples, self.localizing, self.chains = [], None, []

    def sample(self, prompts, n, *args, thoughts=True, **kwargs):
        chains = super().sample(prompts, n, *args, thoughts=thoughts, **kwargs)
        # A localization request is for the prompt srpo names; every other call's prompts begin
        # with the step prompt they solve (alone, or followed by a parent's prefix).
        owners = self.localizing if not thoughts else [owner(prompt, self.examples) for prompt in prompts]
        self.chains.append([(i, max((len(chain.ids) for chain in group), default=0))
                            for i, group in zip(owners, chains)])
        return chains

    def overlapped_decode_steps(self) -> int | None:
        """The decode steps of the step's rollouts if each prompt's phases ran back to back with
        room for every row at once: the longest sum, over one prompt's calls, of its longest response.
        None when the step holds the same prompt twice: their calls cannot be told apart."""
        if len({tuple(example["prompt_ids"]) for example in self.examples}) < len(self.examples):
            return None
        per_prompt = [0] * len(self.examples)
        for call in self.chains:
            for i, longest in call:
                per_prompt[i] += longest
        return max(per_prompt, default=0)


def owner(prompt: list[int], examples: list[dict]) -> int:
    """The index of the example whose prompt `prompt` begins with (the longest, if several do)."""
    matches = [(len(ex["prompt_ids"]), i) for i, ex in enumerate(examples)
               if prompt[:len(ex["prompt_ids"])] == ex["prompt_ids"]]
    if not matches:
        raise ValueError("a sampled prompt begins with none of the step's prompts")
    return max(matches)[1]


@dataclass
class BenchConfig(srpo.SRPOConfig):
    repeats: int = grpo.option(3, "steps measured per method; the table shows medians", at_least=1)
    methods: str = grpo.option("grpo,rrpo,srpo", "methods to time, comma-separated")
    trl: bool = grpo.option(False, "also time TRL's GRPOTrainer on the same work (pip install trl)")
    sampling: bool = grpo.option(False, "compare ways of sampling a step's rollouts instead of steps")
    caches: str | None = grpo.option(None, "KV caches to time each method with, comma-separated: dynamic, "
                                           "static, paged; default: --kv-cache")
    warmup_repeats: int | None = grpo.option(None, "untimed steps per method before the timed ones; default 1 "
                                                   "with a static or paged cache (compilation), else 0", at_least=0)


def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(cfg: BenchConfig) -> dict:
    methods, caches = cfg.methods.split(","), (cfg.caches or cfg.kv_cache).split(",")
    if unknown := set(methods) - set(METHODS):
        raise SystemExit(f"--methods: unknown {sorted(unknown)}; choose among {', '.join(METHODS)}.")
    if unknown := set(caches) - {"dynamic", "static", "paged"}:
        raise SystemExit(f"--caches: unknown {sorted(unknown)}; choose among dynamic, static, paged.")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = run.load_model(cfg, device)
    ref_model = run.load_model(cfg, device)[0].eval().requires_grad_(False) if cfg.beta > 0 else None
    start_weights = copy.deepcopy(model.state_dict())
    examples, _ = data.tokenize_prompts(run.load_examples(cfg.dataset, True, cfg), tokenizer, cfg.max_new_tokens,
                                        getattr(model.config, "max_position_embeddings", 10**9))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    # one row per method and cache: "grpo", or "grpo, static" when caches are compared
    runs = {name if len(caches) == 1 else f"{name}, {cache}": (name, cache) for cache in caches for name in methods}
    policies = {cache: PhaseLog(model, tokenizer, dataclasses.replace(cfg, kv_cache=cache)) for cache in caches}
    results = {row: {"rollout_s": [], "train_s": [], "tokens": [], "decode_steps": [], "overlapped_steps": []}
               for row in runs}
    warmup = grpo.or_default(cfg.warmup_repeats, 1 if {"static", "paged"} & set(caches) else 0)
    for repeat in range(-warmup, cfg.repeats):  # repeats below 0 are not timed
        batch = run.step_examples(examples, repeat + 1, cfg, 0, 1)
        rows = list(runs)[repeat % len(runs):] + list(runs)[:repeat % len(runs)]
        for row in rows:
            name, cache = runs[row]
            policy = policies[cache]
            model.load_state_dict(start_weights)
            torch.manual_seed(max(repeat, 0))
            policy.tokens_generated = policy.decode_steps = 0
            policy.examples, policy.chains, policy.localizing = batch, [], None
            synchronize(device)
            begin = time.perf_counter()
            model.eval()
            rollouts, _ = METHODS[name](policy, batch, random.Random(repeat))
            middle = time.perf_counter()
            model.train()
            advantages = grpo.group_advantages(torch.tensor([r.reward for r in rollouts]),
                                               torch.tensor([r.group for r in rollouts]))
            grpo.train_on_rollouts(model, ref_model, optimizer, rollouts, advantages, cfg, tokenizer.pad_token_id, device)
            synchronize(device)
            if repeat < 0:
                continue
            results[row]["rollout_s"].append(middle - begin)
            results[row]["train_s"].append(time.perf_counter() - middle)
            results[row]["tokens"].append(policy.tokens_generated)
            results[row]["decode_steps"].append(policy.decode_steps)
            results[row]["overlapped_steps"].append(policy.overlapped_decode_steps())
    if cfg.trl:
        model.load_state_dict(start_weights)
        results["trl"] = trl_steps(cfg, model, tokenizer, examples, device)
    return {name: {key: None if None in values else statistics.median(values) for key, values in r.items()}
            for name, r in results.items()}


def trl_steps(cfg: BenchConfig, model, tokenizer, examples: list[dict], device) -> dict:
    """TRL's GRPOTrainer on the prompts our steps use: per step its time and tokens generated."""
    try:
        from datasets import Dataset
        from transformers import TrainerCallback
        from trl import GRPOConfig, GRPOTrainer
    except ImportError:
        raise SystemExit("--trl needs TRL: pip install trl") from None

    batches = [run.step_examples(examples, step, cfg, 0, 1) for step in range(cfg.repeats + 1)]
    problems = [ex for batch in batches for ex in batch]  # in TRL's order: it does not shuffle here
    rows = [{"prompt": tokenizer.decode(ex["prompt_ids"]), "index": i} for i, ex in enumerate(problems)]

    def reward(prompts, completions, index, **kwargs):  # the same answer checking as ours
        return data.rewards([problems[i] for i in index], completions)

    class Timer(TrainerCallback):
        def __init__(self):
            self.times, self.tokens, self.begin = [], [], 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            synchronize(device)
            self.begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            synchronize(device)
            self.times.append(time.perf_counter() - self.begin)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "completions/mean_length" in logs:
                self.tokens.append(logs["completions/mean_length"] * cfg.prompts_per_step * cfg.group_size)

    timer = Timer()
    with tempfile.TemporaryDirectory() as out:
        if cfg.beta > 0:  # TRL loads its reference model from the model's folder, which a .gguf lacks
            model.save_pretrained(f"{out}/reference")
            model.config._name_or_path = f"{out}/reference"
        # One optimizer step per batch of prompts_per_step x group_size completions, generated
        # at once; micro-batches of one group, as our --micro-batch does by default.
        args = GRPOConfig(
            output_dir=out, max_steps=cfg.repeats + 1, learning_rate=cfg.lr, per_device_train_batch_size=cfg.group_size,
            gradient_accumulation_steps=cfg.prompts_per_step, num_generations=cfg.group_size,
            max_completion_length=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, beta=cfg.beta,
            loss_type="grpo", logging_steps=1, report_to=[], save_strategy="no", use_cpu=device.type != "cuda",
            bf16=device.type == "cuda", gradient_checkpointing=run.checkpointing_on(model),
            shuffle_dataset=False, seed=cfg.seed)
        trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=Dataset.from_list(rows),
                              processing_class=tokenizer, callbacks=[timer])
        trainer.train()
    # The first step is a warm-up (our methods' first repeats run after the model's first forward too).
    # TRL's timing covers the whole step: generation and update are not separated.
    return {"rollout_s": [0.0] * cfg.repeats, "train_s": timer.times[1:], "tokens": timer.tokens[1:]}


def sampling_speeds(cfg: BenchConfig) -> dict:
    """Seconds to sample one step's rollouts (prompts_per_step x group_size, greedy so every way
    makes the same tokens, up to --max-new-tokens) and decode steps per second, for each way of
    sampling, with n = 1 (prompts_per_step distinct prompts, as in evaluation) and n = group_size."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = run.load_model(cfg, device)
    model.eval()
    examples, _ = data.tokenize_prompts(run.load_examples(cfg.dataset, True, cfg), tokenizer, cfg.max_new_tokens,
                                        getattr(model.config, "max_position_embeddings", 10**9))
    prompts = [ex["prompt_ids"] for ex in run.step_examples(examples, 1, cfg, 0, 1)]
    budget = cfg.max_new_tokens

    def ours(batch, n, cache="dynamic"):  # returns the decode steps it took: its longest response
        chains = generation.sample(model, tokenizer, batch, n, budget, greedy=True, cache=cache)
        return max(len(chain.ids) for group in chains for chain in group)

    def plain(batch, n, **extra):
        ids, mask = generation.left_pad([p for p in batch for _ in range(n)], tokenizer.pad_token_id, device)
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=budget,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=sorted(eos), **extra)
        return out.shape[1] - ids.shape[1]

    eos = generation.eos_ids(model, tokenizer)

    compiled = ", compiled" if device.type == "cuda" else ""
    ways = {"plain generate": plain, "ours (prefix shared)": ours,
            f"ours, static cache{compiled}": lambda batch, n: ours(batch, n, "static"),
            f"generate, static cache{compiled}": lambda batch, n: plain(batch, n, cache_implementation="static"),
            "ours, paged (continuous batching)": lambda batch, n: ours(batch, n, "paged")}
    table = {}
    for n in (1, cfg.group_size):
        times, steps = {name: [] for name in ways}, {}
        for name, way in ways.items():
            way(prompts, n)  # warm-up, on the same shapes: a static cache compiles for them
        for repeat in range(cfg.repeats):  # the ways take turns, in a rotating order
            names = list(ways)[repeat % len(ways):] + list(ways)[:repeat % len(ways)]
            for name in names:
                synchronize(device)
                begin = time.perf_counter()
                steps[name] = ways[name](prompts, n)
                synchronize(device)
                times[name].append(time.perf_counter() - begin)
        for name, seconds in times.items():
            median = statistics.median(seconds)
            table[(name, n)] = {"s": median, "steps_per_s": steps[name] / median, "rows": len(prompts) * n}
    return table


if __name__ == "__main__":
    cfg = run.parse_config(BenchConfig)
    if cfg.sampling:
        speeds = sampling_speeds(cfg)
        print(f"\nsampling up to {cfg.max_new_tokens} tokens per row, greedy, median of {cfg.repeats}:\n")
        print("| way | n per prompt | rows | seconds | decode steps/s | tokens/s |")
        print("| --- | --- | --- | --- | --- | --- |")
        for (name, n), r in speeds.items():
            print(f"| {name} | {n} | {r['rows']} | {r['s']:.2f} | {r['steps_per_s']:.1f} | "
                  f"{r['steps_per_s'] * r['rows']:.0f} |")
        raise SystemExit
    table = measure(cfg)
    base = next(r["rollout_s"] + r["train_s"] for r in table.values())
    print(f"\none step, {cfg.prompts_per_step} prompts x {cfg.group_size} scored rollouts, median of {cfg.repeats}:\n")
    print(f"| method | rollout s | update s | step s | vs {list(table)[0]} | tokens generated | tokens/s of step "
          "| sequential decode steps | the same, phases overlapped per prompt |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in table.items():
        step = r["rollout_s"] + r["train_s"]
        phases = "- | -" if name == "trl" else f"{r['rollout_s']:.2f} | {r['train_s']:.2f}"  # TRL's are not split
        steps = f"{r['decode_steps']:.0f} | " if "decode_steps" in r else "- | "
        steps += "-" if r.get("overlapped_steps") is None else f"{r['overlapped_steps']:.0f}"
        print(f"| {name} | {phases} | {step:.2f} | {step / base:.2f}x | {r['tokens']:.0f} | {r['tokens'] / step:.0f} "
              f"| {steps} |")
