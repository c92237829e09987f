r"""Steps, self-localization and reset choice: the parts of RRPO and SRPO that are about text.

A solution is generated "thought by thought": every reasoning step ends with `</thought>` and the
last one holds `\boxed{answer}` (PAPER.md section 3). From a failed solution we need

1. its steps (`split_steps`), cut losslessly so that `"".join(steps)` gives back the text;
2. where each step ends among the generated token ids (`step_token_ends`): a reset prefix is the
   exact generated ids up to a boundary, because re-tokenising the prefix text can give other ids
   (`response_steps` gives both, from the thought ends recorded while generating when there are
   some);
3. the reset step k, either uniform (RRPO, `random_reset_step`) or chosen by the model itself
   (SRPO): `localization_prompt` asks it for the step where the error originated and
   `parse_error_step` reads its `\boxed{k}`.

The reset prefix is then steps 1..k-1 (step k itself is resampled):

    steps, ends = response_steps(tokenizer, response_ids, thought_ends)
    prefix_ids = response_ids[:ends[k - 2]] if k > 1 else []
"""
import random
import re

import verify

DELIMITER = "</thought>"
BLANK_LINE = r"\n(?:[ \t]*\n)+"  # one or more empty lines end a paragraph


def _cut_after(text, separator_pattern):
    r"""Cut `text` after every match of `separator_pattern`; every piece keeps its separator.

    A piece with no visible text (only white space) is not a step of its own: it joins the
    previous piece, or the next one when it comes first. So white space after the last delimiter
    stays at the end of the last step.

    >>> _cut_after("a.b.\n", r"\.")
    ['a.', 'b.\n']
    """
    pieces, start = [], 0
    for match in re.finditer(separator_pattern, text):
        pieces.append(text[start:match.end()])
        start = match.end()
    pieces.append(text[start:])
    steps = []
    for piece in pieces:
        if steps and (not piece.strip() or not steps[-1].strip()):
            steps[-1] += piece
        else:
            steps.append(piece)
    return steps


def split_steps(text, delimiter=DELIMITER, max_steps=None):
    r"""Cut a solution into steps; each step ends with its delimiter and `"".join(steps) == text`.

    The cut is right after each delimiter, so the white space that separates two steps begins
    the next step: the model chose it after closing the step. Text after the last delimiter is a
    final step (the answer, say), unless it is only white space, which joins the last step.
    Without any delimiter, blank-line paragraphs are the steps, or else lines (a model that
    ignores the delimiter), each ending with its blank line or newline. With `max_steps`, the
    steps past the cap are merged into the last kept one (the paper caps at 20). "" has no steps.

    >>> split_steps("Add: 2 + 3 = 5.</thought> So \\boxed{5}.</thought>\n")
    ['Add: 2 + 3 = 5.</thought>', ' So \\boxed{5}.</thought>\n']
    >>> split_steps("First.\n\nSecond.")
    ['First.\n\n', 'Second.']
    >>> split_steps("a</thought>b</thought>c", max_steps=2)
    ['a</thought>', 'b</thought>c']
    """
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be at least 1, got {max_steps}")
    if not text:
        return []
    if delimiter in text:
        steps = _cut_after(text, re.escape(delimiter))
    else:
        steps = _cut_after(text, BLANK_LINE)
        if len(steps) == 1:
            steps = _cut_after(text, r"\n")
    if max_steps is not None and len(steps) > max_steps:
        steps = steps[:max_steps - 1] + ["".join(steps[max_steps - 1:])]
    return steps


def decode(tokenizer, token_ids):
    """Generated ids as text: the one decoding used for steps, rewards and dumps."""
    # Special tokens (eos, chat markers) carry no step text, so they are skipped; no space
    # clean-up, so that the text of a prefix of the ids is a prefix of the text of all of them.
    return tokenizer.decode(token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def step_token_ends(tokenizer, response_ids, delimiter=DELIMITER, max_steps=None):
    r"""For each step of a generated response, the index in `response_ids` where it ends.

    Steps are those of `split_steps(text)` with `text` the response decoded with
    `skip_special_tokens=True` (and no space clean-up); decode it the same way to show the steps.
    Ends are exclusive: the state "after steps 1..k" is `response_ids[:ends[k - 1]]`, the ids
    the model really generated. Re-encoding the prefix text is not the same: "answer" generated as
    "answ" + "er" re-encodes to one token, a state the policy never produced.

    The end of step k is the shortest prefix of the ids whose text starts with steps 1..k. When a
    token straddles the boundary (SmolLM2 has one token for ">." in "</thought>."), the boundary
    moves to the end of that token: the delimiter stays whole, and the prefix carries the first
    characters of the next step. The last end is always `len(response_ids)`, so trailing special
    tokens such as eos belong to the last step. Ends never decrease.

    Adding up the lengths of single-token decodes would be quicker but is wrong for byte-level
    BPE: a token that holds half of a UTF-8 character decodes alone to "\ufffd". Decoding
    prefixes is reliable, and a binary search finds each end: O(steps * log n) decodes.

    With a tokenizer whose tokens are single characters, "ab</thought>cd" (14 tokens) gives
    ends [12, 14], and the ids [:12] decode to "ab</thought>". Pass the response unpadded.
    """
    text = decode(tokenizer, response_ids)
    steps = split_steps(text, delimiter, max_steps)
    ends, lowest_end, step_text = [], 0, ""
    for step in steps[:-1]:
        step_text += step
        # invariant: the text of ids[:low] misses part of step_text, the text of ids[:high] has it
        low, high = lowest_end - 1, len(response_ids)
        while high - low > 1:
            middle = (low + high) // 2
            if decode(tokenizer, response_ids[:middle]).startswith(step_text):
                high = middle
            else:
                low = middle
        ends.append(high)
        lowest_end = high
    return ends + [len(response_ids)] if steps else []


def response_steps(tokenizer, response_ids, thought_ends=None, delimiter=DELIMITER, max_steps=None):
    r"""The steps of a generated response and where each ends in `response_ids`: (steps, ends).

    A response generated thought by thought comes with its thought ends, recorded token by token
    as it was generated (generation.ThoughtStopper); when the model used the delimiter, those are its
    steps, and a thought cut at --max-thought-tokens is a step of its own. Otherwise (a model that
    ignores the delimiter, or no record) the steps are those of `split_steps` and their ends those
    of `step_token_ends`. Either way `response_ids[:ends[k - 1]]` is the state after step k, and the
    steps are decoded with `decode`.

    With a tokenizer whose tokens are single characters, "ab</thought>cd" generated as two
    thoughts of 12 and 2 tokens gives (["ab</thought>", "cd"], [12, 14]).
    """
    text = decode(tokenizer, response_ids)
    if thought_ends and delimiter in text:
        # Each step is what a thought's ids add to the text of the ids before it.
        prefixes = [decode(tokenizer, response_ids[:end]) for end in thought_ends]
        steps = [text_after[len(text_before):] for text_before, text_after in zip([""] + prefixes, prefixes)]
        return steps, list(thought_ends)
    return split_steps(text, delimiter, max_steps), step_token_ends(tokenizer, response_ids, delimiter, max_steps)


def localization_prompt(question, steps, delimiter=DELIMITER):
    r"""The user message that asks the model where its own failed solution went wrong (SRPO).

    It is told that the final answer is wrong but not what the right answer is, so it has to
    find the error in the steps instead of working backwards from the answer.

    >>> steps = ["2 + 3 = 6.</thought>", " So \\boxed{6}."]
    >>> prompt = localization_prompt("What is 2 + 3?", steps)
    >>> print(prompt.split("Solution:\n")[1].split("\n\n")[0])
    Step 1: 2 + 3 = 6.
    Step 2: So \boxed{6}.
    """
    shown_steps = [step.replace(delimiter, "").strip() for step in steps]
    numbered_steps = "\n".join(f"Step {k}: {step}" for k, step in enumerate(shown_steps, 1))
    return (
        "Below is a problem and a step-by-step solution of it. The final answer of this solution "
        "is wrong.\n\n"
        f"Problem:\n{question}\n\n"
        f"Solution:\n{numbered_steps}\n\n"
        "Find the step where the error originated: the first step with a mistake (a wrong "
        "calculation, a false claim, a misreading of the problem, an invalid deduction), not a "
        "later step where the wrong result only became visible. Do not solve the problem again; "
        "only examine the steps above. Explain briefly, then end your reply with the number of "
        f"that step as \\boxed{{k}}, where k is between 1 and {len(steps)}."
    )


# The content of a boxed step number: "3", " 3 ", "3.", "Step 3", "\text{Step 3}". Not "3.5",
# "2, 3" or "\frac{3}{4}": an answer that is not one clear step number does not count.
BOXED_STEP = re.compile(r"\s*(?:step\s*)?(\d+)\s*\.?\s*", re.IGNORECASE)
LATEX_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\s*\{|[{}$]")
STEP_MENTION = re.compile(r"\bstep\s*(\d+)", re.IGNORECASE)


def parse_error_step_or_none(text, n_steps):
    r"""The step number a localization reply names, or None when it names none in 1..n_steps.

    Rules (PAPER.md section 4): the last `\boxed{...}` holding a step number in 1..n_steps;
    otherwise the last "Step N" in the text with N in 1..n_steps. Numbers out of range are
    skipped, not clamped: "\boxed{7}" for a 5-step solution is no answer. So the answer is always
    in 1..n_steps and the paper's final clamp has nothing left to do.

    >>> parse_error_step_or_none(r"Step 2 is fine, Step 3 is not. \boxed{Step 3}", 5)
    3
    >>> parse_error_step_or_none("Step 9 is wrong.", 5) is None
    True
    """
    if n_steps < 1:
        raise ValueError(f"a solution has at least one step, got n_steps={n_steps}")
    text = text or ""
    for content in verify.boxed_contents(text):
        number = BOXED_STEP.fullmatch(LATEX_WRAPPER.sub(" ", content))
        if number and 1 <= int(number.group(1)) <= n_steps:
            return int(number.group(1))
    mentioned = [int(number) for number in STEP_MENTION.findall(text)]
    in_range = [number for number in mentioned if 1 <= number <= n_steps]
    return in_range[-1] if in_range else None


def parse_error_step(text, n_steps):
    r"""The step where the model says its error originated, in 1..n_steps; 1 when it does not say.

    Falling back to step 1 resets to the empty prefix, i.e. fresh solutions: no credit is put on
    a step the model did not name. Use `parse_error_step_or_none` to count failed parses.

    >>> parse_error_step(r"The error is in step 2. \boxed{2}", 4)
    2
    >>> parse_error_step("I am not sure.", 4)
    1
    """
    return parse_error_step_or_none(text, n_steps) or 1


def random_reset_step(n_steps, rng):
    """The reset step of RRPO: uniform over 1..n_steps, drawn from the `random.Random` given.

    >>> random_reset_step(5, random.Random(0)) in range(1, 6)
    True
    """
    if n_steps < 1:
        raise ValueError(f"a solution has at least one step, got n_steps={n_steps}")
    return rng.randint(1, n_steps)
