"""GRPO baseline (work in progress)."""

THOUGHT_INSTRUCTION = (
    "Solve the problem below one thought at a time. A thought is one small step: a single "
    "observation, calculation or deduction. End every thought with </thought>. In your last "
    "thought, write the final answer as \\boxed{answer}."
)


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
