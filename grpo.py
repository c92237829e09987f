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
- All weights are trained by default, not LoRA adapters, so the default lr for a pretrained model
  is 1e-6, not their 5e-5; `--lora-rank 64 --lr 5e-5` is their setting.
- The KV cache of a chain is kept across its thoughts (they re-prefill from a prefix cache): the
  same tokens, one `generate` call instead of one per thought.
- The solver prompt goes through the chat template when the tokenizer has one (theirs is a raw
  text template), so instruct models see the format they were tuned on.
- A response ends at its first end-of-sequence token. Their loop calls the model again after a
  thought that ended with eos (the eos is not kept) and stops only at an empty output; text a
  model writes after its own eos is not what its policy chose to end with, so it is not sampled.

RRPO and SRPO (rrpo.py, srpo.py) change only how the rollouts of a prompt are built: they pass
their own `make_rollouts` to `train()`; everything else here is shared.

    python grpo.py                                        # built-in demo on the CPU (toy.py)
    python grpo.py --model Qwen2.5-1.5B --dataset gsm8k   # one GPU
    torchrun --nproc_per_node 8 grpo.py --model Qwen2.5-1.5B --dataset gsm8k
"""

import dataclasses
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm
from transformers import DynamicCache

import localize
import run
from data import rewards
from generation import Chain, cache_argument, left_pad, positions, sample, uses_sliding_window


def option(default, help: str, choices=None, at_least=None, above=None, at_most=None):
    """A Config field with its --help line, allowed values or range, kept with the field itself
    (`run.check_ranges` refuses a value out of range)."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "at_least": at_least,
                                                        "above": above, "at_most": at_most})


def or_default(value, default):
    """value, or default when it is unset (None). Unlike `value or default`, keeps a 0."""
    return default if value is None else value


@dataclass
class Config:
    model: str = option("toy", "hub id, short name (Qwen2.5-1.5B), local folder, .gguf file, or a baby model: "
                               "toy, toy-hard (slips mostly on multiplications), toy-slippy (slips on a "
                               "quarter of its steps) or toy-late (slips mostly on the last step)")
    dataset: str | None = option(None, "gsm8k, math500, aime24, amc23, minerva, olympiadbench, toy (or toy-N: "
                                       "chains of N operations), code, lcb, hub id or local file; default toy "
                                       "for a baby model, else gsm8k")
    eval_dataset: str | None = option(None, "same choices; default: the test split of --dataset, or problems "
                                            "held out of it")
    question_field: str | None = option(None, "field holding the question in a local/hub dataset (detected "
                                              "when unset)")
    answer_field: str | None = option(None, "field holding the gold answer (detected when unset)")
    steps: int | None = option(None, "optimizer steps; default 20 for a baby model, else 60", at_least=1)
    prompts_per_step: int | None = option(None, "prompts per rollout batch, summed over all processes; "
                                                "default 8 for a baby model, else 32 (the paper)", at_least=1)
    mini_batches: int | None = option(None, "optimizer steps per rollout batch, each on a slice of its "
                                            "prompts; default 1 for a baby model, else 4 (the paper), or "
                                            "fewer if a process has fewer prompts", at_least=1)
    group_size: int = option(8, "G: scored rollouts per prompt (2 or more: advantages compare them)", at_least=2)
    max_new_tokens: int | None = option(None, "response budget in tokens, shared by a reset's prefix and "
                                              "suffix; default 96 for a baby model, else 4096", at_least=1)
    max_thought_tokens: int | None = option(None, "a thought ends at </thought> or after this many tokens; "
                                                  "default 16 for a baby model, else 256", at_least=1)
    max_thoughts: int = option(20, "a response ends after this many thoughts", at_least=1)
    temperature: float | None = option(None, "sampling temperature; the log-probs are computed at the same "
                                             "temperature; default 1 for a baby model, else 0.7", above=0)
    top_p: float | None = option(None, "nucleus sampling; default 1 (none) for a baby model, else 0.95",
                                 above=0, at_most=1)
    lr: float | None = option(None, "peak learning rate of AdamW; default 1e-4 for a baby model, 5e-5 for "
                                    "LoRA (the paper), else 1e-6", at_least=0)
    weight_decay: float = option(0.01, "AdamW weight decay", at_least=0)
    warmup_steps: int = option(0, "linear warmup steps", at_least=0)
    lr_schedule: str = option("constant", "after warmup: constant or cosine", choices=["constant", "cosine"])
    beta: float = option(0.0, "KL coefficient to a frozen reference model; 0 loads no reference", at_least=0)
    clip_eps: float = option(0.2, "PPO ratio clipping, used when --updates-per-batch > 1", above=0)
    updates_per_batch: int = option(1, "passes over each rollout batch; 1 = on-policy, the paper's setting; "
                                       "more use PPO's clipped ratio", at_least=1)
    loss_agg: str = option("seq-mean", "seq-mean (the paper) or token-mean", choices=["seq-mean", "token-mean"])
    eval_every: int = option(20, "steps between evaluations; 0 = only at the end", at_least=0)
    eval_size: int | None = option(None, "problems in each evaluation; 0 = no evaluation; default 500 for a "
                                         "baby model, else 100", at_least=0)
    eval_temperature: float | None = option(None, "0 = greedy pass@1; above 0 = the share of problems solved "
                                                  "by one sample at this temperature; default: the sampling "
                                                  "temperature for a baby model (its slips are sampled, greedy "
                                                  "decoding hides them), else 0", at_least=0)
    save_every: int = option(50, "steps between checkpoints; 0 = only the final one, which is always written",
                             at_least=0)
    out: str = option("runs/grpo", "output folder: metrics.jsonl and checkpoint-{step}/")
    dump_rollouts: bool = option(False, "write every sampled sequence of step N to "
                                        "{out}/rollouts/step-{N}.jsonl")
    resume: bool = option(False, "continue from the newest complete checkpoint in --out")
    overwrite: bool = option(False, "delete the files of an earlier run in --out (metrics, checkpoints, "
                                    "dumps) and start afresh; without it, a used --out is refused")
    seed: int = option(0, "seeds data order, sampling and initialisation of everything random")
    lora_rank: int = option(0, "LoRA rank on every linear layer but the lm head (the paper: 64); 0 trains "
                               "all weights. Needs `pip install peft`", at_least=0)
    lora_alpha: float = option(64.0, "LoRA scale alpha (the update is alpha / rank * B A); the paper: 64",
                               above=0)
    lora_fold: bool = option(True, "sample with each LoRA adapter folded into its layer's weight (one matrix "
                                   "product per layer instead of three, for one more copy of those weights "
                                   "while sampling); --no-lora-fold samples through the adapters")
    dtype: str = option("auto", "weights: auto = float32 for a full fine-tune (bf16 autocast on GPU) and "
                                "bfloat16 frozen base weights for LoRA on GPU; or float32, bfloat16",
                        choices=["auto", "float32", "bfloat16"])
    grad_checkpointing: bool | None = option(None, "recompute activations in the backward pass to save "
                                                   "memory; default: on for models over 1B parameters")
    micro_batch: int = option(8, "sequences per training forward; bounds the memory", at_least=1)
    kv_cache: str = option("dynamic", "KV cache of sampling: dynamic (grows as tokens come), static "
                                      "(preallocated; on a GPU, generate compiles the decoding step, which "
                                      "takes a while once per shape), or paged (transformers' continuous "
                                      "batching: rows leave and join the batch one by one; its sampled tokens "
                                      "are not reproducible run to run); greedy tokens are the same every way, "
                                      "sampled ones differ but follow the same distribution",
                           choices=["dynamic", "static", "paged"])

    def __post_init__(self):
        # The toy model is tiny and its solutions short; a pretrained model follows the paper
        # where it is specific (section 5), except the lr: the paper's 5e-5 is for LoRA.
        toy = run.is_baby_model(self.model)
        self.dataset = or_default(self.dataset, "toy" if toy else "gsm8k")
        self.temperature = or_default(self.temperature, 1.0 if toy else 0.7)
        self.top_p = or_default(self.top_p, 1.0 if toy else 0.95)
        self.eval_temperature = or_default(self.eval_temperature, self.temperature if toy else 0.0)
        self.steps = or_default(self.steps, 20 if toy else 60)
        self.prompts_per_step = or_default(self.prompts_per_step, 8 if toy else 32)
        self.eval_size = or_default(self.eval_size, 500 if toy else 100)
        self.mini_batches = or_default(self.mini_batches, 1 if toy else None)  # None: see train_on_rollouts
        self.max_new_tokens = or_default(self.max_new_tokens, 96 if toy else 4096)
        self.max_thought_tokens = or_default(self.max_thought_tokens, 16 if toy else 256)
        self.lr = or_default(self.lr, 1e-4 if toy else 5e-5 if self.lora_rank else 1e-6)
        run.check_ranges(self)  # before the min below, which would hide a --max-thought-tokens 0
        self.max_thought_tokens = min(self.max_thought_tokens, self.max_new_tokens)
        if Path(self.out).exists() and not Path(self.out).is_dir():
            raise ValueError(f"--out {self.out}: is a file; name a folder (new, or one of an earlier run).")
        if self.resume and self.overwrite:
            raise ValueError("--resume and --overwrite contradict each other: continue the run in --out, or "
                             "replace it, not both.")


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


# ---------------------------------------------------------------------------------------------
# Rollouts: the only part RRPO and SRPO replace
# ---------------------------------------------------------------------------------------------


@dataclass
class Rollout:
    """One scored response and how the loss sees it."""
    prompt_ids: list[int]  # context: the prompt, plus the parent's prefix for a reset suffix
    response_ids: list[int]  # generated tokens; the only tokens the loss trains on
    reward: float
    group: int  # advantages are normalised within each group
    finish: str = "eos"  # why its generation ended: answer, eos, max_thoughts or budget (see Chain)
    prompt_index: int = 0  # which of the step's prompts it answers; mini-batches split by prompt
    thought_ends: list[int] = dataclasses.field(default_factory=list)  # of response_ids (see Chain)
    prefix_len: int = 0  # suffixes: how many of prompt_ids are the parent's prefix
    reset_step: int | None = None  # suffixes: the parent's step k that the suffix resamples
    prefix_thoughts: int = 0  # suffixes: thoughts of the parent that the prefix holds (k - 1 with a delimiter)

    @property
    def kind(self) -> str:
        """fresh, or suffix (of a reset)."""
        return "fresh" if self.reset_step is None else "suffix"

    @property
    def truncated(self) -> bool:
        """Ended by a limit, without an answer."""
        return self.finish in ("max_thoughts", "budget")

    @property
    def n_thoughts(self) -> int:
        """Thoughts of the whole chain: a suffix's count on from those of its prefix."""
        return len(self.thought_ends) + self.prefix_thoughts


class Policy:
    """The model being trained, as the rollout builders see it: sample, decode, score."""

    def __init__(self, model, tokenizer, cfg: Config):
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        self.tokens_generated = 0
        self.decode_steps = 0  # sequential: each generate call runs as many as its longest response
        self.untrained = []  # sequences sampled but never trained on (parents, localizations), for dumps

    def sample(self, prompts, n, max_new_tokens=None, max_thoughts=None, temperature=None, greedy=False,
               thoughts=True) -> list[list[Chain]]:
        """Chains thought by thought under the config's limits; `thoughts=False` for free text
        (a localization reply), which ends at eos or after max_new_tokens."""
        cfg = self.cfg
        with run.lora_folded(self.model, cfg.lora_fold):
            chains = sample(self.model, self.tokenizer, prompts, n,
                            cfg.max_new_tokens if max_new_tokens is None else max_new_tokens,
                            cfg.temperature if temperature is None else temperature, cfg.top_p, greedy,
                            cfg.max_thought_tokens if thoughts else None,
                            cfg.max_thoughts if max_thoughts is None else max_thoughts, cfg.kv_cache)
        lengths = [len(chain.ids) for group in chains for chain in group]
        self.tokens_generated += sum(lengths)
        self.decode_steps += max(lengths, default=0)
        return chains

    def text(self, ids: list[int]) -> str:
        return localize.decode(self.tokenizer, ids)

    def remember(self, kind: str, prompt_index: int, ids: list[int], finish: str, n_thoughts=None,
                 reward=None) -> None:
        """Keep a sequence that is sampled but not trained on (a parent, a localization reply)
        for --dump-rollouts."""
        if self.cfg.dump_rollouts:
            self.untrained.append(dict(kind=kind, prompt_index=prompt_index, ids=ids, finish=finish,
                                       n_thoughts=n_thoughts, reward=reward))

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
# Log-probs and the update
# ---------------------------------------------------------------------------------------------


def shared_context(rollouts: list[Rollout]) -> int:
    """How many leading context tokens all the rollouts share, leaving each at least one of its
    own (the token before its response).

    >>> shared_context([Rollout([5, 6, 7, 8], [9], 0.0, 0), Rollout([5, 6, 7, 2, 3], [4], 0.0, 0)])
    3
    """
    first, shared = rollouts[0].prompt_ids, min(len(r.prompt_ids) for r in rollouts) - 1
    for r in rollouts[1:]:
        shared = next((k for k in range(shared) if r.prompt_ids[k] != first[k]), shared)
    return max(shared, 0)


def response_logprobs(model, rollouts: list[Rollout], pad_id: int, temperature: float):
    """log pi(response token | everything before it) for a micro-batch of rollouts.

    Returns logprobs and mask, both (batch, longest response). Sequences are left-padded, so every
    response ends at the last position: the lm head runs only on the response positions, and the
    log-softmax covers one micro-batch at a time. Shorter responses are padded on the left (mask 0).

    The context all the rollouts share (a group's prompt) goes through the model once and its KV
    cache is copied to every row, as in sampling: for 8 rollouts of a 200-token prompt with 60-token
    responses, 687 token positions instead of 2,080. Gradients flow through the shared part as
    through each copy. Not under gradient checkpointing, which switches the KV cache off in training,
    nor for a sliding-window model, whose window would count the padding between the two parts.
    """
    unshareable = (model.training and run.checkpointing_on(model)) or uses_sliding_window(model)
    shared = shared_context(rollouts) if len(rollouts) > 1 and not unshareable else 0
    cache = {}  # the forward's KV cache argument: none, or the shared context's
    if shared:
        kv = DynamicCache(config=model.config)
        cache = {cache_argument(model): kv}
        model(input_ids=torch.tensor([rollouts[0].prompt_ids[:shared]], device=model.device), use_cache=True,
              logits_to_keep=1, **cache)
        kv.batch_repeat_interleave(len(rollouts))
    ids, mask = left_pad([r.prompt_ids[shared:] + r.response_ids for r in rollouts], pad_id, model.device)
    width = max(len(r.response_ids) for r in rollouts)
    logits = model(input_ids=ids, attention_mask=torch.cat([mask.new_ones(len(rollouts), shared), mask], 1),
                   position_ids=shared + positions(mask), use_cache=bool(shared), **cache,
                   logits_to_keep=width + 1).logits[:, :-1].float() / temperature  # (batch, width, vocab)
    targets = ids[:, -width:]
    logprobs = logits.gather(-1, targets[..., None]).squeeze(-1) - logits.logsumexp(-1)
    lengths = torch.tensor([len(r.response_ids) for r in rollouts], device=ids.device)
    response_mask = torch.arange(width, device=ids.device) >= width - lengths[:, None]
    return logprobs, response_mask


def prompt_slices(rollouts: list[Rollout], n_slices: int) -> list[list[int]]:
    """Indices of the rollouts of each mini-batch: the step's prompts cut into n_slices runs of
    consecutive prompts, all the rollouts of a prompt (both groups of a reset) in the same one.

    >>> prompt_slices([Rollout([], [], 0.0, 0, prompt_index=i) for i in (0, 0, 1, 1, 2, 2, 3, 3)], 2)
    [[0, 1, 2, 3], [4, 5, 6, 7]]
    """
    prompts = sorted({r.prompt_index for r in rollouts})
    size, extra = divmod(len(prompts), n_slices)  # the first `extra` slices get one prompt more
    bounds = [k * size + min(k, extra) for k in range(n_slices + 1)]
    chosen = [set(prompts[bounds[k]:bounds[k + 1]]) for k in range(n_slices)]
    return [[i for i, r in enumerate(rollouts) if r.prompt_index in part] for part in chosen]


def micro_batches_by_prompt(indices: list[int], rollouts: list[Rollout], size: int) -> list[list[int]]:
    """`indices` cut into micro-batches of `size`, ordered by prompt first: a prompt's rollouts
    (its fresh solutions and, after a reset, its suffixes, which come later in the buffer) fill
    a micro-batch together, and `response_logprobs` computes their prompt once. The loss is a
    sum over sequences, so the order changes nothing else.

    >>> buffer = [Rollout([], [], 0.0, 0, prompt_index=p) for p in (0, 0, 1, 1, 0, 0, 1, 1)]
    >>> micro_batches_by_prompt(list(range(8)), buffer, 4)
    [[0, 1, 4, 5], [2, 3, 6, 7]]
    """
    ordered = sorted(indices, key=lambda i: rollouts[i].prompt_index)  # stable: buffer order within a prompt
    return [ordered[i:i + size] for i in range(0, len(ordered), size)]


def train_on_rollouts(model, ref_model, optimizer, rollouts, advantages, cfg, pad_id, device):
    """The update(s) on one batch of rollouts and their advantages: `--mini-batches` optimizer
    steps, each on a slice of the prompts, repeated `--updates-per-batch` times. Returns (mean
    loss, mean grad norm, None or why steps were skipped: "non-finite" if any was, "no-signal"
    if all were for lack of signal)."""
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    world = dist.get_world_size() if dist.is_initialized() else 1

    def logprobs_of(net, batch):
        with autocast:
            return response_logprobs(net, [rollouts[i] for i in batch], pad_id, cfg.temperature)

    # With beta = 0, a rollout with A = 0 has exactly zero gradient: leave it out of the forward.
    # So is one with no tokens (a suffix whose prefix left no room for a thought).
    slices = []
    n_slices = cfg.mini_batches or min(4, cfg.prompts_per_step // world)  # the same on every process
    for members in prompt_slices(rollouts, n_slices):
        active = [i for i in members if (advantages[i] != 0 or cfg.beta > 0) and rollouts[i].response_ids]
        micro_batches = micro_batches_by_prompt(active, rollouts, cfg.micro_batch)
        # The loss of a mini-batch is a mean over the sequences (or tokens) of all processes,
        # also the A = 0 ones we do not forward; gradients are averaged over processes below.
        n_active, n_sequences, n_tokens = run.all_sum(
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
            step_loss = run.all_sum([step_loss], device)[0]
            if not (math.isfinite(grad_norm) and math.isfinite(step_loss)):
                optimizer.zero_grad(set_to_none=False)
                skipped = "non-finite"  # this step never reaches the weights
                continue
            optimizer.step()
            losses.append(step_loss)
            grad_norms.append(grad_norm)
    if not losses:
        return 0.0, 0.0, skipped
    return sum(losses) / len(losses), sum(grad_norms) / len(grad_norms), skipped if skipped == "non-finite" else None


@torch.no_grad()
def evaluate(model, tokenizer, examples, cfg, rank, world, device, batch=64) -> float:
    """Greedy pass@1 in eval mode (or one sample per problem at --eval-temperature), with the
    training run's thought-by-thought limits; each process scores its share of the problems."""
    was_training = model.training
    model.eval()
    torch.manual_seed(rank)  # sampled evaluations draw the same random numbers at every step of every run
    shard = examples[rank::world]
    correct = 0.0
    with run.lora_folded(model, cfg.lora_fold):
        for i in range(0, len(shard), batch):
            chunk = shard[i:i + batch]
            chains = sample(model, tokenizer, [ex["prompt_ids"] for ex in chunk], 1, cfg.max_new_tokens,
                            temperature=cfg.eval_temperature or 1.0, top_p=cfg.top_p, greedy=not cfg.eval_temperature,
                            max_thought_tokens=cfg.max_thought_tokens, max_thoughts=cfg.max_thoughts,
                            cache=cfg.kv_cache)
            correct += sum(rewards(chunk, [localize.decode(tokenizer, chain.ids) for (chain,) in chains]))
    model.train(was_training)
    correct, count = run.all_sum([correct, len(shard)], device)
    return correct / max(count, 1)


# ---------------------------------------------------------------------------------------------
# The training loop
# ---------------------------------------------------------------------------------------------


def train(cfg: Config, make_rollouts=grpo_rollouts) -> None:
    """Sample rollouts with `make_rollouts`, update the policy on them, log, evaluate, save."""
    rank, world, device = run.compute_init()
    if cfg.prompts_per_step % world or cfg.prompts_per_step // world < (cfg.mini_batches or 1):
        raise SystemExit(f"--prompts-per-step {cfg.prompts_per_step} must be divisible by the number of "
                         f"processes ({world}) and give each at least --mini-batches ({cfg.mini_batches}) "
                         "prompts: raise --prompts-per-step or lower --mini-batches.")
    lock = run.claim_out(cfg.out, cfg.resume, cfg.overwrite) if rank == 0 else None  # held until the run ends
    checkpoint, state = run.load_resume_state(cfg) if cfg.resume else (None, {})
    torch.manual_seed(cfg.seed)
    model, tokenizer = run.load_model(cfg, device, checkpoint)
    ref_model = run.load_model(cfg, device)[0].eval().requires_grad_(False) if cfg.beta > 0 else None
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    if state:
        optimizer.load_state_dict(state["optimizer"])
    context = getattr(model.config, "max_position_embeddings", 10**9)
    train_examples, eval_examples, skipped = run.prompts_for_training(cfg, tokenizer, context, rank)
    policy = Policy(model, tokenizer, cfg)
    start, samples_seen = state.get("step", 0) + 1, state.get("samples_seen", 0)
    log, interrupt = run.MetricsLog(cfg.out, rank, start), run.Interrupt(rank)

    evaluating = len(eval_examples) > 0  # --eval-size 0 turns evaluation off
    first_acc = (evaluate(model, tokenizer, eval_examples, cfg, rank, world, device)
                 if start == 1 and evaluating else None)
    if start == 1:
        log({"step": 0, "eval_acc": first_acc, "skipped_long_prompts": skipped})
    last_acc, step = first_acc, start - 1
    bar = tqdm(range(start, cfg.steps + 1), initial=start - 1, total=cfg.steps, disable=rank != 0, desc=cfg.dataset)
    for step in bar:
        step_start = time.time()
        step_rng = random.Random(f"{cfg.seed}-{step}-{rank}")  # sampling is reproducible per step and rank
        torch.manual_seed(step_rng.randrange(2**63))
        for group in optimizer.param_groups:
            group["lr"] = run.lr_at(step, cfg)

        # 1. Sample and score the rollouts of this process's prompts.
        model.eval()
        policy.tokens_generated, policy.untrained = 0, []
        rollouts, diagnostics = make_rollouts(policy, run.step_examples(train_examples, step, cfg, rank, world),
                                              step_rng)
        rollout_s = time.time() - step_start
        # 2. Advantages within each group, then the update.
        advantages = group_advantages(torch.tensor([r.reward for r in rollouts]),
                                      torch.tensor([r.group for r in rollouts]))
        model.train()
        loss, grad_norm, skipped_reason = train_on_rollouts(model, ref_model, optimizer, rollouts, advantages, cfg,
                                                            tokenizer.pad_token_id, device)
        train_s = time.time() - step_start - rollout_s

        # 3. Log, evaluate, save.
        if cfg.dump_rollouts:
            run.dump_rollouts(Path(cfg.out) / "rollouts" / f"step-{step}.jsonl", step, rollouts, advantages.tolist(),
                              policy, rank, world)
        record = {"step": step, **run.rollout_metrics(rollouts, diagnostics, device)}
        n_rollouts, tokens, stop = run.all_sum([len(rollouts), policy.tokens_generated, interrupt.requested], device)
        samples_seen += int(n_rollouts)
        record.update(loss=loss, grad_norm=grad_norm, lr=run.lr_at(step, cfg), skipped=skipped_reason,
                      rollout_s=rollout_s, train_s=train_s, samples_seen=samples_seen,
                      tokens_generated=int(tokens))
        if device.type == "cuda":
            record["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        if evaluating and ((cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps):
            last_acc = record["eval_acc"] = evaluate(model, tokenizer, eval_examples, cfg, rank, world, device)
        record["step_s"] = time.time() - step_start
        log(record)
        bar.set_postfix(reward=f"{record['reward_mean']:.2f}", acc=last_acc)
        if rank == 0 and ((cfg.save_every and step % cfg.save_every == 0) or step == cfg.steps or stop):
            run.save_checkpoint(model, tokenizer, optimizer, {"step": step, "samples_seen": samples_seen,
                                                              "config": dataclasses.asdict(cfg)}, Path(cfg.out))
        if stop:
            break
    if rank == 0 and first_acc is not None:
        print(f"eval accuracy: {first_acc:.3f} before training, {last_acc:.3f} after {step} steps")
    run.finish(model, device)
    if lock:
        lock.close()


if __name__ == "__main__":
    train(run.parse_config(Config))
