"""Running a trainer: models, examples, processes, checkpoints, logs and the command line.
Plumbing: not needed to understand GRPO, RRPO or SRPO; grpo.train() calls it.

- models: hub ids, short names, local folders and GGUF files (`load_model`);
- examples: the toy task, code problems or a dataset, with evaluation problems held out
  (`load_examples`, `train_and_eval_examples`), and which prompts a process gets at each step;
- processes: one per GPU under torchrun (`compute_init`, `all_sum`);
- the output folder (one run at a time, `claim_out`), checkpoints (written whole or not at all),
  `--resume`, the metrics log, rollout dumps, Ctrl-C;
- `parse_config`: a config dataclass filled from the command line, each field's help its --help,
  each field's range checked (`check_ranges`) before anything loads.
"""
import argparse
import contextlib
import dataclasses
import fcntl
import json
import math
import os
import random
import re
import shutil
import signal
import sys
import warnings
from pathlib import Path

import safetensors
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
    if Path(name).exists():
        return name
    if "/" in name:  # a hub id is org/name, or org/name/file.gguf; anything else is a missing local path
        if re.fullmatch(r"[\w-][\w.-]*/[\w.-]+(/[^/]+\.gguf)?", name):
            return name
        raise SystemExit(f"No model at '{name}': no such file or folder. Pass a local model folder, a .gguf "
                         f"file, or a hub id such as 'Qwen/Qwen2.5-1.5B'.")
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


def is_baby_model(name) -> bool:
    """Whether `name` is one of toy.py's baby models (`toy.MODELS`: "toy", "toy-hard", ...), built
    in code."""
    import toy  # imported only when asked: it builds a tokenizer and a model in code

    return name in toy.MODELS


def load_model(cfg, device, path: Path | None = None, lora: bool = True):
    """The policy and its tokenizer (from `path`, a checkpoint, instead of cfg.model if given).
    Left padding: generation appends on the right. With --lora-rank (and `lora`), the base model
    is always cfg.model, and a checkpoint's adapter is loaded on top of it."""
    import transformers
    from transformers import AutoModelForCausalLM

    adapted = bool(cfg.lora_rank and lora)
    source = cfg.model if adapted or path is None else path  # the weights to load: an adapter's base, or a checkpoint
    if is_baby_model(source):
        import toy  # builds its tokenizer and model in code: imported only for the toy model

        model, tokenizer = toy.load_baby_model(settings=toy.MODELS[source])
    else:
        name, extra, model_extra = resolve_model_name(str(source)), {}, {}
        if name.endswith(".gguf"):
            name, extra = str(Path(name).parent), {"gguf_file": Path(name).name}
            if hasattr(transformers, "GgufConfig"):  # else recent versions may keep untrainable GGUF blocks
                model_extra = {"quantization_config": transformers.GgufConfig(dequantize=True)}
        try:
            tokenizer = load_tokenizer(name, **extra)
            model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32, **extra, **model_extra)
        except (OSError, ValueError) as error:
            raise SystemExit(f"Cannot load the model '{source}': {error}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model.to(device=device, dtype=weights_dtype(cfg, device, lora))
    if adapted:
        add_lora(model, cfg, path)
    if cfg.grad_checkpointing or (cfg.grad_checkpointing is None and model.num_parameters() > 1e9):
        # Non-reentrant: it also works when no input of a block needs grad (frozen LoRA embeddings).
        if hasattr(model, "activation_checkpointing_enable"):  # the name in recent transformers
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, tokenizer


def weights_dtype(cfg, device, lora: bool = True) -> torch.dtype:
    """--dtype auto: float32 weights for a full fine-tune, with bf16 autocast on GPU: AdamW's
    updates at lr 1e-6 are below bf16's resolution (8 bits of mantissa) and would round away.
    For LoRA on GPU the base weights are frozen, so bf16 loses nothing and halves their memory;
    the adapters stay float32 (add_lora)."""
    if cfg.dtype != "auto":
        return getattr(torch, cfg.dtype)
    return torch.bfloat16 if cfg.lora_rank and lora and device.type == "cuda" else torch.float32


def checkpointing_on(model) -> bool:
    """Is gradient checkpointing on? (`is_activation_checkpointing` in recent transformers,
    `is_gradient_checkpointing` before.)"""
    on = getattr(model, "is_activation_checkpointing", None)
    return bool(getattr(model, "is_gradient_checkpointing", False) if on is None else on)


def add_lora(model, cfg, checkpoint: Path | None = None) -> None:
    """LoRA adapters (rank cfg.lora_rank, scale cfg.lora_alpha / rank) on every linear layer but
    the lm head, as in the paper; only they train. The model stays a plain transformers model
    (peft's layers are injected in place), so sampling and log-probs use the adapted weights."""
    try:
        from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    except ImportError:
        raise SystemExit("--lora-rank needs peft: pip install peft (or pip install -e '.[lora]').") from None
    from safetensors.torch import load_file

    config = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules="all-linear",
                        base_model_name_or_path=resolve_model_name(cfg.model) if not is_baby_model(cfg.model) else None)
    inject_adapter_in_model(config, model)
    for parameter in model.parameters():
        if parameter.requires_grad:  # only the adapters: float32, whatever the base weights are
            parameter.data = parameter.data.float()
    if checkpoint is not None:
        adapter = checkpoint / "adapter" / "adapter_model.safetensors"
        if not adapter.exists():
            raise SystemExit(f"'{checkpoint}' holds no LoRA adapter ({adapter} is missing): it was not "
                             "saved by a --lora-rank run. Resume it without --lora-rank.")
        set_peft_model_state_dict(model, load_file(adapter, device=str(model.device)))


def lora_layers(model) -> dict:
    """The LoRA-wrapped layers of a model, by name (none for a full fine-tune)."""
    if not hasattr(model, "peft_config"):
        return {}
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {name: module for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)}


def folded_weight(layer) -> torch.Tensor:
    """A LoRA layer's weight with its adapter folded in, W + alpha/r B A, in W's dtype."""
    weight = layer.base_layer.weight
    return (weight.float() + layer.get_delta_weight("default").float()).to(weight.dtype)


def merged_state_dict(model, layers: dict) -> dict:
    """The weights of a LoRA model with each adapter folded in, W + alpha/r B A, under the plain
    model's names: what `from_pretrained` of the base architecture expects."""
    merged = {}
    for key, tensor in model.state_dict().items():
        if ".lora_" in key:
            continue
        if ".base_layer." in key:
            layer, _, param = key.partition(".base_layer.")
            if param == "weight":
                tensor = folded_weight(layers[layer])
            key = f"{layer}.{param}"
        merged[key] = tensor
    return merged


@contextlib.contextmanager
def lora_folded(model, fold: bool = True):
    """Inside, each LoRA layer computes with its adapter folded into its weight, W + alpha/r B A,
    as one matrix product (sampling; peft's layers otherwise run three: W x, then B A x in float32).
    On leaving, the layers hold their own weights and adapters again: the same tensors, never
    added to or subtracted from, so the base weights stay bit-identical. Costs one more copy of
    the adapted weights while inside; without LoRA layers, or with fold=False, it does nothing."""
    saved = []  # (layer, its own weight) of each layer folded here
    try:
        with torch.no_grad():
            for layer in (lora_layers(model).values() if fold else ()):
                if layer._disable_adapters:  # adapters off, or already folded by an enclosing call
                    continue
                saved.append((layer, layer.base_layer.weight))
                layer.base_layer.weight = torch.nn.Parameter(folded_weight(layer), requires_grad=False)
                layer._disable_adapters = True
        yield
    finally:
        for layer, weight in saved:
            layer.base_layer.weight, layer._disable_adapters = weight, False


# ---------------------------------------------------------------------------------------------
# Examples
# ---------------------------------------------------------------------------------------------


def load_examples(name: str, train: bool, cfg) -> list[dict]:
    """Examples as dicts with "question" and a gold "answer" (or "tests" for code problems)."""
    if name == "toy" or re.fullmatch(r"toy-\d+", name):
        import toy

        n_ops = int(name[4:]) if name != "toy" else toy.DEFAULT_N_OPS
        if not 1 <= n_ops <= toy.MAX_N_OPS:
            raise SystemExit(f"--dataset {name}: the baby models learned chains of 1 to {toy.MAX_N_OPS} "
                             f"operations; choose toy-1 to toy-{toy.MAX_N_OPS}.")
        # The eval problems do not depend on --seed, so runs with different seeds are comparable.
        examples = toy.make_examples(5000, cfg.seed, n_ops) if train else toy.make_examples(500, 10**6, n_ops)
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
        eval_name = cfg.eval_dataset or cfg.dataset
        eval_examples = load_examples(eval_name, False, cfg)[:cfg.eval_size] if cfg.eval_size else []
        source = f"problems of '{cfg.eval_dataset}'" if cfg.eval_dataset else f"problems of the test split of '{cfg.dataset}'"
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
        print(f"Training on {len(train_examples)} problems of '{cfg.dataset}', "
              + (f"evaluating on {len(eval_examples)} {source}." if eval_examples else "no evaluation.")
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


def close_process_group() -> None:
    """Under torchrun, wait for every process, then close the process group: no process tears
    down its connections while another may still use them. (Without the wait, a rare gloo abort,
    SIGABRT, was seen at the end of finished two-process runs.)"""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def finish(model, device) -> None:
    """End of a run: under torchrun, check that every process holds the same weights."""
    if dist.is_initialized():
        check_replicas_identical(model, device)
    close_process_group()


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


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics.jsonl. A last line cut short (the run was killed while writing
    it) is dropped with a warning; a damaged line elsewhere is an error that names it."""
    lines = path.read_text(errors="replace").splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise SystemExit(f"'{path}' line {number} is damaged (not JSON): fix or delete that line, "
                                 "then resume again.") from None
            warnings.warn(f"'{path}': dropped its last line, cut short when the run was stopped.")
    return records


class MetricsLog:
    """{out}/metrics.jsonl, one JSON line per step, written by rank 0. A run resumed at
    `first_step` first drops the lines of the steps after its checkpoint: the kept lines go to a
    temporary file that replaces the log in one step, so a kill at any point loses none."""

    def __init__(self, out: Path, rank: int, first_step: int):
        self.path, self.rank = Path(out) / "metrics.jsonl", rank
        if rank == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if first_step > 1 and self.path.exists():
                kept = [record for record in read_metrics(self.path) if record["step"] < first_step]
                partial = self.path.with_name(".partial-metrics.jsonl")
                partial.write_text("".join(json.dumps(record) + "\n" for record in kept))
                os.replace(partial, self.path)

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


RUN_FILES = ("metrics.jsonl", ".partial-metrics.jsonl", "checkpoint-*", ".partial-checkpoint-*", "rollouts")


def claim_out(out: Path, resume: bool, overwrite: bool):
    """Rank 0's hold on the output folder, so that runs never mix: an exclusive lock on
    {out}/.lock for the life of the run (the OS releases it however the process ends, kill -9
    included), and a folder that holds no earlier run unless resumed, or cleared by --overwrite
    (which deletes only the files a run writes). Returns the locked file: keep it open."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lock = open(out / ".lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise SystemExit(f"--out '{out}' is in use by another run (it holds '{out / '.lock'}'): wait for that "
                         "run to end, or pick another --out.") from None
    earlier = sorted(path.name for path in out.iterdir() if path.name != ".lock")
    if earlier and not (resume or overwrite):
        lock.close()
        listed = ", ".join(earlier[:4]) + (", ..." if len(earlier) > 4 else "")
        raise SystemExit(f"--out '{out}' is not empty ({listed}): pass --resume to continue the run in it, "
                         "--overwrite to delete it and start afresh, or pick another --out.")
    earlier_run = [path for pattern in RUN_FILES for path in out.glob(pattern)]
    if overwrite and earlier_run:
        for path in earlier_run:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        print(f"--overwrite: deleted the earlier run in '{out}' ({len(earlier_run)} files and folders).")
    return lock


def newest_checkpoint(out: Path) -> Path | None:
    """Only fully written checkpoints are named checkpoint-{step}: a save goes to a temporary
    folder that is renamed at the end, so a save killed halfway is never picked."""
    done = [p for p in out.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


def save_checkpoint(model, tokenizer, optimizer, state: dict, out: Path) -> Path:
    final, partial = out / f"checkpoint-{state['step']}", out / f".partial-checkpoint-{state['step']}"
    shutil.rmtree(partial, ignore_errors=True)
    layers = lora_layers(model)
    if layers:
        # The adapter, in peft's format, is what --resume loads (on the base model); the merged
        # model beside it loads in plain transformers: from_pretrained("checkpoint-N").
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        (partial / "adapter").mkdir(parents=True)
        adapter = {key: value.detach().cpu().contiguous() for key, value in get_peft_model_state_dict(model).items()}
        save_file(adapter, partial / "adapter" / "adapter_model.safetensors")
        model.peft_config["default"].save_pretrained(partial / "adapter")
        model.save_pretrained(partial, state_dict=merged_state_dict(model, layers))
    else:
        model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    torch.save({"optimizer": optimizer.state_dict(), **state}, partial / "trainer_state.pt")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(partial, final)
    return final


# What a resumed run must share with the run it continues: its model, data and seed, and its
# method (GRPO, whose config has no --reset, or the reset rule of RRPO or SRPO).
RESUME_MUST_MATCH = ("model", "dataset", "eval_dataset", "question_field", "answer_field", "seed", "reset")


def load_resume_state(cfg) -> tuple[Path, dict]:
    """The newest checkpoint in --out and its trainer state, after checking that it is whole and
    that it was written by the same kind of run."""
    checkpoint = newest_checkpoint(Path(cfg.out)) if Path(cfg.out).is_dir() else None
    if checkpoint is None:
        raise SystemExit(f"--resume: no checkpoint-<step> folder in '{cfg.out}'. Point --out at the "
                         "folder of an earlier run, or replace --resume with --overwrite to start afresh.")
    try:
        state = torch.load(checkpoint / "trainer_state.pt", weights_only=False)
        if not {"step", "optimizer"} <= state.keys():
            raise KeyError("step or optimizer state missing")
        weights = sorted(checkpoint.glob("*.safetensors"))
        if not weights:
            raise FileNotFoundError("no .safetensors weights")
        for path in weights:  # reads the header, which also checks that the file has its full length
            with safetensors.safe_open(path, "pt"):
                pass
    except Exception as error:
        raise SystemExit(f"--resume: '{checkpoint}' is not a readable checkpoint ({error}). "
                         "Delete it to resume from the one before.") from None
    saved, now = state.get("config"), dataclasses.asdict(cfg)
    changed = [key for key in RESUME_MUST_MATCH if saved is not None and now.get(key) != saved.get(key)]
    if changed:
        described = "; ".join(f"--{key.replace('_', '-')} {now.get(key, 'none (GRPO)')} here, "
                              f"{saved.get(key, 'none (GRPO)')} in the checkpoint" for key in changed)
        raise SystemExit(f"--resume: this run differs from the one in '{cfg.out}': {described}. Resume with "
                         "the same flags, or start a new run in another --out.")
    return checkpoint, state


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def check_ranges(cfg) -> None:
    """Raises ValueError naming each field of a config dataclass whose value lies outside the
    range its metadata declares (at_least, above, at_most: see grpo.option), one line per field.
    None is "unset" and passes. Example: a field `group_size` declared with at_least=2 and set to
    1 gives "--group-size 1: must be at least 2"."""
    bad = []
    for f in dataclasses.fields(cfg):
        value, low, above, high = (getattr(cfg, f.name), f.metadata.get("at_least"), f.metadata.get("above"),
                                   f.metadata.get("at_most"))
        if value is None or (low, above, high) == (None, None, None):
            continue
        if not (math.isfinite(value) and (low is None or value >= low) and (above is None or value > above)
                and (high is None or value <= high)):
            rules = [f"{word} {bound}" for word, bound in (("at least", low), ("above", above), ("at most", high))
                     if bound is not None]
            finite = "" if math.isfinite(value) else "a finite number "
            bad.append(f"--{f.name.replace('_', '-')} {value}: must be {finite}{' and '.join(rules)}")
    if bad:
        raise ValueError("\n".join(bad))


def parse_config(config_class, argv=None):
    """Fills a config dataclass from the command line: a --flag per field, its help and choices
    from the field's metadata (see grpo.option). A bad value (the config raises ValueError) exits
    with argparse's usage message and code 2, before anything loads."""
    parser = argparse.ArgumentParser(description=sys.modules[config_class.__module__].__doc__.split("\n")[0])
    for f in dataclasses.fields(config_class):
        flag, help_text = "--" + f.name.replace("_", "-"), f.metadata.get("help")
        if f.type in (bool, bool | None):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
        else:
            kind = next((t for t in (int, float) if f.type in (t, t | None)), str)
            parser.add_argument(flag, type=kind, default=f.default, choices=f.metadata.get("choices"),
                                help=help_text, metavar=f.name.upper())
    try:
        return config_class(**vars(parser.parse_args(argv)))
    except ValueError as error:  # a value out of range, or flags that contradict each other
        parser.error(str(error))
