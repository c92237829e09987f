r"""GRPO: the baseline of the paper, and the training loop that RRPO and SRPO reuse.

For each prompt, sample a group of G solutions y_1..y_G and score them, r_i in {0, 1}.

    advantage   A_i = (r_i - mean(r)) / std(r)      population std over the group; A_i = 0 if std = 0
    loss        L = - mean_i( A_i * mean_{t in y_i} log pi(y_i,t) )

The loss is averaged over tokens within a trajectory, then over trajectories (`--loss-agg
seq-mean`, the paper's choice; `token-mean` averages over all tokens of the batch instead), over
the sequences of all processes. Only response tokens are trained: the prompt is context.

A solution is generated thought by thought, as the authors do (PAPER.md section 5b): a thought
ends at `</thought>` or after --max-thought-tokens; the response ends after the thought that holds
`\boxed{`, at end of sequence, after --max-thoughts thoughts, or before a thought that could not
fit whole in --max-new-tokens. One batched `generate` call per phase does this, row by row.

The update schedule is the authors' (section 5): a rollout batch of --prompts-per-step prompts is
cut into --mini-batches slices of prompts, one optimizer step each, one pass, no ratio; so slices
after the first are slightly off-policy plain policy-gradient steps. With `--updates-per-batch > 1`
the passes repeat and the per-token term becomes PPO's clipped ratio, min(rho A, clip(rho, 1-eps,
1+eps) A); `--beta > 0` adds beta * KL(pi || pi_ref) with the k3 estimator against a frozen copy
of the initial model. Evaluation (greedy pass@1) never uses a training problem unless asked to.

Where this file deviates from the authors' code, and why:
- All weights are trained, not LoRA adapters (r = 64), so the default lr for a pretrained model is
  1e-6, not their 5e-5.
- The KV cache of a chain is kept across its thoughts (they re-prefill from a prefix cache): the
  same tokens, one `generate` call instead of one per thought.
- The solver prompt goes through the chat template when the tokenizer has one (theirs is a raw
  text template), so instruct models see the format they were tuned on.

RRPO and SRPO (rrpo.py, srpo.py) change only how the rollouts of a prompt are built: they pass
their own `make_rollouts` to `train()`; everything else here is shared.

    python grpo.py                                        # built-in demo on the CPU (toy.py)
    python grpo.py --model Qwen2.5-1.5B --dataset gsm8k   # one GPU
    torchrun --nproc_per_node 8 grpo.py --model Qwen2.5-1.5B --dataset gsm8k
"""
import dataclasses
import inspect
import json
import math
import os
import random
import shutil
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm
from transformers import StoppingCriteria

import localize
import verify

THOUGHT_INSTRUCTION = (
    "Solve the problem below one thought at a time. A thought is one small step: a single "
    "observation, calculation or deduction. End every thought with </thought>. In your last "
    "thought, write the final answer as \\boxed{answer}."
)


@dataclass
class Config:
    model: str = "toy"  # hub id, short name (Qwen2.5-1.5B), local folder, .gguf file, or "toy"
    dataset: str | None = None  # gsm8k, math500, aime24, amc23, minerva, olympiadbench, toy, code, lcb, hub id or local file; default toy for the toy model, else gsm8k
    eval_dataset: str | None = None  # same choices; default: the test split of --dataset, or problems held out of it
    question_field: str | None = None  # field holding the question in a local/hub dataset (detected when unset)
    answer_field: str | None = None  # field holding the gold answer (detected when unset)
    steps: int = 60  # optimizer steps
    prompts_per_step: int | None = None  # prompts per rollout batch, summed over all processes; default 16 for the toy model, else 32 (the paper)
    mini_batches: int | None = None  # optimizer steps per rollout batch, each on a slice of its prompts; default 1 for the toy model, else 4 (the paper), or fewer if a process has fewer prompts
    group_size: int = 8  # G: scored rollouts per prompt
    max_new_tokens: int | None = None  # response budget in tokens, shared by a reset's prefix and suffix; default 96 for the toy model, else 4096
    max_thought_tokens: int | None = None  # a thought ends at </thought> or after this many tokens; default 16 for the toy model, else 256
    max_thoughts: int = 20  # a response ends after this many thoughts
    temperature: float = 0.7  # sampling temperature; the log-probs are computed at the same temperature
    top_p: float = 0.95  # nucleus sampling
    lr: float | None = None  # peak learning rate of AdamW; default 5e-5 for the toy model, else 1e-6
    weight_decay: float = 0.01  # AdamW weight decay
    warmup_steps: int = 0  # linear warmup steps
    lr_schedule: str = "constant"  # after warmup: constant or cosine
    beta: float = 0.0  # KL coefficient to a frozen reference model; 0 loads no reference
    clip_eps: float = 0.2  # PPO ratio clipping, used when --updates-per-batch > 1
    updates_per_batch: int = 1  # passes over each rollout batch; 1 = on-policy, the paper's setting; more use PPO's clipped ratio
    loss_agg: str = "seq-mean"  # seq-mean (the paper) or token-mean
    eval_every: int = 20  # steps between evaluations (greedy pass@1); 0 = only at the end
    eval_size: int = 100  # problems in each evaluation
    save_every: int = 50  # steps between checkpoints; a final one is always written
    out: str = "runs/grpo"  # output folder: metrics.jsonl and checkpoint-{step}/
    dump_rollouts: bool = False  # write every sampled sequence of step N to {out}/rollouts/step-{N}.jsonl
    resume: bool = False  # continue from the newest complete checkpoint in --out
    seed: int = 0  # seeds data order, sampling and initialisation of everything random
    dtype: str = "float32"  # weights: float32 (bf16 autocast on GPU) or bfloat16
    grad_checkpointing: bool = False  # trade compute for memory in the training forward
    micro_batch: int = 8  # sequences per training forward; bounds the memory

    def __post_init__(self):
        # The toy model is tiny and its solutions short; a pretrained model follows the paper
        # where it is specific (section 5), except the lr: the paper's 5e-5 is for LoRA.
        toy = self.model == "toy"
        self.dataset = self.dataset or ("toy" if toy else "gsm8k")
        self.prompts_per_step = self.prompts_per_step or (16 if toy else 32)
        self.mini_batches = self.mini_batches or (1 if toy else None)  # None: set by train()
        self.max_new_tokens = self.max_new_tokens or (96 if toy else 4096)
        self.max_thought_tokens = min(self.max_thought_tokens or (16 if toy else 256), self.max_new_tokens)
        self.lr = self.lr or (5e-5 if toy else 1e-6)


# ---------------------------------------------------------------------------------------------
# Model, data and prompt
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


def load_model(cfg: Config, device):
    """The policy and its tokenizer. Left padding: generation appends on the right."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if cfg.model == "toy":
        import toy

        model, tokenizer = toy.load_baby_model()
    else:
        name, extra, model_extra = resolve_model_name(cfg.model), {}, {}
        if name.endswith(".gguf"):
            name, extra = str(Path(name).parent), {"gguf_file": Path(name).name}
            if hasattr(transformers, "GgufConfig"):  # else recent versions may keep untrainable GGUF blocks
                model_extra = {"quantization_config": transformers.GgufConfig(dequantize=True)}
        try:
            tokenizer = AutoTokenizer.from_pretrained(name, **extra)
            model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32, **extra, **model_extra)
        except (OSError, ValueError) as error:
            raise SystemExit(f"Cannot load the model '{cfg.model}': {error}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model.to(device=device, dtype=getattr(torch, cfg.dtype))
    if cfg.grad_checkpointing:  # renamed activation_checkpointing_enable in recent transformers
        enable = getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)
        enable()
    return model, tokenizer


def format_chat(tokenizer, content: str) -> str:
    """One user turn, ready for generation: the chat template when the tokenizer has one, else
    the raw text followed by a blank line (for base models without a template)."""
    if tokenizer.chat_template:
        messages = [{"role": "user", "content": content}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return content + "\n\n"


def format_prompt(tokenizer, question: str, instruction: str = THOUGHT_INSTRUCTION) -> str:
    """The exact text a model sees for one problem."""
    return format_chat(tokenizer, f"{instruction}\n\nProblem: {question}")


# Benchmarks by short name: (hub id, config, train split, test split).
BENCHMARKS = {
    "gsm8k": ("openai/gsm8k", "main", "train", "test"),
    "math500": ("HuggingFaceH4/MATH-500", None, "test", "test"),
    "aime24": ("HuggingFaceH4/aime_2024", None, "train", "train"),
    "amc23": ("math-ai/amc23", None, "test", "test"),
    "minerva": ("math-ai/minervamath", None, "test", "test"),
    "olympiadbench": ("math-ai/olympiadbench", None, "test", "test"),
}
QUESTION_FIELDS = ("question", "problem", "prompt", "input", "query")
ANSWER_FIELDS = ("answer", "final_answer", "solution", "output", "target")


def load_examples(name: str, train: bool, cfg: Config) -> list[dict]:
    """Examples as dicts with "question" and a gold "answer" (or "tests" for code problems)."""
    if name == "toy":
        import toy

        # The eval problems do not depend on --seed, so runs with different seeds are comparable.
        examples = toy.make_examples(5000, seed=cfg.seed) if train else toy.make_examples(500, seed=10**6)
        return [dict(example, step_checker=toy.first_wrong_step) for example in examples]
    if name in ("code", "lcb"):
        import code_tasks

        return code_tasks.builtin_examples() if name == "code" else code_tasks.load_lcb()
    import datasets

    if Path(name).is_file():
        kind = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}.get(Path(name).suffix)
        if kind is None:
            raise SystemExit(f"Cannot read '{name}': use a .jsonl, .json or .parquet file.")
        rows = datasets.load_dataset(kind, data_files=name, split="train")
    else:
        hub_id, config, train_split, test_split = BENCHMARKS.get(name, (name, None, "train", "test"))
        try:
            rows = datasets.load_dataset(hub_id, config, split=train_split if train else test_split)
        except Exception as error:  # datasets raises many kinds: missing repo, split, network
            raise SystemExit(f"Cannot load the dataset '{name}' ({hub_id}): {error}. Pass a benchmark "
                             f"name ({', '.join(BENCHMARKS)}, toy, code, lcb), a hub id or a local "
                             ".jsonl/.json/.parquet file.") from None
    question_field = cfg.question_field or next((f for f in QUESTION_FIELDS if f in rows.column_names), None)
    answer_field = cfg.answer_field or next((f for f in ANSWER_FIELDS if f in rows.column_names), None)
    if question_field not in rows.column_names or answer_field not in rows.column_names:
        raise SystemExit(f"Cannot find the question and answer fields of '{name}': it has "
                         f"{rows.column_names}. Name them with --question-field and --answer-field.")
    return [{"question": row[question_field], "answer": verify.gold_answer(row[answer_field])}
            for row in rows]


def rewards(examples: list[dict], completions: list[str]) -> list[float]:
    """1.0 for a right final answer (math) or a program that passes every test (code), else 0.0.
    Programs are checked in parallel subprocesses; math answers one by one (they are cheap)."""
    code = [i for i, example in enumerate(examples) if "tests" in example]
    scores = [0.0 if i in code else verify.math_reward(completion, example["answer"])
              for i, (example, completion) in enumerate(zip(examples, completions))]
    if code:
        checked = verify.code_rewards([completions[i] for i in code], [examples[i]["tests"] for i in code])
        for i, score in zip(code, checked):
            scores[i] = score
    return scores


def instruction_for(example: dict) -> str:
    if "tests" in example:
        import code_tasks

        return code_tasks.CODE_INSTRUCTION
    return THOUGHT_INSTRUCTION


def tokenize_prompts(examples, tokenizer, max_new_tokens: int, context: int) -> tuple[list, int]:
    """Adds "prompt_ids" to each example; drops (and counts) those that leave no room to answer."""
    kept = []
    for example in examples:
        text = format_prompt(tokenizer, example["question"], instruction_for(example))
        example["prompt_ids"] = tokenizer(text, add_special_tokens=False).input_ids
        if len(example["prompt_ids"]) + max_new_tokens <= context:
            kept.append(example)
    return kept, len(examples) - len(kept)


# ---------------------------------------------------------------------------------------------
# Sampling with KV-cache prefix reuse
# ---------------------------------------------------------------------------------------------


def left_pad(sequences: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, seq) ids and attention mask, padded on the left."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq):] = torch.tensor(seq)
            mask[row, width - len(seq):] = 1
    return ids.to(device), mask.to(device)


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip left padding, as `generate` computes them."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def eos_ids(model, tokenizer) -> set[int]:
    eos = model.generation_config.eos_token_id
    eos = {tokenizer.eos_token_id} if eos is None else set(eos if isinstance(eos, list) else [eos])
    return eos | {tokenizer.eos_token_id}


@dataclass
class Chain:
    """One generated response: its token ids, where each of its thoughts ends, and why it ended."""
    ids: list[int]  # generated tokens, ending with eos if the model ended the response
    thought_ends: list[int]  # exclusive end of each thought in ids: thought k is ids[ends[k-2]:ends[k-1]]
    finish: str  # "answer" (a thought held \boxed{), "eos", "max_thoughts" or "budget"


class ThoughtStopper(StoppingCriteria):
    r"""Thought-by-thought stopping, row by row, inside one batched `generate` call (PAPER.md 5b).

    A thought ends with the token that completes `</thought>`, or after `max_thought_tokens`
    tokens. A chain ends after the thought that contains `\boxed{` ("answer"), at end of sequence
    ("eos"), after its `max_thoughts`-th thought ("max_thoughts"), or, before a thought that could
    not fit whole in its budget of new tokens ("budget"). So a chain is never longer than its
    budget and no thought is cut by it. The authors call the model once per thought; stopping
    rows here instead keeps one KV cache for the whole chain.
    """

    def __init__(self, tokenizer, prompt_width: int, budgets: list[int], max_thoughts: list[int],
                 max_thought_tokens: int, stop_ids: set[int], delimiter: str = localize.DELIMITER):
        self.tokenizer, self.prompt_width, self.stop_ids, self.delimiter = tokenizer, prompt_width, stop_ids, delimiter
        self.budgets, self.max_thoughts, self.max_thought_tokens = budgets, max_thoughts, max_thought_tokens
        self.thought_ends = [[] for _ in budgets]
        self.finish: list[str | None] = [None] * len(budgets)
        self.length = [0] * len(budgets)  # generated tokens kept, once the row has finished
        # Only a token whose text holds the delimiter's last character can complete it.
        pieces = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        self.may_close = [delimiter[-1] in piece for piece in pieces]

    def text(self, ids: list[int]) -> str:
        return localize.decode(self.tokenizer, ids)

    def remember(self, kind: str, prompt_index: int, response_ids: list[int], finish: str, n_thoughts=None,
                 reward=None) -> None:
        """Keep a sequence that is sampled but not trained on (a parent, a localization reply)
        for --dump-rollouts."""
        if self.cfg.dump_rollouts:
            self.untrained.append({"kind": kind, "prompt_index": prompt_index, "reward": reward,
                                   "text": self.text(response_ids), "finish": finish, "n_thoughts": n_thoughts,
                                   "new_tokens": len(response_ids), "prefix_tokens": 0, "reset_step": None,
                                   "prefix_text": None})

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        generated = input_ids[:, self.prompt_width:].tolist()  # (batch, new tokens so far)
        for row, ids in enumerate(generated):
            if self.finish[row] is not None:
                continue
            t, token = len(ids), ids[-1]
            thought_start = self.thought_ends[row][-1] if self.thought_ends[row] else 0
            if token in self.stop_ids:
                # eos closes the current thought; after a thought with no text it joins the last
                # one, and a chain that is only eos has no thought at all
                if self.text(ids[thought_start:t]).strip():
                    self.thought_ends[row].append(t)
                elif self.thought_ends[row]:
                    self.thought_ends[row][-1] = t
                last = self.thought_ends[row][-2:]
                answered = last and "\\boxed{" in self.text(ids[last[0] if len(last) == 2 else 0:t])
                self.end_chain(row, t, "answer" if answered else "eos")
            elif self.may_close[token] and self.completes_delimiter(ids[thought_start:t]):
                self.end_thought(row, ids, t)
            elif t - thought_start == self.max_thought_tokens:
                self.end_thought(row, ids, t)
        return torch.tensor([f is not None for f in self.finish], device=input_ids.device)

    def completes_delimiter(self, thought: list[int]) -> bool:
        """Does the last token complete the delimiter? The delimiter's characters span at most
        len(delimiter) tokens, so a window of that many decodes enough of the thought."""
        window = thought[-len(self.delimiter):]
        return self.delimiter in self.text(window) and self.delimiter not in self.text(window[:-1])

    def end_thought(self, row: int, ids: list[int], t: int) -> None:
        thought_start = self.thought_ends[row][-1] if self.thought_ends[row] else 0
        self.thought_ends[row].append(t)
        if "\\boxed{" in self.text(ids[thought_start:t]):
            self.end_chain(row, t, "answer")
        elif len(self.thought_ends[row]) >= self.max_thoughts[row]:
            self.end_chain(row, t, "max_thoughts")
        elif t + self.max_thought_tokens > self.budgets[row]:
            self.end_chain(row, t, "budget")

    def end_chain(self, row: int, t: int, finish: str) -> None:
        self.length[row], self.finish[row] = t, finish


@torch.no_grad()
def sample(model, tokenizer, prompts: list[list[int]], n: int, max_new_tokens: int | list[int],
           temperature: float = 1.0, top_p: float = 1.0, greedy: bool = False,
           max_thought_tokens: int | None = None, max_thoughts: int | list[int] = 10**9) -> list[list[Chain]]:
    """n responses for each prompt, in one batched `generate` call: out[i][j] is response j of
    prompt i.

    With `max_thought_tokens`, generation is thought by thought (`ThoughtStopper`); without, a
    response ends at eos or after `max_new_tokens`, as one thought. `max_new_tokens` and
    `max_thoughts` are one number, or one per prompt: a reset suffix gets what its parent's
    prefix left of them. A prompt left no room for a whole thought gets empty responses.

    Each prompt is prefilled once and its KV cache copied to its n samples, instead of
    prefilling the same prompt n times. The cache covers all but the last prompt token:
    `generate` must still be fed at least one new token, else it has no logits to start from.
    """
    from transformers import DynamicCache, GenerationConfig, StoppingCriteriaList

    budgets = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(prompts)
    thoughts = max_thoughts if isinstance(max_thoughts, list) else [max_thoughts] * len(prompts)
    smallest = max_thought_tokens or 1
    out = [[Chain([], [], "budget" if budgets[i] < smallest else "max_thoughts") for _ in range(n)]
           for i in range(len(prompts))]
    live = [i for i in range(len(prompts)) if budgets[i] >= smallest and thoughts[i] >= 1]
    if not live:
        return out
    ids, mask = left_pad([prompts[i] for i in live], tokenizer.pad_token_id, model.device)  # (prompts, seq)
    # Recent transformers call the KV cache argument `cache`; earlier 5.x call it `past_key_values`.
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    cache = DynamicCache(config=model.config)
    if ids.shape[1] > 1:
        model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions(mask[:, :-1]),
              use_cache=True, **{cache_arg: cache})
        cache.batch_repeat_interleave(n)
    stop = eos_ids(model, tokenizer)
    rows = [i for i in live for _ in range(n)]  # the prompt of each generated row
    stopper = None
    if max_thought_tokens:
        stopper = ThoughtStopper(tokenizer, ids.shape[1], [budgets[i] for i in rows], [thoughts[i] for i in rows],
                                 max_thought_tokens, stop)
    # Every sampling knob is set explicitly: a model's own generation_config (for example
    # top_k=20, repetition_penalty=1.05) would otherwise change the distribution we train on.
    gen_config = GenerationConfig(
        do_sample=not greedy, temperature=temperature if not greedy else None,
        top_p=top_p if not greedy else None, top_k=0 if not greedy else None, repetition_penalty=1.0,
        max_new_tokens=max(budgets[i] for i in live), pad_token_id=tokenizer.pad_token_id, eos_token_id=sorted(stop))
    generated = model.generate(input_ids=ids.repeat_interleave(n, 0), attention_mask=mask.repeat_interleave(n, 0),
                               **{cache_arg: cache if ids.shape[1] > 1 else None}, generation_config=gen_config,
                               stopping_criteria=StoppingCriteriaList([stopper] if stopper else []),
                               )[:, ids.shape[1]:].tolist()  # (prompts * n, new)
    for row, (i, tokens) in enumerate(zip(rows, generated)):
        if stopper:
            chain = Chain(tokens[:stopper.length[row]], stopper.thought_ends[row], stopper.finish[row])
        else:
            tokens = tokens[:budgets[i]]
            end = next((t + 1 for t, token in enumerate(tokens) if token in stop), None)
            chain = Chain(tokens[:end or len(tokens)], [end or len(tokens)], "budget" if end is None else "eos")
        out[i][row % n] = chain
    return out


# ---------------------------------------------------------------------------------------------
# Rollouts: the only part RRPO and SRPO replace
# ---------------------------------------------------------------------------------------------


@dataclass
class Rollout:
    prompt_ids: list[int]  # context: the prompt, plus the parent's prefix for a reset suffix
    response_ids: list[int]  # generated tokens; the only tokens the loss trains on
    reward: float
    group: int  # advantages are normalised within each group
    finish: str = "eos"  # why its generation ended: answer, eos, max_thoughts or budget (see Chain)
    prompt_index: int = 0  # which of the step's prompts it answers; mini-batches split by prompt
    thought_ends: list[int] = dataclasses.field(default_factory=list)  # of response_ids (see Chain)
    kind: str = "fresh"  # fresh, or suffix (of a reset)
    prefix_len: int = 0  # suffixes: how many of prompt_ids are the parent's prefix
    reset_step: int | None = None  # suffixes: the parent's step k that the suffix resamples

    @property
    def truncated(self) -> bool:
        """Ended by a limit, without an answer."""
        return self.finish in ("max_thoughts", "budget")

    @property
    def n_thoughts(self) -> int:
        """Thoughts of the whole chain: a suffix's count on from the k - 1 of its prefix."""
        return len(self.thought_ends) + (self.reset_step - 1 if self.reset_step else 0)


class Policy:
    """The model being trained, as the rollout builders see it: sample, decode, score."""

    def __init__(self, model, tokenizer, cfg: Config):
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        self.tokens_generated = 0
        self.untrained = []  # sequences sampled but never trained on (parents, localizations), for dumps

    def sample(self, prompts, n, max_new_tokens=None, max_thoughts=None, temperature=None, greedy=False,
               thoughts=True) -> list[list[Chain]]:
        """Chains thought by thought under the config's limits; `thoughts=False` for free text
        (a localization reply), which ends at eos or after max_new_tokens."""
        cfg = self.cfg
        chains = sample(self.model, self.tokenizer, prompts, n,
                        cfg.max_new_tokens if max_new_tokens is None else max_new_tokens,
                        cfg.temperature if temperature is None else temperature, cfg.top_p, greedy,
                        cfg.max_thought_tokens if thoughts else None,
                        cfg.max_thoughts if max_thoughts is None else max_thoughts)
        self.tokens_generated += sum(len(chain.ids) for group in chains for chain in group)
        return chains

    def text(self, ids: list[int]) -> str:
        return localize.decode(self.tokenizer, ids)

    def remember(self, kind: str, prompt_index: int, response_ids: list[int], finish: str, n_thoughts=None,
                 reward=None) -> None:
        """Keep a sequence that is sampled but not trained on (a parent, a localization reply)
        for --dump-rollouts."""
        if self.cfg.dump_rollouts:
            self.untrained.append({"kind": kind, "prompt_index": prompt_index, "reward": reward,
                                   "text": self.text(response_ids), "finish": finish, "n_thoughts": n_thoughts,
                                   "new_tokens": len(response_ids), "prefix_tokens": 0, "reset_step": None,
                                   "prefix_text": None})

    def score(self, examples: list[dict], responses: list[list[int]]) -> list[float]:
        return rewards(examples, [self.text(ids) for ids in responses])


def sample_rollouts(policy: Policy, examples: list[dict], n: int, indices: list[int] | None = None):
    """n fresh solutions for each prompt, scored: out[j] are the rollouts of examples[j], in
    group indices[j] (its index among the step's prompts; by default j)."""
    indices = list(range(len(examples))) if indices is None else indices
    chains = policy.sample([ex["prompt_ids"] for ex in examples], n)
    scores = iter(policy.score([ex for ex in examples for _ in range(n)],
                               [chain.ids for group in chains for chain in group]))
    return [[Rollout(ex["prompt_ids"], chain.ids, next(scores), i, chain.finish, i, chain.thought_ends)
             for chain in group] for i, ex, group in zip(indices, examples, chains)]


def grpo_rollouts(policy: Policy, examples: list[dict], rng: random.Random):
    """G fresh solutions per prompt, one group per prompt. Returns (rollouts, diagnostics)."""
    groups = sample_rollouts(policy, examples, policy.cfg.group_size)
    return [rollout for group in groups for rollout in group], {}


# ---------------------------------------------------------------------------------------------
# Advantages, log-probs and the loss
# ---------------------------------------------------------------------------------------------


def group_advantages(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """(r - group mean) / group population std; zero for a group whose rewards are all equal.

    >>> group_advantages(torch.tensor([1., 0., 0., 0., 1., 1.]), torch.tensor([0, 0, 0, 0, 1, 1]))
    tensor([ 1.7321, -0.5774, -0.5774, -0.5774,  0.0000,  0.0000])
    """
    advantages = torch.zeros_like(rewards)
    for group in group_ids.unique():
        members = group_ids == group
        r = rewards[members]
        std = r.std(unbiased=False)
        if std > 0:
            advantages[members] = (r - r.mean()) / std
    return advantages


def policy_loss(logprobs, advantages, mask, old_logprobs=None, ref_logprobs=None,
                clip_eps: float = 0.2, beta: float = 0.0, agg: str = "seq-mean") -> torch.Tensor:
    """The policy-gradient loss of a batch.

    logprobs, old_logprobs, ref_logprobs, mask: (batch, tokens); advantages: (batch,).
    Without old_logprobs (one on-policy update) the per-token term is A * log pi, so
    loss = -mean_i(A_i * mean_t log pi) exactly; with them it is PPO's clipped ratio.
    Example: one sequence, A = 2, log-probs [-1, -3], mask [1, 1] -> loss = -(2 * -2) = 4.
    """
    advantages = advantages[:, None]
    if old_logprobs is None:
        per_token = advantages * logprobs
    else:
        ratio = torch.exp(logprobs - old_logprobs)
        per_token = torch.min(ratio * advantages, ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantages)
    if beta > 0:  # k3 estimator of KL(pi || pi_ref): unbiased and always >= 0
        log_ratio = ref_logprobs - logprobs
        per_token = per_token - beta * (torch.exp(log_ratio) - log_ratio - 1)
    mask = mask.to(per_token.dtype)
    if agg == "seq-mean":
        return -((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    if agg == "token-mean":
        return -(per_token * mask).sum() / mask.sum().clamp(min=1)
    raise ValueError(f"loss_agg must be 'seq-mean' or 'token-mean', not '{agg}'")


def response_logprobs(model, rollouts: list[Rollout], pad_id: int, temperature: float):
    """log pi(response token | everything before it) for a micro-batch of rollouts.

    Returns logprobs and mask, both (batch, longest response). Sequences are left-padded, so every
    response ends at the last position: the lm head runs only on the response positions, and the
    log-softmax covers one micro-batch at a time. Shorter responses are padded on the left (mask 0).
    """
    ids, mask = left_pad([r.prompt_ids + r.response_ids for r in rollouts], pad_id, model.device)
    width = max(len(r.response_ids) for r in rollouts)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask), use_cache=False,
                   logits_to_keep=width + 1).logits[:, :-1].float() / temperature  # (batch, width, vocab)
    targets = ids[:, -width:]
    logprobs = logits.gather(-1, targets[..., None]).squeeze(-1) - logits.logsumexp(-1)
    lengths = torch.tensor([len(r.response_ids) for r in rollouts], device=ids.device)
    response_mask = torch.arange(width, device=ids.device) >= width - lengths[:, None]
    return logprobs, response_mask


# ---------------------------------------------------------------------------------------------
# The training loop
# ---------------------------------------------------------------------------------------------


def setup_distributed():
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


def rollout_metrics(rollouts: list[Rollout], diagnostics: dict[str, list[float]], device) -> dict:
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


def lr_at(step: int, cfg: Config) -> float:
    if step <= cfg.warmup_steps:
        return cfg.lr * step / max(cfg.warmup_steps, 1)
    if cfg.lr_schedule == "cosine":
        progress = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.lr


def step_examples(examples: list[dict], step: int, cfg: Config, rank: int, world: int) -> list[dict]:
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


def prompt_slices(rollouts: list[Rollout], n_slices: int) -> list[list[int]]:
    """Indices of the rollouts of each mini-batch: the step's prompts cut into n_slices runs of
    consecutive prompts, all the rollouts of a prompt (both groups of a reset) in the same one.

    >>> prompt_slices([Rollout([], [], 0.0, 0, prompt_index=i) for i in (0, 0, 1, 1, 2, 2, 3, 3)], 2)
    [[0, 1, 2, 3], [4, 5, 6, 7]]
    """
    prompts = sorted({r.prompt_index for r in rollouts})
    size = math.ceil(len(prompts) / n_slices)
    chosen = [set(prompts[k * size:(k + 1) * size]) for k in range(n_slices)]
    return [[i for i, r in enumerate(rollouts) if r.prompt_index in part] for part in chosen]


def train_on_rollouts(model, ref_model, optimizer, rollouts, cfg, pad_id, device):
    """The update(s) on one batch of rollouts: `--mini-batches` optimizer steps, each on a slice
    of the prompts, repeated `--updates-per-batch` times. Returns (mean loss, mean grad norm,
    reason every step was skipped or None)."""
    advantages = group_advantages(torch.tensor([r.reward for r in rollouts]),
                                  torch.tensor([r.group for r in rollouts]))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    world = dist.get_world_size() if dist.is_initialized() else 1

    def logprobs_of(net, batch):
        with autocast:
            return response_logprobs(net, [rollouts[i] for i in batch], pad_id, cfg.temperature)

    # With beta = 0, a rollout with A = 0 has exactly zero gradient: leave it out of the forward.
    # So is one with no tokens (a suffix whose prefix left no room for a thought).
    slices = []
    for members in prompt_slices(rollouts, cfg.mini_batches):
        active = [i for i in members if (advantages[i] != 0 or cfg.beta > 0) and rollouts[i].response_ids]
        micro_batches = [active[i:i + cfg.micro_batch] for i in range(0, len(active), cfg.micro_batch)]
        # The loss of a mini-batch is a mean over the sequences (or tokens) of all processes,
        # also the A = 0 ones we do not forward; gradients are averaged over processes below.
        n_active, n_sequences, n_tokens = all_sum(
            [len(active), len(members), sum(len(rollouts[i].response_ids) for i in members)], device)
        with torch.no_grad():  # fixed references: the sampling policy (for the ratio) and pi_ref
            old = [logprobs_of(model, mb)[0] for mb in micro_batches] if cfg.updates_per_batch > 1 else None
            ref = [logprobs_of(ref_model, mb)[0] for mb in micro_batches] if cfg.beta > 0 else None
        slices.append((micro_batches, n_active, n_sequences, n_tokens, old, ref))

    params = [p for p in model.parameters() if p.requires_grad]
    losses, grad_norms, skipped = [], [], None
    for _ in range(cfg.updates_per_batch):
        for micro_batches, n_active, n_sequences, n_tokens, old, ref in slices:
            if n_active == 0:
                skipped = skipped or "no-signal"  # every group had equal rewards: nothing to learn from
                continue
            optimizer.zero_grad(set_to_none=False)
            step_loss = 0.0
            for k, mb in enumerate(micro_batches):
                logprobs, mask = logprobs_of(model, mb)
                loss = policy_loss(logprobs, advantages[mb].to(device), mask, old and old[k], ref and ref[k],
                                   cfg.clip_eps, cfg.beta, cfg.loss_agg)
                # Weight each micro-batch so that the sum over micro-batches and processes is the
                # loss of the whole mini-batch.
                weight = (mask.sum().item() / n_tokens if cfg.loss_agg == "token-mean" else len(mb) / n_sequences)
                (loss * weight * world).backward()
                step_loss += loss.item() * weight
            if dist.is_initialized():
                # What DistributedDataParallel does, written out: DDP needs the same number of
                # forwards on every process, while here a process may have fewer (or no) rollouts
                # with A != 0.
                for p in params:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    dist.all_reduce(p.grad)
                    p.grad /= world
            grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0).item()
            step_loss = all_sum([step_loss], device)[0]
            if not (math.isfinite(grad_norm) and math.isfinite(step_loss)):
                optimizer.zero_grad(set_to_none=False)
                return step_loss, grad_norm, "non-finite"  # never reaches the weights
            optimizer.step()
            losses.append(step_loss)
            grad_norms.append(grad_norm)
    if not losses:
        return 0.0, 0.0, skipped
    return sum(losses) / len(losses), sum(grad_norms) / len(grad_norms), None


@torch.no_grad()
def evaluate(model, tokenizer, examples, cfg, rank, world, device, batch=32) -> float:
    """Greedy pass@1 in eval mode, with the training run's thought-by-thought limits; each
    process scores its share of the problems."""
    was_training = model.training
    model.eval()
    shard = examples[rank::world]
    correct = 0.0
    for i in range(0, len(shard), batch):
        chunk = shard[i:i + batch]
        chains = sample(model, tokenizer, [ex["prompt_ids"] for ex in chunk], 1, cfg.max_new_tokens, greedy=True,
                        max_thought_tokens=cfg.max_thought_tokens, max_thoughts=cfg.max_thoughts)
        correct += sum(rewards(chunk, [localize.decode(tokenizer, chain.ids) for (chain,) in chains]))
    model.train(was_training)
    correct, count = all_sum([correct, len(shard)], device)
    return correct / max(count, 1)


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


def load_resume_state(cfg: Config) -> tuple[Path, dict]:
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


def has_test_split(name: str) -> bool:
    """Whether a dataset name gives evaluation problems of its own (a test split, or, for the
    toy task, problems drawn with another seed)."""
    if name in BENCHMARKS:
        return BENCHMARKS[name][2] != BENCHMARKS[name][3]
    return name not in ("code", "lcb") and not Path(name).is_file()


def train_and_eval_examples(cfg: Config, rank: int) -> tuple[list[dict], list[dict]]:
    """The training problems and at most --eval-size evaluation problems, never the same ones
    unless asked for: with --eval-dataset the overlap (same question) is counted and printed;
    without it, evaluation uses the test split of --dataset, or, when it has none, a slice held
    out of it (the same for every seed), and training drops any problem evaluation uses."""
    train_examples = load_examples(cfg.dataset, True, cfg)
    if cfg.eval_dataset or has_test_split(cfg.dataset):
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


def dump_rollouts(path: Path, step: int, rollouts: list[Rollout], policy: Policy, rank: int, world: int) -> None:
    """Every sequence sampled in a step, one JSON line each: trained rollouts with their reward
    and advantage, and the untrained ones (parents, localization replies). Written by rank 0."""
    advantages = group_advantages(torch.tensor([r.reward for r in rollouts]),
                                  torch.tensor([r.group for r in rollouts])).tolist()
    per_rank = policy.cfg.prompts_per_step // world  # indices made global: rank r holds prompts r*per_rank...
    records = [{"step": step, "prompt_index": rank * per_rank + r.prompt_index, "kind": r.kind,
                "group": rank * 2 * per_rank + r.group, "reward": r.reward, "advantage": advantage,
                "text": policy.text(r.response_ids), "finish": r.finish, "n_thoughts": r.n_thoughts,
                "new_tokens": len(r.response_ids), "prefix_tokens": r.prefix_len, "reset_step": r.reset_step,
                "prefix_text": policy.text(r.prompt_ids[len(r.prompt_ids) - r.prefix_len:]) if r.prefix_len else None}
               for r, advantage in zip(rollouts, advantages)]
    records += [{"step": step, "group": None, "advantage": None, **record,
                 "prompt_index": rank * per_rank + record["prompt_index"]} for record in policy.untrained]
    if dist.is_initialized():
        every = [None] * world
        dist.all_gather_object(every, records)
        records = [record for part in every for record in part]
    if rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(record) + "\n" for record in records))


def train(cfg: Config, make_rollouts=grpo_rollouts) -> None:
    """Sample rollouts with `make_rollouts`, update the policy on them, log, evaluate, save."""
    rank, world, device = setup_distributed()
    cfg = dataclasses.replace(cfg, mini_batches=cfg.mini_batches or min(4, cfg.prompts_per_step // world))
    if cfg.prompts_per_step % world or cfg.prompts_per_step // world < cfg.mini_batches:
        raise SystemExit(f"--prompts-per-step {cfg.prompts_per_step} must be divisible by the number of "
                         f"processes ({world}) and give each at least --mini-batches ({cfg.mini_batches}) "
                         "prompts: raise --prompts-per-step or lower --mini-batches.")
    out = Path(cfg.out)
    start, state = 1, {}
    if cfg.resume:
        checkpoint, state = load_resume_state(cfg)
        start = state["step"] + 1
    torch.manual_seed(cfg.seed)
    model, tokenizer = load_model(dataclasses.replace(cfg, model=str(checkpoint)) if cfg.resume else cfg, device)
    ref_model = None
    if cfg.beta > 0:
        ref_model = load_model(cfg, device)[0].eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if state:
        optimizer.load_state_dict(state["optimizer"])

    context = getattr(model.config, "max_position_embeddings", 10**9)
    train_examples, eval_examples = train_and_eval_examples(cfg, rank)
    train_examples, skipped = tokenize_prompts(train_examples, tokenizer, cfg.max_new_tokens, context)
    eval_examples, _ = tokenize_prompts(eval_examples, tokenizer, cfg.max_new_tokens, context)
    if skipped and rank == 0:
        warnings.warn(f"{skipped} prompts leave no room for {cfg.max_new_tokens} new tokens in the "
                      f"model's context of {context}: skipped.")
    if not train_examples:
        raise SystemExit(f"No usable training prompts in '{cfg.dataset}'.")

    policy = Policy(model, tokenizer, cfg)
    stop_requested = []
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        metrics_path = out / "metrics.jsonl"
        if cfg.resume and metrics_path.exists():  # drop lines of steps after the checkpoint
            kept = [line for line in metrics_path.read_text().splitlines() if json.loads(line)["step"] < start]
            metrics_path.write_text("".join(line + "\n" for line in kept))

    def log(record):
        if rank == 0:
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def on_interrupt(signum, frame):
        if stop_requested:  # a second Ctrl-C quits at once
            raise KeyboardInterrupt
        stop_requested.append(True)
        if rank == 0:
            print("\nInterrupted: saving after this step (Ctrl-C again to quit without saving).")

    signal.signal(signal.SIGINT, on_interrupt)
    samples_seen = state.get("samples_seen", 0)
    first_acc = evaluate(model, tokenizer, eval_examples, cfg, rank, world, device) if start == 1 else None
    if first_acc is not None:
        log({"step": 0, "eval_acc": first_acc, "skipped_long_prompts": skipped})
    last_acc, step = first_acc, start - 1
    bar = tqdm(range(start, cfg.steps + 1), initial=start - 1, total=cfg.steps, disable=rank != 0, desc=cfg.dataset)
    for step in bar:
        step_start = time.time()
        step_rng = random.Random(f"{cfg.seed}-{step}-{rank}")  # sampling is reproducible per step and rank
        torch.manual_seed(step_rng.randrange(2**63))
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        model.eval()
        policy.tokens_generated, policy.untrained = 0, []
        rollouts, diagnostics = make_rollouts(policy, step_examples(train_examples, step, cfg, rank, world), step_rng)
        rollout_s = time.time() - step_start
        if cfg.dump_rollouts:
            dump_rollouts(out / "rollouts" / f"step-{step}.jsonl", step, rollouts, policy, rank, world)

        model.train()
        loss, grad_norm, skipped_reason = train_on_rollouts(model, ref_model, optimizer, rollouts, cfg,
                                                            tokenizer.pad_token_id, device)
        train_s = time.time() - step_start - rollout_s

        record = {"step": step, **rollout_metrics(rollouts, diagnostics, device)}
        n_rollouts, tokens, stop = all_sum([len(rollouts), policy.tokens_generated, len(stop_requested)], device)
        samples_seen += int(n_rollouts)
        record.update(loss=loss, grad_norm=grad_norm, lr=lr_at(step, cfg), skipped=skipped_reason,
                      rollout_s=rollout_s, train_s=train_s, samples_seen=samples_seen,
                      tokens_generated=int(tokens))
        if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps:
            last_acc = record["eval_acc"] = evaluate(model, tokenizer, eval_examples, cfg, rank, world, device)
        record["step_s"] = time.time() - step_start
        log(record)
        bar.set_postfix(reward=f"{record['reward_mean']:.2f}", acc=last_acc)
        if rank == 0 and (step % cfg.save_every == 0 or step == cfg.steps or stop):
            save_checkpoint(model, tokenizer, optimizer, {"step": step, "samples_seen": samples_seen,
                                                          "config": dataclasses.asdict(cfg)}, out)
        if stop:
            break
    if rank == 0 and first_acc is not None:
        print(f"eval accuracy: {first_acc:.3f} before training, {last_acc:.3f} after {step} steps")
    if dist.is_initialized():
        check_replicas_identical(model, device)
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


CHOICES = {"loss_agg": ["seq-mean", "token-mean"], "lr_schedule": ["constant", "cosine"],
           "dtype": ["float32", "bfloat16"]}


def parse_config(config_class=Config, argv=None):
    """Fills a config dataclass from the command line; each field's comment is its --help line."""
    import argparse
    import re

    helps = {}
    for cls in reversed(config_class.__mro__[:-1]):
        helps.update(re.findall(r"^\s+(\w+): [^=]+=[^#]*#\s*(.*)$", inspect.getsource(cls), re.M))
    parser = argparse.ArgumentParser(description=sys.modules[config_class.__module__].__doc__.split("\n")[0])
    for f in dataclasses.fields(config_class):
        flag = "--" + f.name.replace("_", "-")
        if f.type is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=helps.get(f.name))
        else:
            kind = next((t for t in (int, float) if f.type in (t, t | None)), str)
            parser.add_argument(flag, type=kind, default=f.default,
                                choices=CHOICES.get(f.name), help=helps.get(f.name), metavar=f.name.upper())
    return config_class(**vars(parser.parse_args(argv)))


if __name__ == "__main__":
    train(parse_config())
