r"""The built-in demo task: arithmetic chains, whose steps can be checked one by one.

    Start at 7, subtract 5, multiply by 3, add 1.
    7-5=2</thought>2*3=6</thought>6+1=\boxed{7}</thought>

One operation per step, the last step boxes the answer. Unlike a math benchmark, every step of a
solution can be checked, so `first_wrong_step` is a true oracle for the question SRPO asks the
model ("where did this solution go wrong?"), and oracle resets, self resets and random resets can
be compared directly (PAPER.md section 6). `--dataset toy-N` has chains of N operations: the
longer, the more likely a slip somewhere, so N sets the starting accuracy.

The baby model is a 1.1M-parameter Qwen2 with a tokenizer trained in code, warm-started by
supervised training on the solutions of a solver that slips at a set rate and on localization
replies. The four of `MODELS` ship in baby_models/ (4.6 MB each): a warm start on another
processor sums in another order and ends in another model, so the shipped weights are what makes
measured figures reproducible. Other settings are warm-started (about 8 minutes on 2 CPU cores)
and cached. `load_baby_model()` is what `python grpo.py` trains by default, and

    python toy.py --ops 4 [--json]

prints its measured answer and localization accuracy (`evaluate`).
"""
import argparse
import dataclasses
import hashlib
import json
import math
import os
import random
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm import tqdm
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

import data
import localize
import verify
from localize import DELIMITER

OPERATIONS = {"+": "add", "-": "subtract", "*": "multiply by"}
MAX_N_OPS = 8  # the baby model learns chains of 1..MAX_N_OPS operations
DEFAULT_N_OPS = 4  # operations per problem of `--dataset toy`; `--dataset toy-N` has N
DEFAULT_MAX_VALUE = 9  # every value of a chain stays in 1..DEFAULT_MAX_VALUE


# ---------------------------------------------------------------------------------------------
# The task
# ---------------------------------------------------------------------------------------------

def apply(value, operator, operand):
    """One step of a chain: apply(12, "*", 3) == 36."""
    return {"+": value + operand, "-": value - operand, "*": value * operand}[operator]


def make_example(rng, n_ops, max_value):
    """A random chain of `n_ops` operations whose values all stay in 1..max_value.

    Operands are single digits (+ and - by 1..9, * by 2..9), drawn among those that keep the value
    in range. The gold answer is a string, as for any math problem.

    >>> make_example(random.Random(0), n_ops=3, max_value=20)["question"]
    'Start at 13, subtract 1, subtract 9, subtract 2.'
    """
    start = rng.randint(1, max_value)
    value, ops = start, []
    for _ in range(n_ops):
        operands = {
            "+": range(1, min(9, max_value - value) + 1),
            "-": range(1, min(9, value - 1) + 1),
            "*": range(2, min(9, max_value // value) + 1),
        }
        operator = rng.choice([operator for operator, choices in operands.items() if choices])
        operand = rng.choice(operands[operator])
        ops.append((operator, operand))
        value = apply(value, operator, operand)
    words = ", ".join(f"{OPERATIONS[operator]} {operand}" for operator, operand in ops)
    return {"question": f"Start at {start}, {words}.", "answer": str(value), "start": start, "ops": ops}


def make_examples(n, seed, n_ops=DEFAULT_N_OPS, max_value=DEFAULT_MAX_VALUE):
    """`n` examples, the same for the same seed."""
    rng = random.Random(seed)
    return [make_example(rng, n_ops, max_value) for _ in range(n)]


def solve_steps(example):
    r"""The correct solution as a list of steps, each ending with its `</thought>`.

    >>> solve_steps({"start": 7, "ops": [("+", 5), ("*", 3)]})
    ['7+5=12</thought>', '12*3=\\boxed{36}</thought>']
    """
    return chain_steps(example["start"], example["ops"])


def chain_steps(value, ops):
    """The steps that apply `ops` one by one starting from `value`; the last result is boxed."""
    results = chain_values(value, ops)
    return [format_step(before, operator, operand, result, boxed=k == len(ops))
            for k, ((operator, operand), before, result) in enumerate(zip(ops, [value] + results, results), 1)]


def chain_values(value, ops):
    """The values after each of `ops`, starting from `value`: chain_values(7, [("+", 5)]) == [12]."""
    values = []
    for operator, operand in ops:
        value = apply(value, operator, operand)
        values.append(value)
    return values


def format_step(value, operator, operand, result, boxed):
    r"""format_step(36, "-", 4, 32, boxed=True) == '36-4=\\boxed{32}</thought>'"""
    shown_result = f"\\boxed{{{result}}}" if boxed else str(result)
    return f"{value}{operator}{operand}={shown_result}</thought>"


def solve(example):
    r"""The correct solution text.

    >>> solve({"start": 7, "ops": [("+", 5), ("*", 3), ("-", 4)]})
    '7+5=12</thought>12*3=36</thought>36-4=\\boxed{32}</thought>'
    """
    return "".join(solve_steps(example))


# One step: "12*3=36" or, in the last step, "36-4=\boxed{32}". White space around it and the
# delimiter are tolerated: how a solution is cut into steps is not the step's fault.
STEP = re.compile(r"\s*(\d+)([+*-])(\d+)=(?:(\d+)|\\boxed\{(\d+)\})\s*(?:</thought>)?\s*")


def first_wrong_step(example, steps):
    r"""The oracle: the 1-based index of the first wrong step, or None if all are right.

    Step k is right when it reads "a op b=c", a is the value after the steps before it, op and b
    are the k-th operation of the question, c = a op b, and c is boxed exactly in the last step.
    A wrong value, a wrong operation, a copying error, a malformed step, a missing or early
    box: each is wrong at the step where it happens. A solution that stops after a right step
    without a boxed answer is wrong at step len(steps) + 1, the step that is missing; one with
    extra steps after the boxed answer is wrong at the first extra step.

    >>> example = {"start": 7, "ops": [("+", 5), ("*", 3), ("-", 4)]}
    >>> first_wrong_step(example, ["7+5=12</thought>", "12*3=35</thought>", "35-4=\\boxed{31}"])
    2
    >>> first_wrong_step(example, solve_steps(example)) is None
    True
    """
    value = example["start"]
    for k, (operator, operand) in enumerate(example["ops"], 1):
        if k > len(steps):
            return k
        step = STEP.fullmatch(steps[k - 1])
        if step is None:
            return k
        shown_value, shown_operator, shown_operand, plain_result, boxed_result = step.groups()
        result = apply(value, operator, operand)
        is_last = k == len(example["ops"])
        if (int(shown_value), shown_operator, int(shown_operand)) != (value, operator, operand):
            return k
        if (boxed_result if is_last else plain_result) != str(result):
            return k
        value = result
    return len(example["ops"]) + 1 if len(steps) > len(example["ops"]) else None


MISTAKES = ("result", "operand", "operator", "copy")


def inject_error(example, step, rng, mistake=None):
    r"""A wrong solution whose first error is at `step` (1-based), as a list of steps.

    The mistake is one a solver makes: a wrong `result` (12*3=35), a wrong `operand` (12*4=48), a
    wrong `operator` (12+3=15) or a `copy` error that starts from a wrong value (13*3=39); random
    when not given. Later steps carry on correctly from the wrong value, as a solver who does not
    notice would, so the final answer is wrong too (and may go below 0).

    >>> example = {"start": 7, "ops": [("+", 5), ("*", 3), ("-", 4)]}
    >>> inject_error(example, 2, random.Random(0), "operator")
    ['7+5=12</thought>', '12-3=9</thought>', '9-4=\\boxed{5}</thought>']
    """
    mistake = mistake or rng.choice(MISTAKES)
    steps, ops = solve_steps(example), example["ops"]
    value = example["start"]
    for operator, operand in ops[:step - 1]:
        value = apply(value, operator, operand)
    operator, operand = ops[step - 1]
    right_result = apply(value, operator, operand)
    while True:
        shown_value, shown_operator, shown_operand = value, operator, operand
        nudge = rng.choice([-3, -2, -1, 1, 2, 3])
        if mistake == "operand":
            shown_operand = operand + nudge
        elif mistake == "operator":
            shown_operator = rng.choice([other for other in OPERATIONS if other != operator])
        elif mistake == "copy":
            shown_value = value + nudge
        wrong_result = apply(shown_value, shown_operator, shown_operand)
        if mistake == "result":
            wrong_result = right_result + nudge
        if wrong_result != right_result and min(shown_value, shown_operand, wrong_result) >= 0:
            break
    wrong_step = format_step(shown_value, shown_operator, shown_operand, wrong_result,
                             boxed=step == len(ops))
    return steps[:step - 1] + [wrong_step] + chain_steps(wrong_result, ops[step:])


# ---------------------------------------------------------------------------------------------
# The baby model
# ---------------------------------------------------------------------------------------------

def slipping_steps(example, rng, slip_rate, multiply_slip_rate=None, final_slip_rate=None):
    r"""A solution by a solver that slips: each step's result is off by 1 or 2 with probability
    `slip_rate` (`multiply_slip_rate` for a multiplication, `final_slip_rate` for the last step,
    the one that boxes the answer, when given), and later steps carry on from the value shown, as
    a solver who does not notice would.

    >>> slipping_steps({"start": 7, "ops": [("+", 5), ("*", 3)]}, random.Random(0), slip_rate=1.0)
    ['7+5=14</thought>', '14*3=\\boxed{44}</thought>']
    """
    value, steps, ops = example["start"], [], example["ops"]
    for k, (operator, operand) in enumerate(ops, 1):
        result = apply(value, operator, operand)
        rate = multiply_slip_rate if operator == "*" and multiply_slip_rate is not None else slip_rate
        if k == len(ops) and final_slip_rate is not None:
            rate = final_slip_rate
        slips = [slip for slip in (result - 2, result - 1, result + 1, result + 2)
                 if min([slip, *chain_values(slip, ops[k:])]) >= 0]  # no negative value
        if rng.random() < rate and slips:
            result = rng.choice(slips)
        steps.append(format_step(value, operator, operand, result, boxed=k == len(ops)))
        value = result
    return steps


@dataclass(frozen=True)
class BabySettings:
    """How the baby model is built and warm-started; a hash of these names its cache folder."""
    hidden_size: int = 128  # width of the transformer
    n_layers: int = 4  # transformer blocks
    n_heads: int = 4  # attention heads
    sft_steps: int = 1500  # optimizer steps of the supervised warm start
    batch_size: int = 16  # sequences per step
    lr: float = 3e-3  # peak AdamW learning rate: linear warmup, then cosine decay to a tenth
    localize_fraction: float = 0.5  # share of the sequences that teach localization
    slip_rate: float = 0.15  # chance that a step of a taught solution has a wrong result
    multiply_slip_rate: float | None = None  # the same for multiplications; None: slip_rate
    final_slip_rate: float | None = None  # the same for the last step, the one that boxes the answer; None: slip_rate
    injected_fraction: float = 0.2  # share of the localization texts whose error is injected at a uniformly random step
    tokenizer_problems: int = 1000  # problems whose texts train the tokenizer
    seed: int = 0  # seeds the data, the initialisation and the tokenizer
    threads: int = 1  # CPU threads of the warm start: another count sums in another order, another model


# The baby models `--model` can name. "toy" slips alike on every kind of step; "toy-hard" has a
# systematic weakness: it slips on multiplications (about 15% of the steps) 7 times as often as on
# other steps, and about as often per step overall; "toy-slippy" slips alike on every kind of step,
# on a quarter of them, so that on long chains its rewards are sparse (0.12 right at 8 operations);
# "toy-late" errs late in the chain: it slips on the last step, the one that boxes the answer, 60%
# of the time, and on the others 5%; "toy-late-long" is toy-late warm-started twice as long, with
# more localization texts, so that it localizes its own failures on chains of 8 (0.96 exact, against
# toy-late's 0.44).
TOY_LATE = BabySettings(slip_rate=0.05, final_slip_rate=0.6)
MODELS = {"toy": BabySettings(), "toy-hard": BabySettings(slip_rate=0.08, multiply_slip_rate=0.55),
          "toy-slippy": BabySettings(slip_rate=0.25), "toy-late": TOY_LATE,
          "toy-late-long": dataclasses.replace(TOY_LATE, sft_steps=3000, localize_fraction=0.7)}


def taught_solution(example, rng, settings):
    """A solution by the slipping solver at the settings' rates (`slipping_steps`)."""
    return slipping_steps(example, rng, settings.slip_rate, settings.multiply_slip_rate, settings.final_slip_rate)


def localization_reply(example, steps, first_wrong):
    r"""What the baby model learns to answer to `localize.localization_prompt(question, steps)`:
    each step up to the first wrong one, copied, next to the step as it should read, and judged;
    then the wrong step's number, boxed.

    A tiny network cannot judge a step in one token. Writing the right step out (the value of the
    step before, the question's operation, the result) next to the copied one turns the judgement
    into comparing two neighbouring strings.

    >>> example = {"start": 7, "ops": [("+", 5), ("*", 3), ("-", 4)]}
    >>> print(localization_reply(example, ["7+5=12</thought>", "12*3=35</thought>", "35-4=\\boxed{31}"], 2))
    Step 1: 7+5=12 vs 7+5=12, right.
    Step 2: 12*3=35 vs 12*3=36, wrong.
    \boxed{2}
    """
    lines, right_steps = [], solve_steps(example)
    for k, (step, right_step) in enumerate(zip(steps[:first_wrong], right_steps), 1):
        verdict = "wrong" if k == first_wrong else "right"
        lines.append(f"Step {k}: {step.replace(DELIMITER, '').strip()} vs {right_step.replace(DELIMITER, '')}, "
                     f"{verdict}.")
    return "\n".join(lines + [f"\\boxed{{{first_wrong}}}"])


def failed_solution(example, rng, settings):
    """A wrong solution to learn localization from: the slips the model learns to make itself or,
    with probability `settings.injected_fraction`, a mistake of any kind (`inject_error`) at a
    uniformly random step, so that the check reads the question."""
    if rng.random() < settings.injected_fraction:
        return inject_error(example, rng.randint(1, len(example["ops"])), rng)
    while True:
        steps = taught_solution(example, rng, settings)
        if first_wrong_step(example, steps) is not None:
            return steps


def warm_start_pair(rng, tokenizer, settings):
    """One supervised (prompt, target) pair of 1..MAX_N_OPS operations: a problem and a solution
    that slips at the settings' rates, or, with probability `settings.localize_fraction`, a wrong
    solution and the reply that localizes its first error."""
    example = make_example(rng, rng.randint(1, MAX_N_OPS), DEFAULT_MAX_VALUE)
    if rng.random() < settings.localize_fraction:
        steps = failed_solution(example, rng, settings)
        prompt = localize.localization_prompt(example["question"], steps)
        return data.format_chat(tokenizer, prompt), localization_reply(example, steps, first_wrong_step(example, steps))
    steps = taught_solution(example, rng, settings)
    return data.format_prompt(tokenizer, example["question"]), "".join(steps)


# The baby tokenizer has no chat template; that is all data.format_chat asks of a tokenizer, so
# this stands in for it while the tokenizer is being trained on the texts the model will read.
NO_CHAT_TEMPLATE = SimpleNamespace(chat_template=None)


def make_tokenizer(texts, vocab_size=1024):
    """A byte-level BPE tokenizer trained on `texts`, with eos and pad tokens, no chat template.

    Digits are single tokens, so that numbers are spelled the same way everywhere and arithmetic
    is learnable, and `</thought>` is one token. The text is not pre-split at white space, so
    passages that repeat word for word (the instruction, the localization request) become a few
    long tokens: a prompt with its solution is under 100 tokens, which is what makes training on
    a CPU fast. Decoding gives back the exact text.
    """
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(DELIMITER, behavior="isolated"),
        pre_tokenizers.Split(Regex(r"\d"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|pad|>", "<|eos|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bpe.train_from_iterator(texts, trainer)
    bpe.add_tokens([AddedToken(DELIMITER, normalized=False)])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|eos|>", pad_token="<|pad|>",
                                   padding_side="left", clean_up_tokenization_spaces=False)


def make_model(tokenizer, settings):
    """A small random Qwen2 causal LM for `tokenizer`."""
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=settings.hidden_size,
        intermediate_size=4 * settings.hidden_size, num_hidden_layers=settings.n_layers,
        num_attention_heads=settings.n_heads, num_key_value_heads=settings.n_heads,
        max_position_embeddings=2048, tie_word_embeddings=True, bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return Qwen2ForCausalLM(config)


def sft_batch(tokenizer, pairs):
    """Right-padded tensors for (prompt, target) pairs; the loss is on the target and its eos."""
    rows = []
    for prompt, target in pairs:
        prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
        target_ids = tokenizer(target, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        rows.append((prompt_ids + target_ids, [-100] * len(prompt_ids) + target_ids))
    width = max(len(ids) for ids, _ in rows)

    def pad(values, filler):
        return values + [filler] * (width - len(values))

    input_ids = torch.tensor([pad(ids, tokenizer.pad_token_id) for ids, _ in rows])  # (batch, seq)
    labels = torch.tensor([pad(labels, -100) for _, labels in rows])  # (batch, seq)
    attention_mask = torch.tensor([pad([1] * len(ids), 0) for ids, _ in rows])  # (batch, seq)
    return input_ids, labels, attention_mask


def warm_start(settings):
    """Train the tokenizer, then the model by supervised fine-tuning on solutions and
    localization replies, on `settings.threads` CPU threads. Returns (model, tokenizer).

    The thread count is fixed because floating-point sums in another order end, 1,500 steps
    later, in another model, and not a slightly different one: two warm starts on 1 and 2 threads
    localized their own failures at 4 operations exactly 88% and 64% of the time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        return supervised_warm_start(settings)
    finally:
        torch.set_num_threads(threads)


def supervised_warm_start(settings):
    """The warm start itself, on however many threads torch has."""
    rng = random.Random(settings.seed)
    torch.manual_seed(settings.seed)
    texts = [prompt + target for prompt, target in (
        warm_start_pair(rng, NO_CHAT_TEMPLATE, settings) for _ in range(settings.tokenizer_problems))]
    tokenizer = make_tokenizer(texts)
    model = make_model(tokenizer, settings)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, betas=(0.9, 0.98), weight_decay=0.01)
    warmup_steps = max(1, settings.sft_steps // 20)
    progress = tqdm(range(settings.sft_steps), desc="warm start of the baby model")
    for step in progress:
        decay = 0.5 * (1 + math.cos(math.pi * step / settings.sft_steps))
        for group in optimizer.param_groups:
            group["lr"] = settings.lr * min(1, (step + 1) / warmup_steps) * (0.1 + 0.9 * decay)
        pairs = [warm_start_pair(rng, tokenizer, settings) for _ in range(settings.batch_size)]
        # Localization texts are twice as long as solutions: micro-batches of similar lengths
        # waste less compute on padding. The loss is the mean over all target tokens of the step.
        pairs.sort(key=lambda pair: len(pair[0]) + len(pair[1]))
        batches = [sft_batch(tokenizer, pairs[start:start + 16]) for start in range(0, len(pairs), 16)]
        n_targets = sum((labels != -100).sum() for _, labels, _ in batches)
        step_loss = 0.0
        for input_ids, labels, attention_mask in batches:
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # (batch, seq, vocab)
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), reduction="sum") / n_targets
            loss.backward()
            step_loss += loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        progress.set_postfix(loss=f"{step_loss:.3f}")
    return model.eval(), tokenizer


def cache_key(settings):
    """A hash of the settings and of sample texts the model learns from, so that a change of a
    prompt (here, in data.py or in localize.py) makes a new warm start instead of a stale load."""
    rng = random.Random(0)
    samples = [warm_start_pair(rng, NO_CHAT_TEMPLATE, settings) for _ in range(8)]
    text = json.dumps([dataclasses.asdict(settings), samples])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# The warm starts of MODELS, as made once on one machine (AMD EPYC, torch 2.13.0 on 1 thread).
SHIPPED = Path(__file__).parent / "baby_models"


def load_baby_model(cache_dir=None, settings=BabySettings()):
    """The warm-started baby model and its tokenizer: the shipped one of these settings, else the
    cached one, else trained (a few minutes on a CPU) and cached.

    A model is named `toy-<hash of the settings>`, in SHIPPED or in `cache_dir` (default
    $RESETS_CACHE or ~/.cache/resets). A new one is written to a temporary folder that is renamed
    into place when complete, so an interrupted warm start never leaves a broken cache.
    """
    cache_dir = Path(cache_dir or os.environ.get("RESETS_CACHE") or Path.home() / ".cache" / "resets")
    name = f"toy-{cache_key(settings)}"
    folder = SHIPPED / name if (SHIPPED / name).is_dir() else cache_dir / name
    if not folder.is_dir():
        model, tokenizer = warm_start(settings)
        cache_dir.mkdir(parents=True, exist_ok=True)
        unfinished = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".{folder.name}-"))
        try:
            model.save_pretrained(unfinished)
            tokenizer.save_pretrained(unfinished)
            if not folder.is_dir():  # else another process cached the same model meanwhile
                unfinished.rename(folder)
        finally:
            shutil.rmtree(unfinished, ignore_errors=True)
    model = Qwen2ForCausalLM.from_pretrained(folder).eval()
    return model, PreTrainedTokenizerFast.from_pretrained(folder)


# ---------------------------------------------------------------------------------------------
# Measuring the baby model
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def generate(model, tokenizer, prompts, max_new_tokens, temperature=0.0, batch=256):
    """The completions of `prompts` (texts): greedy, or sampled at `temperature` (no top-p: the
    model's own distribution, which is what the toy runs sample)."""
    sampling = {"do_sample": True, "temperature": temperature, "top_p": 1.0} if temperature else {"do_sample": False}
    completions = []
    for i in range(0, len(prompts), batch):
        inputs = tokenizer(prompts[i:i + batch], return_tensors="pt", padding=True, add_special_tokens=False)
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                eos_token_id=tokenizer.eos_token_id, **sampling)
        completions += tokenizer.batch_decode(output[:, inputs.input_ids.shape[1]:], skip_special_tokens=True)
    return completions


def solution_tokens(n_ops):
    """A budget that fits any solution of `n_ops` steps (9 tokens or fewer each)."""
    return 12 * n_ops + 16


def localized_steps(model, tokenizer, examples, solutions):
    """The step the model's greedy localization names in each wrong solution (a list of steps)."""
    prompts = [data.format_chat(tokenizer, localize.localization_prompt(ex["question"], steps))
               for ex, steps in zip(examples, solutions)]
    replies = generate(model, tokenizer, prompts, 24 * max(len(steps) for steps in solutions) + 16)
    return [localize.parse_error_step(reply, len(steps)) for steps, reply in zip(solutions, replies)]


def localization_accuracy(model, tokenizer, examples, solutions):
    """How often the model's greedy localization of each wrong solution (a list of steps) names
    the step that `first_wrong_step` names, and how often a uniformly random step would."""
    return localization_scores(examples, solutions, localized_steps(model, tokenizer, examples, solutions))


def localization_scores(examples, solutions, named):
    """The exact share of the steps `named` in wrong solutions, and a uniformly random step's."""
    hits, chance = 0, 0.0
    for ex, steps, step in zip(examples, solutions, named):
        truth = first_wrong_step(ex, steps)
        hits += step == truth
        chance += (truth <= len(steps)) / len(steps)  # a missing last step cannot be named
    return hits / len(examples), chance / len(examples)


def operation_of(example, step):
    """The operation a problem's step `step` (1-based) applies; "extra step" beyond the chain,
    "none" for no step (a localization that names none)."""
    if step is None:
        return "none"
    return OPERATIONS[example["ops"][step - 1][0]] if 1 <= step <= len(example["ops"]) else "extra step"


def localization_by_operation(examples, solutions, named):
    """Localization split by operation: for each operation, how often the named step is the first
    wrong one among the failures whose first error is that operation (exact, count), and the
    share of all localizations that name a step of that operation. A model that names the
    operation it slips on most, whatever the solution, shows as exact on that operation and
    rarely on the others, and names it more often than its share of first errors."""
    exact, named_ops = {}, {}
    for ex, steps, step in zip(examples, solutions, named):
        truth = first_wrong_step(ex, steps)
        hits, count = exact.get(kind := operation_of(ex, truth), (0, 0))
        exact[kind] = (hits + (step == truth), count + 1)
        named_ops[operation_of(ex, step)] = named_ops.get(operation_of(ex, step), 0) + 1
    return ({kind: (round(hits / count, 3), count) for kind, (hits, count) in sorted(exact.items())},
            {kind: round(count / len(named), 3) for kind, count in sorted(named_ops.items())})


def sampled_solutions(model, tokenizer, examples, temperature):
    """One solution per example, greedy or sampled, and its reward: (texts, rewards)."""
    budget = solution_tokens(max(len(ex["ops"]) for ex in examples))
    texts = generate(model, tokenizer, [data.format_prompt(tokenizer, ex["question"]) for ex in examples],
                     budget, temperature)
    return texts, [verify.math_reward(text, ex["answer"]) for text, ex in zip(texts, examples)]


def evaluate(model, tokenizer, n_ops=DEFAULT_N_OPS, n=500, min_failures=200, temperature=1.0, seed=10**6):
    """The measured skills of a model on chains of `n_ops` operations:

    - answer_acc: the share of `n` problems solved by one sample at `temperature` (what training
      rewards), and greedy_answer_acc;
    - loc_exact_own: how often its greedy localization names the true first wrong step of its own
      failed samples (more problems are sampled until there are `min_failures`), against
      loc_exact_random, a uniformly random step, on the same failures;
    - loc_exact_injected: the same on solutions with an error of any kind (`inject_error`) at a
      uniformly random step;
    - first_error_steps: among its own failures, the share whose first error is at each step
      1..n_ops (the rest have an extra step after the boxed answer);
    - first_error_ops: among its own failures, the share whose first error is at each operation;
      loc_exact_by_op, its localization's exact share (and count) by that operation, and
      loc_named_ops, the share of its localizations that name a step of each operation
      (`localization_by_operation`).
    """
    rng = random.Random(seed)
    torch.manual_seed(seed)  # the same samples at every run
    examples = make_examples(n, seed, n_ops)
    failed = []
    for round_ in range(20):  # more problems until there are enough failures to measure on
        sampled = examples if round_ == 0 else make_examples(n, seed + round_, n_ops)
        texts, rewards = sampled_solutions(model, tokenizer, sampled, temperature)
        if round_ == 0:
            answer_acc = sum(rewards) / n
        failed += [(ex, localize.split_steps(text)) for ex, text, reward in zip(sampled, texts, rewards)
                   if not reward and text]  # "" has no step to blame
        if len(failed) >= min_failures:
            break
    failed_examples, failed_steps = zip(*failed) if failed else ((), ())
    named = localized_steps(model, tokenizer, failed_examples, failed_steps) if failed else []
    own_exact, own_random = localization_scores(failed_examples, failed_steps, named) if failed else (0.0, 0.0)
    exact_by_op, named_ops = localization_by_operation(failed_examples, failed_steps, named)
    first_errors = [first_wrong_step(ex, steps) for ex, steps in failed]
    injected = [inject_error(ex, rng.randint(1, n_ops), rng) for ex in examples]
    return {
        "n_ops": n_ops,
        "answer_acc": answer_acc,
        "greedy_answer_acc": sum(sampled_solutions(model, tokenizer, examples, 0.0)[1]) / n,
        "loc_exact_own": own_exact,
        "loc_exact_random": own_random,
        "own_failures": len(failed),
        "loc_exact_by_op": exact_by_op,
        "loc_named_ops": named_ops,
        "loc_exact_injected": localization_accuracy(model, tokenizer, examples, injected)[0],
        "injected_failures": len(injected),
        "first_error_steps": {step: round(first_errors.count(step) / len(failed), 3) for step in range(1, n_ops + 1)}
                             if failed else {},
        "first_error_ops": {kind: round(count / len(failed), 3) for kind, (_, count) in exact_by_op.items()},
    }


def main():
    parser = argparse.ArgumentParser(description="Measure the baby model: answer and localization accuracy.")
    parser.add_argument("--model", default="toy", choices=sorted(MODELS), help="which baby model")
    parser.add_argument("--ops", type=int, default=DEFAULT_N_OPS, help=f"operations per problem (1..{MAX_N_OPS} "
                                                                      "were taught)")
    parser.add_argument("--problems", type=int, default=500, help="problems for the answer accuracy")
    parser.add_argument("--failures", type=int, default=200, help="own failures to measure localization on, "
                                                                  "at least")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of sentences")
    args = parser.parse_args()
    if args.ops < 1 or args.problems < 1 or args.failures < 1:
        parser.error("--ops, --problems and --failures must be at least 1")
    model, tokenizer = load_baby_model(settings=MODELS[args.model])
    results = evaluate(model, tokenizer, args.ops, args.problems, args.failures)
    if args.json:
        print(json.dumps({"model": args.model, **results}))
        return
    print(f"{args.model}, chains of {args.ops} operations:")
    print(f"answer accuracy, one sample at temperature 1: {results['answer_acc']:.1%} "
          f"(greedy: {results['greedy_answer_acc']:.1%})")
    print(f"localization exact on its own {results['own_failures']} failures: {results['loc_exact_own']:.1%} "
          f"(a random step: {results['loc_exact_random']:.1%})")
    print(f"localization exact on {results['injected_failures']} injected errors: "
          f"{results['loc_exact_injected']:.1%}")
    print("first errors of its failures, by step: "
          + ", ".join(f"{step} {share:.0%}" for step, share in results["first_error_steps"].items()))
    print("first errors of its failures, by operation: "
          + ", ".join(f"{kind} {share:.0%}" for kind, share in results["first_error_ops"].items()))
    print("localization exact, by the first error's operation: "
          + ", ".join(f"{kind} {exact:.0%} ({count})" for kind, (exact, count) in results["loc_exact_by_op"].items()))
    print("the step its localization names, by operation: "
          + ", ".join(f"{kind} {share:.0%}" for kind, share in results["loc_named_ops"].items()))


if __name__ == "__main__":
    main()
