"""Steps, token-exact step boundaries, the localization prompt and its parsing, reset choice."""
import math
import random
from collections import Counter

import pytest

from localize import (
    localization_prompt,
    parse_error_step,
    parse_error_step_or_none,
    random_reset_step,
    split_steps,
    step_token_ends,
)

T = "</thought>"

# Pieces for random texts: delimiters, blank lines, digits and multi-byte characters next to
# each other, so that steps start and end on every kind of character.
PIECES = [T, T, "\n", "\n\n", " ", "  ", "a", "Add 5", "12", "3.", ".", "×", "÷", "😀", "é",
          "\\boxed{7}"]


def random_texts(count, seed):
    rng = random.Random(seed)
    return ["".join(rng.choice(PIECES) for _ in range(rng.randint(0, 14))) for _ in range(count)]


# ---------------------------------------------------------------------------------------------
# split_steps
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, steps", [
    ("", []),
    ("a</thought>b</thought>", ["a</thought>", "b</thought>"]),
    ("a</thought> b</thought>\n\n", ["a</thought>", " b</thought>\n\n"]),  # trailing space joins
    ("a</thought>\n\nSo \\boxed{3}.", ["a</thought>", "\n\nSo \\boxed{3}."]),  # answer after it
    ("</thought></thought>", ["</thought>", "</thought>"]),
    ("First.\n\nSecond.\n \nThird.", ["First.\n\n", "Second.\n \n", "Third."]),  # paragraphs
    ("\n\nFirst.\n\nSecond.\n\n", ["\n\nFirst.\n\n", "Second.\n\n"]),
    ("First.\n\n\n\nSecond.", ["First.\n\n\n\n", "Second."]),  # several blank lines: one cut
    ("one\ntwo\nthree\n", ["one\n", "two\n", "three\n"]),  # lines: no delimiter, no blank line
    ("one\ntwo\n\n", ["one\n", "two\n\n"]),
    ("just one step", ["just one step"]),
    ("a\n\nb</thought>c", ["a\n\nb</thought>", "c"]),  # the delimiter wins over paragraphs
])
def test_split_steps_examples(text, steps):
    assert split_steps(text) == steps


def test_split_steps_other_delimiter():
    assert split_steps("x ;; y ;; z", delimiter=" ;;") == ["x ;;", " y ;;", " z"]


def test_split_steps_is_lossless_and_ends_steps_with_the_delimiter():
    for text in random_texts(500, seed=0):
        steps = split_steps(text)
        assert "".join(steps) == text
        if T in text:
            assert all(step.endswith(T) for step in steps[:-1]), text
        if text.strip():
            assert all(step.strip() for step in steps), text  # no white-space-only step


@pytest.mark.parametrize("max_steps", [1, 2, 3])
def test_split_steps_merges_the_steps_past_the_cap_into_the_last_kept_one(max_steps):
    for text in random_texts(200, seed=1):
        steps, capped = split_steps(text), split_steps(text, max_steps=max_steps)
        assert "".join(capped) == text
        assert len(capped) == min(len(steps), max_steps), text
        assert capped[:max_steps - 1] == steps[:max_steps - 1], text


def test_split_steps_rejects_a_cap_below_one():
    with pytest.raises(ValueError, match="max_steps"):
        split_steps("a</thought>", max_steps=0)


# ---------------------------------------------------------------------------------------------
# step_token_ends
# ---------------------------------------------------------------------------------------------

def decode(tokenizer, ids):
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def check_token_ends(tokenizer, ids, max_steps=None):
    """The documented contract; returns, per step boundary, the text past it held by the prefix."""
    text = decode(tokenizer, ids)
    steps = split_steps(text, max_steps=max_steps)
    ends = step_token_ends(tokenizer, ids, max_steps=max_steps)
    assert len(ends) == len(steps)
    assert ends == sorted(ends) and (not ends or ends[-1] == len(ids))
    overhangs = []
    for k, end in enumerate(ends[:-1], 1):
        first_k_steps = "".join(steps[:k])
        prefix_text = decode(tokenizer, ids[:end])
        assert prefix_text.startswith(first_k_steps) and text.startswith(prefix_text)
        # shortest such prefix: one token less loses part of step k (its delimiter)
        assert not decode(tokenizer, ids[:end - 1]).startswith(first_k_steps)
        overhangs.append(prefix_text[len(first_k_steps):])
    return overhangs


STRADDLE_TEXTS = [
    "Start at 7.</thought>\n\nAdd 5: 12.</thought>\n\nSo \\boxed{12}.</thought>",
    "Start at 7.</thought>. Add 5.</thought>.",
    "x</thought>y</thought>z",
    "3</thought>4</thought>56</thought>",
    "3×4 = 12</thought>÷2 gives 6😀</thought>😀 and é</thought>é",
    "no delimiter here\n\nbut paragraphs\n\n",
    "def f():\n    return 1\n    x = 2\n",  # lines; SmolLM2 has one token for "\n   "
]


@pytest.mark.parametrize("text", STRADDLE_TEXTS)
@pytest.mark.parametrize("tokenizer_name", ["tiny_tokenizer", "smollm2_tokenizer"])
def test_step_token_ends_cut_the_generated_ids_at_each_step(request, tokenizer_name, text):
    tokenizer = request.getfixturevalue(tokenizer_name)
    ids = tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]
    overhangs = check_token_ends(tokenizer, ids)
    if tokenizer_name == "tiny_tokenizer":
        assert overhangs == [""] * len(overhangs)  # its ">" and "\n" tokens never straddle


@pytest.mark.parametrize("tokenizer_name", ["tiny_tokenizer", "smollm2_tokenizer"])
def test_step_token_ends_on_random_texts(request, tokenizer_name):
    tokenizer = request.getfixturevalue(tokenizer_name)
    for text in random_texts(40, seed=2):
        check_token_ends(tokenizer, tokenizer.encode(text, add_special_tokens=False))


def test_a_straddling_token_moves_the_boundary_to_its_end(smollm2_tokenizer):
    tokenizer = smollm2_tokenizer
    text = "Start at 7.</thought>. Add 5.</thought>\n\nDone."
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.convert_ids_to_tokens(ids).count(">.") == 1  # one token holds ">" and "."
    assert check_token_ends(tokenizer, ids) == [".", ""]  # the delimiter stays whole


def test_step_token_ends_straddle_on_line_fallback(smollm2_tokenizer):
    ids = smollm2_tokenizer.encode("def f():\n    return 1\n", add_special_tokens=False)
    assert check_token_ends(smollm2_tokenizer, ids) == ["   "]


def test_the_generated_prefix_is_not_the_retokenised_prefix(smollm2_tokenizer):
    """Why the boundaries are token positions: a policy may generate "answer" as "answ" + "er";
    the prefix text re-encodes to other ids, a state the policy never was in."""
    tokenizer = smollm2_tokenizer
    pieces = ["The answ", "er is 4.</thought>", " Check: 2 + 2 = 4.</thought>"]
    ids = [i for piece in pieces for i in tokenizer.encode(piece, add_special_tokens=False)]
    end = step_token_ends(tokenizer, ids)[0]
    prefix_ids = ids[:end]
    assert decode(tokenizer, prefix_ids) == "The answer is 4.</thought>"
    assert tokenizer.encode(decode(tokenizer, prefix_ids), add_special_tokens=False) != prefix_ids


@pytest.mark.parametrize("max_steps", [1, 2, 3])
def test_step_token_ends_respects_max_steps(tiny_tokenizer, max_steps):
    text = "a</thought>b</thought>c</thought>d</thought>"
    ids = tiny_tokenizer.encode(text, add_special_tokens=False)
    assert len(check_token_ends(tiny_tokenizer, ids, max_steps=max_steps)) == max_steps - 1


def test_step_token_ends_of_an_empty_response(tiny_tokenizer):
    assert step_token_ends(tiny_tokenizer, []) == []
    assert step_token_ends(tiny_tokenizer, [tiny_tokenizer.eos_token_id]) == []


class CountingTokenizer:
    """Wraps a tokenizer and counts its decode calls."""

    def __init__(self, tokenizer):
        self.tokenizer, self.decodes = tokenizer, 0

    def decode(self, ids, **kwargs):
        self.decodes += 1
        return self.tokenizer.decode(ids, **kwargs)


def test_step_token_ends_needs_few_decodes_on_long_responses(tiny_tokenizer):
    text = "".join(f"Step {k}: 7 + 5 = 12, then 12 * 3 = 36 and so on. " * 8 + T for k in range(20))
    ids = tiny_tokenizer.encode(text, add_special_tokens=False)
    counting = CountingTokenizer(tiny_tokenizer)
    ends = step_token_ends(counting, ids)
    assert len(ids) > 2000 and len(ends) == 20
    # one decode of the whole response, then a binary search for each of 19 inner boundaries
    assert counting.decodes <= 1 + 19 * math.ceil(math.log2(len(ids) + 1))
    check_token_ends(tiny_tokenizer, ids)


# ---------------------------------------------------------------------------------------------
# localization_prompt
# ---------------------------------------------------------------------------------------------

def test_localization_prompt_shows_the_numbered_steps_and_asks_for_a_boxed_step():
    steps = split_steps("Start at 7.</thought> Add 5: 7 + 5 = 13.</thought> So \\boxed{39}.")
    prompt = localization_prompt("Start at 7, add 5, multiply by 3.", steps)
    assert "Start at 7, add 5, multiply by 3." in prompt
    assert "Step 1: Start at 7.\nStep 2: Add 5: 7 + 5 = 13.\nStep 3: So \\boxed{39}.\n" in prompt
    assert T not in prompt
    assert "wrong" in prompt and "originated" in prompt and "Do not solve" in prompt
    assert prompt.rstrip().endswith("\\boxed{k}, where k is between 1 and 3.")
    assert "36" not in prompt  # the right answer is never shown


# ---------------------------------------------------------------------------------------------
# parse_error_step
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, n_steps, step", [
    ("The error is in step 3. \\boxed{3}", 5, 3),
    ("\\boxed{ 4 }", 5, 4),
    ("\\boxed{4.}", 5, 4),
    ("\\boxed{Step 2}", 5, 2),
    ("\\boxed{\\text{Step 2}}", 5, 2),
    ("$\\boxed{{2}}$", 5, 2),  # nested braces around the number
    ("First \\boxed{2}, on reflection \\boxed{4}", 5, 4),  # the last boxed counts
    ("\\boxed{2} and then \\boxed{\\frac{1}{2}}", 5, 2),  # a boxed fraction is no step number
    ("\\boxed{2} \\boxed{9}", 5, 2),  # an out-of-range box is skipped, not clamped
    ("Step 2 looks fine but Step 4 is wrong. \\boxed{x}", 5, 4),  # boxed non-integer: Step N
    ("Steps 1 and 2 are right; the mistake happens in step 3.", 5, 3),  # Step N only in prose
    ("Step 2 is where it goes wrong, not Step 7.", 5, 2),  # out-of-range mention skipped
    ("The answer \\boxed{3.5} is wrong; see Step 1.", 5, 1),
    ("Step 3 is wrong. \\boxed{5", 5, 3),  # unclosed box (cut off): the Step N rule
    ("\\boxed{1}", 1, 1),
    ("\\boxed{20} step 19", 20, 20),
])
def test_parse_error_step(text, n_steps, step):
    assert parse_error_step(text, n_steps) == step
    assert parse_error_step_or_none(text, n_steps) == step


@pytest.mark.parametrize("text", [None, "", "No idea.", "\\boxed{0}", "\\boxed{6} Step 0 Step 6"])
def test_parse_error_step_falls_back_to_step_one(text):
    assert parse_error_step_or_none(text, 5) is None  # what the trainer counts as a failed parse
    assert parse_error_step(text, 5) == 1


def test_parse_error_step_rejects_a_solution_without_steps():
    with pytest.raises(ValueError, match="n_steps"):
        parse_error_step("\\boxed{1}", 0)


# ---------------------------------------------------------------------------------------------
# random_reset_step
# ---------------------------------------------------------------------------------------------

def test_random_reset_step_is_uniform_over_one_to_n():
    rng, n_steps, draws = random.Random(0), 6, 6000
    counts = Counter(random_reset_step(n_steps, rng) for _ in range(draws))
    assert set(counts) == set(range(1, n_steps + 1))  # never 0, never n + 1
    expected = draws / n_steps
    chi_square = sum((counts[k] - expected) ** 2 / expected for k in range(1, n_steps + 1))
    assert chi_square < 20.5  # the 0.1% critical value of chi-square with 5 degrees of freedom


def test_random_reset_step_follows_the_rng_it_is_given():
    rng, same_seed_rng = random.Random(3), random.Random(3)
    assert [random_reset_step(9, rng) for _ in range(5)] == [
        random_reset_step(9, same_seed_rng) for _ in range(5)]
    assert {random_reset_step(1, random.Random(seed)) for seed in range(20)} == {1}
    with pytest.raises(ValueError, match="n_steps"):
        random_reset_step(0, random.Random(0))
