"""Problems, prompts and rewards: what the trainers read, what the model sees, how an answer
is scored. Plumbing: not needed to understand GRPO, RRPO or SRPO.

An example is a dict with a "question" and either a gold "answer" (math) or "tests" (code); it may
name the "instruction" shown before its question (code problems do), and the trainers add its
"prompt_ids". Task modules (toy.py, code_tasks.py) build examples and depend on this file, never
the reverse.
"""
from pathlib import Path

import verify

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


def tokenize_prompts(examples, tokenizer, max_new_tokens: int, context: int) -> tuple[list, int]:
    """Adds "prompt_ids" to each example; drops (and counts) those that leave no room to answer."""
    kept = []
    for example in examples:
        text = format_prompt(tokenizer, example["question"], example.get("instruction", THOUGHT_INSTRUCTION))
        example["prompt_ids"] = tokenizer(text, add_special_tokens=False).input_ids
        if len(example["prompt_ids"]) + max_new_tokens <= context:
            kept.append(example)
    return kept, len(examples) - len(kept)


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


def load_dataset(name: str, train: bool, question_field: str | None = None,
                 answer_field: str | None = None) -> list[dict]:
    """Examples of a benchmark (by short name), a hub dataset or a local .jsonl/.json/.parquet
    file, with the question and gold answer fields detected unless named."""
    import datasets  # slow to import, and only needed here

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
    question_field = question_field or next((f for f in QUESTION_FIELDS if f in rows.column_names), None)
    answer_field = answer_field or next((f for f in ANSWER_FIELDS if f in rows.column_names), None)
    if question_field not in rows.column_names or answer_field not in rows.column_names:
        raise SystemExit(f"Cannot find the question and answer fields of '{name}': it has "
                         f"{rows.column_names}. Name them with --question-field and --answer-field.")
    return [{"question": row[question_field], "answer": verify.gold_answer(row[answer_field])}
            for row in rows]


def has_test_split(name: str) -> bool:
    """Whether a dataset name gives evaluation problems of its own (a test split, or, for the
    toy task, problems drawn with another seed)."""
    if name in BENCHMARKS:
        return BENCHMARKS[name][2] != BENCHMARKS[name][3]
    return name not in ("code", "lcb") and not Path(name).is_file()


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

