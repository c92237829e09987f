r"""Sampling for RL on reasoning: many responses per prompt in one batched `generate` call,
each prompt prefilled once, generated thought by thought as the paper's authors do.

The protocol (PAPER.md section 5b): a thought ends at `</thought>` or after `max_thought_tokens`
tokens, and the next one continues; a response ends after the thought that contains `\boxed{`,
at end of sequence, after `max_thoughts` thoughts, or before a thought that could not fit whole
in its budget of new tokens. The authors call the model once per thought and re-prefill from a
prefix cache; here a `StoppingCriteria` (`ThoughtStopper`) ends each row of one `generate` call
when its chain ends, keeping one KV cache per response: the same tokens. With
`cache="paged"`, transformers' continuous batching runs the rows instead, and the same stopper
cancels each row when its chain ends.

    chains = sample(model, tokenizer, prompt_ids, n=8, max_new_tokens=4096, temperature=0.7,
                    top_p=0.95, max_thought_tokens=256, max_thoughts=20)
    chains[i][j].ids, chains[i][j].thought_ends, chains[i][j].finish   # response j of prompt i
"""
import copy
import functools
import inspect
import time
from dataclasses import dataclass

import torch
from transformers import DynamicCache, GenerationConfig, StaticCache, StoppingCriteria, StoppingCriteriaList

import localize


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


def cache_argument(model) -> str:
    """The name of the KV cache argument of `model.forward`: `cache` in recent transformers,
    `past_key_values` in earlier 5.x."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def uses_sliding_window(model) -> bool:
    """Does any attention layer see only a window of the latest tokens (gemma-3, Mistral-style)?
    Its KV cache then counts positions differently, and a shared prefix is not reused for it where
    that would matter (a static cache's prefix, the update's shared context)."""
    config = model.config.get_text_config()
    types = getattr(config, "layer_types", None)
    if types is not None:
        return any("sliding" in kind for kind in types)
    return getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True)


def eos_ids(model, tokenizer) -> set[int]:
    """The ids that end a response: the model's generation config's and the tokenizer's eos."""
    eos = model.generation_config.eos_token_id
    eos = {tokenizer.eos_token_id} if eos is None else set(eos if isinstance(eos, list) else [eos])
    return eos | {tokenizer.eos_token_id}


@dataclass
class Chain:
    """One generated response: its token ids, where each of its thoughts ends, and why it ended."""
    ids: list[int]  # generated tokens, ending with eos if the model ended the response
    thought_ends: list[int]  # exclusive end of each thought in ids: thought k is ids[ends[k-2]:ends[k-1]]
    finish: str  # "answer" (a thought held \boxed{), "eos", "max_thoughts" or "budget"


@functools.cache
def tokens_holding(tokenizer, character: str) -> frozenset[int]:
    """The ids whose text holds `character`: only such a token can complete a delimiter that
    ends with it. Decoding the vocabulary takes a second, so it is done once per tokenizer."""
    pieces = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return frozenset(i for i, piece in enumerate(pieces) if character in piece)


class ThoughtStopper(StoppingCriteria):
    r"""Thought-by-thought stopping, row by row, inside one batched `generate` call (PAPER.md 5b).

    A thought ends with the token that completes `</thought>`, or after `max_thought_tokens`
    tokens. A chain ends after the thought that contains `\boxed{` ("answer"), at end of sequence
    ("eos"), after its `max_thoughts`-th thought ("max_thoughts"), or, before a thought that could
    not fit whole in its budget of new tokens ("budget"). So a chain is never longer than its
    budget and no thought is cut by it. The authors call the model once per thought; stopping
    rows here instead keeps one KV cache for the whole chain.
    """

    def __init__(self, tokenizer, budgets: list[int], max_thoughts: list[int], max_thought_tokens: int,
                 stop_ids: set[int], delimiter: str = localize.DELIMITER):
        self.tokenizer, self.stop_ids, self.delimiter = tokenizer, stop_ids, delimiter
        self.budgets, self.max_thoughts, self.max_thought_tokens = budgets, max_thoughts, max_thought_tokens
        self.thought_ends = [[] for _ in budgets]
        self.finish: list[str | None] = [None] * len(budgets)
        self.generated = [[] for _ in budgets]  # the kept tokens of each row: one more per call until it ends
        self.may_close = tokens_holding(tokenizer, delimiter[-1])

    def text(self, ids: list[int]) -> str:
        return localize.decode(self.tokenizer, ids)

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        # Called once per new token: only the last column is new (copying all of input_ids each
        # time would cost O(length^2)).
        for row, token in enumerate(input_ids[:, -1].tolist()):
            self.add(row, token)
        return torch.tensor([f is not None for f in self.finish], device=input_ids.device)

    def add(self, row: int, token: int) -> bool:
        """Take the next token of a row, unless its chain has ended; has it ended now?"""
        if self.finish[row] is not None:
            return True
        ids, ends = self.generated[row], self.thought_ends[row]
        ids.append(token)
        t, thought_start = len(ids), ends[-1] if ends else 0
        if token in self.stop_ids:
            # eos closes the current thought; after a thought with no text it joins the last
            # one, and a chain that is only eos has no thought at all
            if self.text(ids[thought_start:t]).strip():
                ends.append(t)
            elif ends:
                thought_start, ends[-1] = ends[-2] if len(ends) > 1 else 0, t
            answered = bool(ends) and "\\boxed{" in self.text(ids[thought_start:t])
            self.finish[row] = "answer" if answered else "eos"
        elif token in self.may_close and self.completes_delimiter(ids[thought_start:t]):
            self.end_thought(row, thought_start, t)
        elif t - thought_start == self.max_thought_tokens:
            self.end_thought(row, thought_start, t)
        return self.finish[row] is not None

    def completes_delimiter(self, thought: list[int]) -> bool:
        """Does the last token complete the delimiter? The delimiter's characters span at most
        len(delimiter) tokens, so a window of that many decodes enough of the thought."""
        window = thought[-len(self.delimiter):]
        return self.delimiter in self.text(window) and self.delimiter not in self.text(window[:-1])

    def end_thought(self, row: int, thought_start: int, t: int) -> None:
        """The thought ids[thought_start:t] is over; so is the chain if one of its limits is hit."""
        self.thought_ends[row].append(t)
        if "\\boxed{" in self.text(self.generated[row][thought_start:t]):
            self.finish[row] = "answer"
        elif len(self.thought_ends[row]) >= self.max_thoughts[row]:
            self.finish[row] = "max_thoughts"
        elif t + self.max_thought_tokens > self.budgets[row]:
            self.finish[row] = "budget"


def static_shape(rows: int, length: int) -> tuple[int, int]:
    """Rows and cache length of a static cache that holds `rows` sequences of `length` tokens:
    rows rounded up to a power of two, length to a multiple of 256. A compiled decoding step is
    recompiled for each new shape; the rounding keeps a training run to a few shapes.

    >>> static_shape(24, 300), static_shape(64, 512), static_shape(1, 1)
    ((32, 512), (64, 512), (1, 256))
    """
    return 1 << (rows - 1).bit_length(), -(-length // 256) * 256


class ExtraRowsStop(StoppingCriteria):
    """The criteria for the first `rows` rows of a batch; every row after them is done at once
    (the rows a static cache's shape adds, whose tokens nobody reads)."""

    def __init__(self, criteria: list[StoppingCriteria], rows: int):
        self.criteria, self.rows = criteria, rows

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        done = torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        done[:self.rows] = False
        scores = scores[:self.rows] if isinstance(scores, torch.Tensor) else scores
        for criterion in self.criteria:
            done[:self.rows] |= criterion(input_ids[:self.rows], scores, **kwargs)
        return done


@torch.no_grad()
def sample(model, tokenizer, prompts: list[list[int]], n: int, max_new_tokens: int | list[int],
           temperature: float = 1.0, top_p: float = 1.0, greedy: bool = False,
           max_thought_tokens: int | None = None, max_thoughts: int | list[int] = 10**9,
           cache: str = "dynamic") -> list[list[Chain]]:
    """n responses for each prompt, in one batched `generate` call: out[i][j] is response j of
    prompt i.

    With `max_thought_tokens`, generation is thought by thought (`ThoughtStopper`); without, a
    response ends at eos or after `max_new_tokens`, as one thought. `max_new_tokens` and
    `max_thoughts` are one number, or one per prompt: a reset suffix gets what its parent's
    prefix left of them. A prompt left no room for a whole thought gets empty responses.

    With n > 1, each prompt is prefilled once and its KV cache copied to its n samples, instead
    of prefilling the same prompt n times. The cache covers all but the last prompt token:
    `generate` must still be fed at least one new token, else it has no logits to start from.
    The prefill keeps the logits of one position only (the lm head on every prompt position
    would cost a third of the prefill on a 49k vocabulary, for logits nobody reads). With
    n = 1 there is nothing to share, and `generate` prefills by itself.

    `cache="static"` generates into a preallocated KV cache (`StaticCache`), for which `generate`
    compiles the decoding step on a GPU (torch.compile, CUDA graphs). A compiled
    step serves one shape only, so the shapes are rounded up (`static_shape`) and the extra rows,
    copies of the last one, are stopped at their first token. Greedy tokens are the same with
    either cache; sampled ones follow the same distribution but differ, since the extra rows
    draw random numbers too.

    `cache="paged"` hands the rows to transformers' continuous batching instead
    (`generate_continuously`): the same greedy tokens, sampled ones from the same distribution.
    """
    budgets = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(prompts)
    thoughts = max_thoughts if isinstance(max_thoughts, list) else [max_thoughts] * len(prompts)
    smallest = max_thought_tokens or 1
    out = [[Chain([], [], "budget" if budgets[i] < smallest else "max_thoughts") for _ in range(n)]
           for i in range(len(prompts))]
    live = [i for i in range(len(prompts)) if budgets[i] >= smallest and thoughts[i] >= 1]
    if not live:
        return out
    rows = [i for i in live for _ in range(n)]  # the prompt of each generated row
    stop = eos_ids(model, tokenizer)
    stopper = None
    if max_thought_tokens:
        stopper = ThoughtStopper(tokenizer, [budgets[i] for i in rows], [thoughts[i] for i in rows],
                                 max_thought_tokens, stop)
    # Every sampling knob is set explicitly: a model's own generation_config (for example
    # top_k=20, repetition_penalty=1.05) would otherwise change the distribution we train on.
    gen_config = GenerationConfig(
        do_sample=not greedy, temperature=temperature if not greedy else None,
        top_p=top_p if not greedy else None, top_k=0 if not greedy else None, repetition_penalty=1.0,
        max_new_tokens=max(budgets[i] for i in live), pad_token_id=tokenizer.pad_token_id, eos_token_id=sorted(stop))
    if cache == "paged":
        tokens = generate_continuously(model, [prompts[i] for i in live], n, [budgets[i] for i in live], gen_config,
                                       stopper)
    else:
        tokens = generate_padded(model, tokenizer, [prompts[i] for i in live], n, gen_config, stopper, cache)
    if stopper:  # it kept each row's tokens up to where its chain ended
        for row, i in enumerate(rows):
            out[i][row % n] = Chain(stopper.generated[row], stopper.thought_ends[row], stopper.finish[row])
        return out
    for row, (i, row_tokens) in enumerate(zip(rows, tokens)):
        end = next((t + 1 for t, token in enumerate(row_tokens[:budgets[i]]) if token in stop), None)
        kept = row_tokens[:end or budgets[i]]
        out[i][row % n] = Chain(kept, [len(kept)], "budget" if end is None else "eos")
    return out


def generate_padded(model, tokenizer, prompts: list[list[int]], n: int, gen_config: GenerationConfig,
                    stopper: ThoughtStopper | None, cache: str) -> list[list[int]]:
    """One left-padded `generate` call for n rows per prompt, each prompt prefilled once (see
    `sample`); the new tokens of each row, up to where the whole batch stopped."""
    ids, mask = left_pad(prompts, tokenizer.pad_token_id, model.device)  # (prompts, seq)
    cache_arg = cache_argument(model)
    rows = len(prompts) * n
    n_rows, cache_len = static_shape(rows, ids.shape[1] + gen_config.max_new_tokens) if cache == "static" else (rows, 0)

    def widen(t: torch.Tensor) -> torch.Tensor:  # (prompts, ...) -> (n_rows, ...): n copies of each, then extras
        t = t.repeat_interleave(n, 0)
        return torch.cat([t, t[-1:].expand(n_rows - len(t), *t.shape[1:])]) if n_rows > len(t) else t

    kv = StaticCache(config=model.config, max_cache_len=cache_len) if cache == "static" else None
    # (a sliding-window layer's dynamic cache keeps only the window, which a static cache cannot
    # take over: there, generate prefills every row itself)
    if n > 1 and ids.shape[1] > 1 and not (kv is not None and uses_sliding_window(model)):
        shared = DynamicCache(config=model.config)
        keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
        model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions(mask[:, :-1]),
              use_cache=True, **{cache_arg: shared}, **keep)
        if kv is None:
            shared.batch_repeat_interleave(n)
            kv = shared
        else:  # copied into the static cache's preallocated tensors
            for layer, prefix in zip(kv.layers, shared.layers):
                layer.update(widen(prefix.keys), widen(prefix.values))
    criteria = [stopper] if stopper else []
    if n_rows > rows:
        criteria = [ExtraRowsStop(criteria, rows)]
    generated = model.generate(input_ids=widen(ids), attention_mask=widen(mask), **{cache_arg: kv},
                               generation_config=gen_config, stopping_criteria=StoppingCriteriaList(criteria))
    return generated[:rows, ids.shape[1]:].tolist()


STALL_SECONDS = 600  # continuous batching with no new token for this long is stuck, not slow


def generate_continuously(model, prompts: list[list[int]], n: int, budgets: list[int], gen_config: GenerationConfig,
                          stopper: ThoughtStopper | None) -> list[list[int]]:
    """transformers' continuous batching, with a paged KV cache: each row is a request of its own
    that joins the running batch when there is room and leaves it as soon as it is done, so a short
    row frees its place for a waiting one. Each prompt is prefilled once and forked into its n rows
    (row j * n + c is sample c of prompt j). The tokens of each row stream to `stopper`, and a row is
    cancelled as soon as its chain ends (tokens generated after that, before the cancellation lands,
    are dropped). Returns the tokens of each row."""
    from transformers import ContinuousBatchingConfig

    # (transformers 5.24 fails to fork a one-token prompt: then every row is a request of its own)
    fork = n > 1 and min(map(len, prompts)) > 1
    config = copy.deepcopy(gen_config)
    config.num_return_sequences = n if fork else 1
    page, rows = 256, len(prompts) * n
    # The cache holds the longest the rows can get, so that no row ever waits for room (left to
    # itself, it takes most of the free memory). Tokens per forward pass: every row at once, and
    # prompts prefilled 512 tokens at a time at least; the attention mask of a forward pass grows
    # with them (the default, 8,192, made a mask of gigabytes). transformers seeds torch's
    # generator with the seed given, drawn from that generator: a run stays reproducible, except
    # that a cancelled row may or may not take one more draw, depending on timing.
    pages = sum(n * -(-(len(prompt) + budget) // page) for prompt, budget in zip(prompts, budgets))
    settings = ContinuousBatchingConfig(page_size=page, num_blocks=pages + len(prompts),
                                        max_batch_tokens=max(rows, 512),
                                        seed=int(torch.randint(0, 2**31 - 1, ()).item()))
    attention = model.config._attn_implementation  # continuous batching switches it while it runs
    manager = None
    tokens = [[] for _ in range(rows)]
    try:
        manager = model.init_continuous_batching(generation_config=config, continuous_batching_config=settings)
        request_row = {}
        for j, (prompt, budget) in enumerate(zip(prompts, budgets)):
            for c in range(1 if fork else n):
                request = manager.add_request(prompt, request_id=f"prompt-{j}-{c}", max_new_tokens=budget,
                                              streaming=True)
                request_row[request] = j * n + c
            if fork:  # the n - 1 other rows of the prompt, forked from it after its prefill
                request_row.update({f"{request}__child#{c}": j * n + 1 + c for c in range(n - 1)})
        manager.start()  # after every request is queued: the first batches do not depend on timing
        pending, last_result = set(request_row.values()), time.monotonic()
        while pending:
            result = manager.get_result(timeout=1)
            if result is None:
                if not manager.is_running() or time.monotonic() - last_result > STALL_SECONDS:
                    raise RuntimeError(f"continuous batching stopped, or made no progress for {STALL_SECONDS} s, "
                                       "before every row was generated; --kv-cache dynamic does not use it")
                continue
            last_result = time.monotonic()
            row = request_row[result.request_id]
            if row not in pending:
                continue  # a cancelled row's late tokens
            if result.error:
                raise RuntimeError(f"continuous batching failed on a row: {result.error}")
            for token in result.generated_tokens[len(tokens[row]):]:
                tokens[row].append(token)
                if stopper and stopper.add(row, token):
                    manager.cancel_request(result.request_id)
                    pending.discard(row)
                    break
            if result.is_finished():
                pending.discard(row)
    finally:
        if manager is not None and manager.is_running():
            manager.stop(block=True, hard_stop=True)  # every row needed is in; after an error, do not wait
        if model.config._attn_implementation != attention:  # (stop restores it only for a started manager)
            model.set_attn_implementation(attention)
    return tokens
