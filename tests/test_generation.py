r"""Thought-by-thought generation (generation.ThoughtStopper and generation.sample): checked against a
reference that applies the paper's stopping rule after the fact to plain `generate` output,
decoding each whole thought again at every token."""
import pytest
import torch
from conftest import add_head_bias, make_model, make_tokenizer

import data
import generation
import localize

DELIMITER = localize.DELIMITER


def cut_by_the_rule(tokenizer, ids, budget, max_thought_tokens, max_thoughts, stop_ids):
    """(kept ids, thought ends, finish) of a generated token list, by PAPER.md section 5b read
    literally: a thought ends once its text holds the delimiter or has max_thought_tokens tokens;
    the chain ends after a thought with \boxed{, at eos, after max_thoughts thoughts, or before a
    thought that could not fit whole in the budget. None if `ids` ends before any of these."""
    def text(part):
        return tokenizer.decode(part, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    ends, start = [], 0
    for t in range(1, len(ids) + 1):
        thought = text(ids[start:t])
        if ids[t - 1] in stop_ids:
            if thought.strip():
                ends.append(t)
            elif ends:
                ends[-1] = t
            last_start = ends[-2] if len(ends) > 1 else 0
            return ids[:t], ends, "answer" if ends and "\\boxed{" in text(ids[last_start:t]) else "eos"
        if DELIMITER in thought or t - start == max_thought_tokens:
            ends.append(t)
            if "\\boxed{" in thought:
                return ids[:t], ends, "answer"
            if len(ends) == max_thoughts:
                return ids[:t], ends, "max_thoughts"
            if t + max_thought_tokens > budget:
                return ids[:t], ends, "budget"
            start = t
    return None


def run_stopper(tokenizer, sequences, budget, max_thought_tokens, max_thoughts, stop_ids, prompt_width=3):
    """Feed token lists to a ThoughtStopper one token at a time, as `generate` does."""
    width = max(map(len, sequences))
    pad = tokenizer.pad_token_id
    rows = torch.tensor([[pad] * prompt_width + s + [pad] * (width - len(s)) for s in sequences])  # (batch, seq)
    stopper = generation.ThoughtStopper(tokenizer, [budget] * len(sequences), [max_thoughts] * len(sequences),
                                        max_thought_tokens, stop_ids)
    for t in range(1, width + 1):
        done = stopper(rows[:, :prompt_width + t], None)
        if done.all():
            break
    return [(stopper.generated[i], stopper.thought_ends[i], stopper.finish[i]) for i in range(len(sequences))]


TEXTS = [
    "Add: 2 + 3 = 5.</thought> Then 5 * 2 = 10.</thought> So \\boxed{10}.</thought> extra talk</thought>",
    "One</thought>.Two</thought>\n\nThree is long and goes on and on and on and on and on and on</thought>",
    "No delimiter here at all, just a long paragraph that runs past the cap of a thought.",
    "x</thought>\\boxed{4} and more</thought>",
    "</thought></thought></thought></thought></thought></thought>",
    "",
]


@pytest.mark.parametrize("max_thought_tokens,max_thoughts,budget", [(64, 20, 200), (8, 20, 200), (8, 3, 200),
                                                                     (6, 20, 20)])
def test_stopper_follows_the_rule_token_by_token(tiny_tokenizer, max_thought_tokens, max_thoughts, budget):
    eos = tiny_tokenizer.eos_token_id
    sequences = [tiny_tokenizer(text, add_special_tokens=False).input_ids + [eos] for text in TEXTS]
    got = run_stopper(tiny_tokenizer, sequences, budget, max_thought_tokens, max_thoughts, {eos})
    for ids, result in zip(sequences, got):
        assert result == cut_by_the_rule(tiny_tokenizer, ids, budget, max_thought_tokens, max_thoughts, {eos})
    assert {finish for _, _, finish in got} >= ({"answer", "eos"} if budget > 20 else {"budget"})


def test_stopper_with_a_real_tokenizer_whose_tokens_straddle_the_delimiter(smollm2_tokenizer):
    tokenizer = smollm2_tokenizer
    eos = tokenizer.eos_token_id
    texts = TEXTS + ["Step one</thought>. Step two</thought>.\n\\boxed{3}</thought>.", "é</thought>ü</thought>"]
    sequences = [tokenizer(text, add_special_tokens=False).input_ids + [eos] for text in texts]
    # SmolLM2 has one token for ">." : the delimiter is completed inside a token
    assert any(">." == tokenizer.decode([t]) for ids in sequences for t in ids)
    for max_thought_tokens, max_thoughts in ((64, 20), (5, 20), (64, 2)):
        got = run_stopper(tokenizer, sequences, 400, max_thought_tokens, max_thoughts, {eos})
        for ids, result in zip(sequences, got):
            assert result == cut_by_the_rule(tokenizer, ids, 400, max_thought_tokens, max_thoughts, {eos})


def test_delimiter_ended_thoughts_end_where_step_token_ends_puts_them(tiny_tokenizer, smollm2_tokenizer):
    for tokenizer in (tiny_tokenizer, smollm2_tokenizer):
        eos = tokenizer.eos_token_id
        text = "Add: 2 + 3 = 5.</thought> Then 5 * 2 = 10.</thought>. Next</thought>So \\boxed{10}.</thought>"
        ids = tokenizer(text, add_special_tokens=False).input_ids + [eos]
        [(kept, ends, finish)] = run_stopper(tokenizer, [ids], 400, 256, 20, {eos})
        assert finish == "answer" and kept == ids[:ends[-1]]
        assert ends == localize.step_token_ends(tokenizer, kept)
        steps, step_ends = localize.response_steps(tokenizer, kept, ends)
        text_steps = localize.split_steps(localize.decode(tokenizer, kept))
        # the same steps, except that a token straddling a boundary (">.") keeps its text whole
        assert step_ends == ends and "".join(steps) == "".join(text_steps) and len(steps) == len(text_steps)
        assert all(DELIMITER in step for step in steps)


def test_a_thought_longer_than_the_cap_becomes_two_steps(tiny_tokenizer):
    eos = tiny_tokenizer.eos_token_id
    first = tiny_tokenizer("Natalia sold clips to 48 of her friends", add_special_tokens=False).input_ids
    rest = tiny_tokenizer("</thought>So \\boxed{72}</thought>", add_special_tokens=False).input_ids
    cap = len(first) - 2
    [(kept, ends, finish)] = run_stopper(tiny_tokenizer, [first + rest + [eos]], 400, cap, 20, {eos})
    steps, step_ends = localize.response_steps(tiny_tokenizer, kept, ends)
    text_steps = localize.split_steps(localize.decode(tiny_tokenizer, kept))
    assert len(text_steps) == 2 and len(steps) == 3  # the first thought was cut at the cap
    assert step_ends[0] == cap and "".join(steps) == "".join(text_steps)
    assert steps[0] + steps[1] == text_steps[0]


# ---------------------------------------------------------------------------------------------
# Inside `generate`: a tiny model that says the delimiter and \boxed{ often enough
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def thought_tokenizer():
    tokenizer = make_tokenizer()
    tokenizer.add_tokens([DELIMITER, "\\boxed{"])
    tokenizer.padding_side = "left"
    return tokenizer


@pytest.fixture(scope="module")
def thought_model(thought_tokenizer):
    """A random model whose greedy text varies, with a bias towards the delimiter and \\boxed{
    so that chains end in every way: answer, eos, max_thoughts and budget."""
    model = make_model(thought_tokenizer, seed=3, initializer_range=1.0)
    biases = {thought_tokenizer.convert_tokens_to_ids(DELIMITER): 6.0,
              thought_tokenizer.convert_tokens_to_ids("\\boxed{"): 3.0, thought_tokenizer.eos_token_id: 3.0}
    return add_head_bias(model, biases).eval()


PROMPTS = ["Start at 7.</thought> Add 5", "Natalia", "Solve the problem one step", "Multiply by 3:",
           "Find the step where", "The answer is", "12 * 3 = 36.", "clips in May"]


@pytest.mark.parametrize("cache", ["dynamic", "static", "paged"])
@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("max_thought_tokens,max_thoughts,budget", [(12, 20, 80), (6, 3, 60), (10, 20, 24)])
def test_generation_with_stopping_equals_plain_generate_cut_by_the_rule(
        thought_model, thought_tokenizer, max_thought_tokens, max_thoughts, budget, n, cache):
    tokenizer = thought_tokenizer
    prompts = [tokenizer(text, add_special_tokens=False).input_ids for text in PROMPTS]
    chains = generation.sample(thought_model, tokenizer, prompts, n, budget, greedy=True,
                               max_thought_tokens=max_thought_tokens, max_thoughts=max_thoughts, cache=cache)
    ids, mask = generation.left_pad(prompts, tokenizer.pad_token_id, thought_model.device)
    plain = thought_model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=budget,
                                   pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    finishes = set()
    for group, tokens in zip(chains, plain[:, ids.shape[1]:].tolist()):
        expected = cut_by_the_rule(tokenizer, tokens, budget, max_thought_tokens, max_thoughts,
                                   {tokenizer.eos_token_id})
        for chain in group:
            assert (chain.ids, chain.thought_ends, chain.finish) == expected
            assert len(chain.ids) <= budget and len(chain.thought_ends) <= max_thoughts
            finishes.add(chain.finish)
    assert len(finishes) >= 2  # the case is not trivial


def test_generation_with_stopping_on_smollm2(smollm2_model, smollm2_tokenizer):
    model = smollm2_model
    tokenizer = smollm2_tokenizer
    tokenizer.padding_side = "left"
    texts = [data.format_prompt(tokenizer, "What is 12 times 3?"),
             data.format_prompt(tokenizer, "Natalia sold clips to 48 of her friends in April, and then she sold "
                                           "half as many clips in May. How many clips in total?")]
    prompts = [tokenizer(t, add_special_tokens=False).input_ids for t in texts]
    budget, max_thought_tokens = 40, 12
    chains = generation.sample(model, tokenizer, prompts, 1, budget, greedy=True, max_thought_tokens=max_thought_tokens,
                         max_thoughts=3)
    ids, mask = generation.left_pad(prompts, tokenizer.pad_token_id, model.device)
    plain = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=budget,
                           pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    stop = generation.eos_ids(model, tokenizer)
    for (chain,), tokens in zip(chains, plain[:, ids.shape[1]:].tolist()):
        assert (chain.ids, chain.thought_ends, chain.finish) == cut_by_the_rule(
            tokenizer, tokens, budget, max_thought_tokens, 3, stop)


@pytest.mark.parametrize("cache", ["dynamic", "static", "paged"])
def test_per_prompt_budgets_and_thought_limits(thought_model, thought_tokenizer, cache):
    prompts = [thought_tokenizer(text, add_special_tokens=False).input_ids for text in PROMPTS[:3]]
    budgets, thoughts = [40, 5, 30], [2, 4, 0]  # the second cannot fit a thought, the third has none left
    chains = generation.sample(thought_model, thought_tokenizer, prompts, 2, budgets, temperature=1.0,
                               max_thought_tokens=8, max_thoughts=thoughts, cache=cache)
    assert all(len(c.ids) <= 40 and len(c.thought_ends) <= 2 for c in chains[0])
    assert [(c.ids, c.finish) for c in chains[1]] == [([], "budget")] * 2
    assert [(c.ids, c.finish) for c in chains[2]] == [([], "max_thoughts")] * 2


@pytest.mark.parametrize("cache", ["dynamic", "static", "paged"])
def test_free_text_sampling_ends_at_eos_or_the_cap(thought_model, thought_tokenizer, cache):
    """Without thought limits (a localization reply) a response is one piece of free text."""
    prompts = [thought_tokenizer(text, add_special_tokens=False).input_ids for text in PROMPTS]
    chains = generation.sample(thought_model, thought_tokenizer, prompts, 1, 30, greedy=True, cache=cache)
    eos = thought_tokenizer.eos_token_id
    for (chain,) in chains:
        assert chain.thought_ends == [len(chain.ids)]
        if chain.finish == "eos":
            assert chain.ids[-1] == eos and eos not in chain.ids[:-1]
        else:
            assert chain.finish == "budget" and len(chain.ids) == 30 and eos not in chain.ids


def test_free_text_with_a_static_cache_equals_plain_generate(thought_model, thought_tokenizer):
    """Without a stopper, the rows a static cache's shape adds must not keep the batch going or
    change a real row: 3 prompts x 3 = 9 rows run as 16."""
    tokenizer = thought_tokenizer
    prompts = [tokenizer(text, add_special_tokens=False).input_ids for text in PROMPTS[:3]]
    chains = generation.sample(thought_model, tokenizer, prompts, 3, 30, greedy=True, cache="static")
    ids, mask = generation.left_pad(prompts, tokenizer.pad_token_id, thought_model.device)
    plain = thought_model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=30,
                                   pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    for group, tokens in zip(chains, plain[:, ids.shape[1]:].tolist()):
        end = next((t + 1 for t, token in enumerate(tokens) if token == tokenizer.eos_token_id), 30)
        assert [chain.ids for chain in group] == [tokens[:end]] * 3


@pytest.mark.parametrize("cache", ["dynamic", "static", "paged"])
def test_sampling_follows_temperature_and_top_p(thought_tokenizer, cache):
    """A model whose next-token distribution is fixed (the lm head is a bias only): the sampled
    tokens' frequencies against the distribution computed by hand from the temperature and top-p."""
    tokenizer, temperature, top_p = thought_tokenizer, 0.7, 0.9
    chosen, base = [40, 41, 42, 43], torch.tensor([0.5, 0.25, 0.15, 0.1])
    # every other token at -1e4, eos included: every row runs to its budget
    model = add_head_bias(make_model(tokenizer, seed=5), dict(zip(chosen, base.log().tolist())), fill=-1e4,
                          keep_weights=False)
    # By hand: p ~ base^(1/T); top-p keeps the most likely tokens whose mass reaches top_p
    # (here: all but the least likely, since the other three hold 0.94 >= 0.9).
    p = base ** (1 / temperature)
    p /= p.sum()
    assert p[:3].sum() >= top_p > p[:2].sum()
    expected = torch.cat([p[:3] / p[:3].sum(), torch.zeros(1)])
    prompt = tokenizer("Natalia sold clips", add_special_tokens=False).input_ids  # (paged: forked into 64 rows)
    torch.manual_seed(0)
    chains = generation.sample(model, tokenizer, [prompt], 64, 32, temperature=temperature, top_p=top_p, cache=cache)
    drawn = torch.tensor([token for chain in chains[0] for token in chain.ids])
    assert len(drawn) == 64 * 32
    frequencies = torch.stack([(drawn == token).float().mean() for token in chosen])
    assert frequencies[3] == 0 and frequencies.sum() == 1
    # 5 standard deviations of a frequency over 2048 draws (0.05); sampling at temperature 1 would be 0.09 off
    assert (frequencies - expected).abs().max() < 5 * (expected * (1 - expected) / 2048).sqrt().max()


def test_paged_cache_forks_each_prompt_into_its_rows(thought_model, thought_tokenizer, monkeypatch):
    """With continuous batching, a prompt of more than one token is one request, forked into its n
    rows after its prefill; each row must come back to its own prompt."""
    from transformers.generation.continuous_batching import ContinuousBatchingManager

    tokenizer, added = thought_tokenizer, []
    add_request = ContinuousBatchingManager.add_request
    monkeypatch.setattr(ContinuousBatchingManager, "add_request",
                        lambda self, ids, *args, **kwargs: added.append(ids) or add_request(self, ids, *args, **kwargs))
    prompts = [tokenizer(text, add_special_tokens=False).input_ids for text in PROMPTS]
    prompts = [prompt for prompt in prompts if len(prompt) > 1]
    settings = dict(greedy=True, max_thought_tokens=12, max_thoughts=20)
    paged = generation.sample(thought_model, tokenizer, prompts, 3, 40, cache="paged", **settings)
    assert added == prompts  # one request per prompt
    dynamic = generation.sample(thought_model, tokenizer, prompts, 3, 40, **settings)
    assert len({tuple(group[0].ids) for group in dynamic}) == len(prompts)  # a row given to another prompt shows
    assert paged == dynamic


def test_paged_cache_failure_leaves_no_thread_and_the_attention_as_it_was(thought_tokenizer, monkeypatch):
    """An error while continuous batching runs (here: in the stopper, or no progress) comes back
    with the manager's thread stopped; one before it starts leaves the model's attention as it was
    (the manager switches an eager model to a paged version of it)."""
    import threading
    import time

    from transformers.generation.continuous_batching import ContinuousBatchingManager

    tokenizer = thought_tokenizer
    model = make_model(tokenizer, seed=3, initializer_range=1.0)
    model.set_attn_implementation("eager")
    prompts = [tokenizer(text, add_special_tokens=False).input_ids for text in PROMPTS[:3]]
    threads = threading.active_count()

    def fail(self, row, token):
        raise ValueError("stopper failed")

    with monkeypatch.context() as patch:
        patch.setattr(generation.ThoughtStopper, "add", fail)
        with pytest.raises(ValueError, match="stopper failed"):
            generation.sample(model, tokenizer, prompts, 2, 400, greedy=True, max_thought_tokens=8, cache="paged")
    assert threading.active_count() == threads
    with monkeypatch.context() as patch:  # no result ever comes back: stuck, not slow
        patch.setattr(generation, "STALL_SECONDS", 0.5)
        patch.setattr(ContinuousBatchingManager, "get_result", lambda self, *args, **kwargs: time.sleep(0.1))
        with pytest.raises(RuntimeError, match="no progress"):
            generation.sample(model, tokenizer, prompts, 2, 8, greedy=True, cache="paged")
    assert threading.active_count() == threads

    def refuse(self, *args, **kwargs):
        raise RuntimeError("no room")

    monkeypatch.setattr(ContinuousBatchingManager, "add_request", refuse)
    with pytest.raises(RuntimeError, match="no room"):
        generation.sample(model, tokenizer, prompts, 2, 8, greedy=True, cache="paged")
    assert model.config._attn_implementation == "eager"


def test_extra_rows_stop_at_their_first_token():
    class EveryOther(generation.StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            assert input_ids.shape[0] == 3 and scores.shape[0] == 3  # the real rows only
            return torch.tensor([True, False, True])

    stop = generation.ExtraRowsStop([EveryOther()], rows=3)
    assert stop(torch.zeros(5, 2, dtype=torch.long), torch.zeros(5, 7)).tolist() == [True, False, True, True, True]
    assert generation.ExtraRowsStop([], rows=2)(torch.zeros(4, 1), None).tolist() == [False, False, True, True]


def test_static_cache_on_a_sliding_window_model_equals_plain_generate(thought_tokenizer):
    """A sliding-window layer's dynamic cache keeps only the window: prompts longer than it must
    not have their prefix copied into a static cache (it would count the wrong length)."""
    tokenizer = thought_tokenizer
    model = make_model(tokenizer, seed=4, initializer_range=1.0, use_sliding_window=True, sliding_window=6,
                       max_window_layers=0)
    assert generation.uses_sliding_window(model)
    prompts = [tokenizer(text, add_special_tokens=False).input_ids for text in PROMPTS[:3]]
    assert max(map(len, prompts)) > 6
    ids, mask = generation.left_pad(prompts, tokenizer.pad_token_id, model.device)
    plain = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=12,
                           pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    for cache in ("dynamic", "static", "paged"):
        chains = generation.sample(model, tokenizer, prompts, 2, 12, greedy=True, cache=cache)
        for group, tokens in zip(chains, plain[:, ids.shape[1]:].tolist()):
            end = next((t + 1 for t, token in enumerate(tokens) if token == tokenizer.eos_token_id), 12)
            assert [chain.ids for chain in group] == [tokens[:end]] * 2, cache
