"""Running a trainer: models, examples, processes, checkpoints, logs and the command line.
Plumbing: not needed to understand GRPO, RRPO or SRPO; grpo.train() calls it.

- models: hub ids, short names, local folders and GGUF files (`load_model`);
- examples: the toy task, code problems or a dataset, with evaluation problems held out
  (`load_examples`, `train_and_eval_examples`), and which prompts a process gets at each step;
- processes: one per GPU under torchrun (`compute_init`, `all_sum`);
- checkpoints (written whole or not at all), `--resume`, the metrics log, rollout dumps, Ctrl-C;
- `parse_config`: a config dataclass filled from the command line, each field's help its --help.
"""
import argparse
import dataclasses
import json
import math
import os
import random
import shutil
import signal
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

import data


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


HUB_ORGS = {"Qwen2.5": "Qwen", "Qwen3": "Qwen", "Qwen2": "Qwen", "SmolLM2": "HuggingFaceTB",
            "SmolLM3": "HuggingFaceTB", "Llama-3.2": "meta-llama", "Llama-3.1": "meta-llama",
            "OLMo-2": "allenai", "Olmo-3": "allenai", "gemma-3": "google", "Phi-4": "microsoft",
            "DeepSeek-R1-Distill": "deepseek-ai"}


def resolve_model_name(name: str) -> str:
    """Short names to hub ids: resolve_model_name("Qwen2.5-1.5B") == "Qwen/Qwen2.5-1.5B"."""
    if "/" in name or Path(name).exists():
        return name
    for family, org in HUB_ORGS.items():
        if name.lower().startswith(family.lower()):
            return f"{org}/{name}"
    raise SystemExit(f"Unknown model '{name}'. Pass a full hub id (for example 'Qwen/{name}' or "
                     f"'HuggingFaceTB/{name}'), a local folder, or a .gguf file.")


def load_tokenizer(name: str, **extra):
    """AutoTokenizer, except for a tokenizer saved as the generic TokenizersBackend (one built in
    code, like the toy's): transformers 5 loads it from a Qwen2 folder as Qwen2Tokenizer, whose own
    pre-tokenizer replaces the saved one and changes the ids."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    config = Path(name) / "tokenizer_config.json"
    if config.is_file() and json.loads(config.read_text()).get("tokenizer_class") == "TokenizersBackend":
        return PreTrainedTokenizerFast.from_pretrained(name, **extra)
    return AutoTokenizer.from_pretrained(name, **extra)


def load_model(cfg, device, path: Path | None = None):
    """The policy and its tokenizer (from `path`, a checkpoint, instead of cfg.model if given).
    Left padding: generation appends on the right."""
    import transformers
    from transformers import AutoModelForCausalLM

    if cfg.model == "toy" and path is None:
        import toy  # builds its tokenizer and model in code: imported only for the toy model

        model, tokenizer = toy.load_baby_model()
    else:
        name, extra, model_extra = resolve_model_name(str(path or cfg.model)), {}, {}
        if name.endswith(".gguf"):
            name, extra = str(Path(name).parent), {"gguf_file": Path(name).name}
            if hasattr(transformers, "GgufConfig"):  # else recent versions may keep untrainable GGUF blocks
                model_extra = {"quantization_config": transformers.GgufConfig(dequantize=True)}
        try:
            tokenizer = load_tokenizer(name, **extra)
            model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32, **extra, **model_extra)
        except (OSError, ValueError) as error:
            raise SystemExit(f"Cannot load the model '{path or cfg.model}': {error}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model.to(device=device, dtype=getattr(torch, cfg.dtype))
    if cfg.grad_checkpointing:  # renamed activation_checkpointing_enable in recent transformers
        enable = getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)
        enable()
    return model, tokenizer


# ---------------------------------------------------------------------------------------------
# Examples
# ---------------------------------------------------------------------------------------------


def load_examples(name: str, train: bool, cfg) -> list[dict]:
    """Examples as dicts with "question" and a gold "answer" (or "tests" for code problems)."""
    if name == "toy":
        import toy

        # The eval problems do not depend on --seed, so runs with different seeds are comparable.
        examples = toy.make_examples(5000, seed=cfg.seed) if train else toy.make_examples(500, seed=10**6)
        return [dict(example, step_checker=toy.first_wrong_step) for example in examples]
    if name in ("code", "lcb"):
        import code_tasks

        return code_tasks.builtin_examples() if name == "code" else code_tasks.load_lcb()
    return data.load_dataset(name, train, cfg.question_field, cfg.answer_field)


def train_and_eval_examples(cfg, rank: int) -> tuple[list[dict], list[dict]]:
    """The training problems and at most --eval-size evaluation problems, never the same ones
    unless asked for: with --eval-dataset the overlap (same question) is counted and printed;
    without it, evaluation uses the test split of --dataset, or, when it has none, a slice held
    out of it (the same for every seed), and training drops any problem evaluation uses."""
    train_examples = load_examples(cfg.dataset, True, cfg)
    if cfg.eval_dataset or data.has_test_split(cfg.dataset):
        eval_examples = load_examples(cfg.eval_dataset or cfg.dataset, False, cfg)[:cfg.eval_size]
        source = f"'{cfg.eval_dataset}'" if cfg.eval_dataset else f"the test split of '{cfg.dataset}'"
    else:
        order = random.Random("held-out").sample(range(len(train_examples)), len(train_examples))
        held_out = set(order[:min(cfg.eval_size, len(train_examples) // 2)])
        eval_examples = [ex for i, ex in enumerate(train_examples) if i in held_out]
        train_examples = [ex for i, ex in enumerate(train_examples) if i not in held_out]
        source = f"problems held out of '{cfg.dataset}'"
    eval_questions = {ex["question"] for ex in eval_examples}
    overlap = sum(ex["question"] in eval_questions for ex in train_examples)
    if not cfg.eval_dataset:
        train_examples = [ex for ex in train_examples if ex["question"] not in eval_questions]
    if rank == 0:
        print(f"Training on {len(train_examples)} problems of '{cfg.dataset}', evaluating on "
              f"{len(eval_examples)} {source}."
              + (f" {overlap} training problems are also evaluated on." if cfg.eval_dataset and overlap else ""))
    return train_examples, eval_examples


def prompts_for_training(cfg, tokenizer, context: int, rank: int) -> tuple[list[dict], list[dict], int]:
    """The training and evaluation examples with their "prompt_ids", and how many training
    prompts were dropped for leaving no room for --max-new-tokens in the model's context."""
    train_examples, eval_examples = train_and_eval_examples(cfg, rank)
    train_examples, skipped = data.tokenize_prompts(train_examples, tokenizer, cfg.max_new_tokens, context)
    eval_examples, _ = data.tokenize_prompts(eval_examples, tokenizer, cfg.max_new_tokens, context)
    if skipped and rank == 0:
        warnings.warn(f"{skipped} prompts leave no room for {cfg.max_new_tokens} new tokens in the "
                      f"model's context of {context}: skipped.")
    if not train_examples:
        raise SystemExit(f"No usable training prompts in '{cfg.dataset}'.")
    return train_examples, eval_examples, skipped


def step_examples(examples: list[dict], step: int, cfg, rank: int, world: int) -> list[dict]:
    """This process's prompts for a step. The data order is a function of (seed, step) only, so a
    resumed run sees exactly the prompts it would have seen; each epoch is a fresh permutation."""
    per_rank = cfg.prompts_per_step // world
    chosen = []
    for index in range((step - 1) * cfg.prompts_per_step + rank * per_rank,
                       (step - 1) * cfg.prompts_per_step + (rank + 1) * per_rank):
        epoch, position = divmod(index, len(examples))
        order = random.Random(f"{cfg.seed}-epoch-{epoch}").sample(range(len(examples)), len(examples))
        chosen.append(examples[order[position]])
    return chosen


# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------


def compute_init():
    """(rank, world size, device). Under torchrun: one process per GPU, NCCL; gloo on the CPU."""
    if "WORLD_SIZE" not in os.environ:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        return dist.get_rank(), dist.get_world_size(), torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return dist.get_rank(), dist.get_world_size(), torch.device("cpu")


def all_sum(values: list[float], device) -> list[float]:
    """Sums a list of numbers over all processes (identity when not distributed)."""
    if not dist.is_initialized():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def check_replicas_identical(model, device) -> None:
    """Data parallelism is only right if every process holds the same weights: compare a
    fingerprint of them (sum and sum of squares of each tensor) across processes."""
    fingerprint = torch.stack([t for p in model.parameters() for t in (p.double().sum(), p.double().square().sum())])
    fingerprint = fingerprint.to(device)
    low, high = fingerprint.clone(), fingerprint.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if not torch.equal(low, high):
        raise RuntimeError("The processes ended with different weights: data-parallel training went wrong.")


def finish(model, device) -> None:
    """End of a run: under torchrun, check that every process holds the same weights."""
    if dist.is_initialized():
        check_replicas_identical(model, device)
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# The lr schedule, logs, dumps, checkpoints, Ctrl-C
# ---------------------------------------------------------------------------------------------


def lr_at(step: int, cfg) -> float:
    """The learning rate of a step: linear warmup, then constant or cosine decay to 0."""
    if step <= cfg.warmup_steps:
        return cfg.lr * step / max(cfg.warmup_steps, 1)
    if cfg.lr_schedule == "cosine":
        progress = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.lr


def rollout_metrics(rollouts, diagnostics: dict[str, list[float]], device) -> dict:
    """Means over all processes of the per-rollout metrics and of the rollout builder's
    diagnostics (None where no process had a value, e.g. no resets this step)."""
    groups = {}
    for r in rollouts:
        groups.setdefault(r.group, []).append(r.reward)
    values = {"reward_mean": [r.reward for r in rollouts],
              "frac_zero_std_groups": [float(min(g) == max(g)) for g in groups.values()],
              "response_len_mean": [len(r.response_ids) for r in rollouts],
              "truncated_frac": [float(r.truncated) for r in rollouts], **diagnostics}
    names = sorted(values)
    if dist.is_initialized():  # a diagnostic may be present on some processes only
        every = [None] * dist.get_world_size()
        dist.all_gather_object(every, names)
        names = sorted(set().union(*every))
    totals = all_sum([sum(values.get(k, [])) for k in names] + [len(values.get(k, [])) for k in names], device)
    sums, counts = totals[:len(names)], totals[len(names):]
    return {k: total / count if count else None for k, total, count in zip(names, sums, counts)}


def dump_rollouts(path: Path, step: int, rollouts, advantages: list[float], policy, rank: int, world: int) -> None:
    """Every sequence sampled in a step, one JSON line each: trained rollouts with their reward
    and advantage, and the untrained ones (parents, localization replies). Written by rank 0."""
    per_rank = policy.cfg.prompts_per_step // world  # indices made global: rank r holds prompts r*per_rank...

    def line(kind, prompt_index, ids, finish, n_thoughts, reward, group=None, advantage=None, prefix_ids=(),
             reset_step=None):
        return {"step": step, "prompt_index": rank * per_rank + prompt_index, "kind": kind,
                "group": None if group is None else rank * 2 * per_rank + group, "reward": reward,
                "advantage": advantage, "text": policy.text(ids), "finish": finish, "n_thoughts": n_thoughts,
                "new_tokens": len(ids), "prefix_tokens": len(prefix_ids), "reset_step": reset_step,
                "prefix_text": policy.text(prefix_ids) if prefix_ids else None}

    records = [line(r.kind, r.prompt_index, r.response_ids, r.finish, r.n_thoughts, r.reward, r.group, advantage,
                    r.prompt_ids[len(r.prompt_ids) - r.prefix_len:], r.reset_step)
               for r, advantage in zip(rollouts, advantages)]
    records += [line(**untrained) for untrained in policy.untrained]
    if dist.is_initialized():
        every = [None] * world
        dist.all_gather_object(every, records)
        records = [record for part in every for record in part]
    if rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(record) + "\n" for record in records))


class MetricsLog:
    """{out}/metrics.jsonl, one JSON line per step, written by rank 0. A run resumed at
    `first_step` first drops the lines of the steps after its checkpoint."""

    def __init__(self, out: Path, rank: int, first_step: int):
        self.path, self.rank = Path(out) / "metrics.jsonl", rank
        if rank == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if first_step > 1 and self.path.exists():
                kept = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] < first_step]
                self.path.write_text("".join(line + "\n" for line in kept))

    def __call__(self, record: dict) -> None:
        if self.rank == 0:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


class Interrupt:
    """Ctrl-C asks the run to stop after the current step (and save); a second Ctrl-C quits at once."""

    def __init__(self, rank: int):
        self.requested, self.rank = False, rank
        signal.signal(signal.SIGINT, self.handle)

    def handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self.rank == 0:
            print("\nInterrupted: saving after this step (Ctrl-C again to quit without saving).")


def newest_checkpoint(out: Path) -> Path | None:
    """Only fully written checkpoints are named checkpoint-{step}: a save goes to a temporary
    folder that is renamed at the end, so a save killed halfway is never picked."""
    done = [p for p in out.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


def save_checkpoint(model, tokenizer, optimizer, state: dict, out: Path) -> Path:
    final, partial = out / f"checkpoint-{state['step']}", out / f".partial-checkpoint-{state['step']}"
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    torch.save({"optimizer": optimizer.state_dict(), **state}, partial / "trainer_state.pt")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(partial, final)
    return final


def load_resume_state(cfg) -> tuple[Path, dict]:
    checkpoint = newest_checkpoint(Path(cfg.out)) if Path(cfg.out).is_dir() else None
    if checkpoint is None:
        raise SystemExit(f"--resume: no checkpoint-<step> folder in '{cfg.out}'. Point --out at the "
                         "folder of an earlier run, or drop --resume to start fresh.")
    try:
        state = torch.load(checkpoint / "trainer_state.pt", weights_only=False)
        if not {"step", "optimizer"} <= state.keys():
            raise KeyError("step or optimizer state missing")
    except Exception as error:
        raise SystemExit(f"--resume: '{checkpoint}' is not a readable checkpoint ({error}). "
                         "Delete it to resume from the one before.") from None
    return checkpoint, state


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def parse_config(config_class, argv=None):
    """Fills a config dataclass from the command line: a --flag per field, its help and choices
    from the field's metadata (see grpo.option)."""
    parser = argparse.ArgumentParser(description=sys.modules[config_class.__module__].__doc__.split("\n")[0])
    for f in dataclasses.fields(config_class):
        flag, help_text = "--" + f.name.replace("_", "-"), f.metadata.get("help")
        if f.type is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
        else:
            kind = next((t for t in (int, float) if f.type in (t, t | None)), str)
            parser.add_argument(flag, type=kind, default=f.default, choices=f.metadata.get("choices"),
                                help=help_text, metavar=f.name.upper())
    return config_class(**vars(parser.parse_args(argv)))
