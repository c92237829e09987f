"""Problems, prompts and rewards: what the trainers read, what the model sees, how an answer
is scored. Plumbing: not needed to understand GRPO, RRPO or SRPO.

An example is a dict with a "question" and either a gold "answer" (math) or "tests" (code); it may
name the "instruction" shown before its question (code problems do), and the trainers add its
"prompt_ids". Task modules (toy.py, code_tasks.py) build examples and depend on this file, never
the reverse.
"""
import json
import warnings
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
    file, with the question and gold answer fields detected unless named. Rows without a
    question or a readable answer are skipped, with a warning that counts them."""
    if Path(name).is_file():
        rows = read_local_rows(Path(name))
    else:
        import datasets  # slow to import, and only needed here

        hub_id, config, train_split, test_split = BENCHMARKS.get(name, (name, None, "train", "test"))
        try:
            rows = datasets.load_dataset(hub_id, config, split=train_split if train else test_split).to_list()
        except Exception as error:  # datasets raises many kinds: missing repo, split, network
            raise SystemExit(f"Cannot load the dataset '{name}' ({hub_id}): {error}. Pass a benchmark "
                             f"name ({', '.join(BENCHMARKS)}, toy, code, lcb), a hub id or a local "
                             ".jsonl/.json/.parquet file.") from None
        if not rows:
            raise SystemExit(f"The dataset '{name}' ({hub_id}) has no rows in its "
                             f"{train_split if train else test_split} split: pass another dataset.")
    columns = list(dict.fromkeys(field for row in rows for field in row))
    question_field = question_field or next((f for f in QUESTION_FIELDS if f in columns), None)
    answer_field = answer_field or next((f for f in ANSWER_FIELDS if f in columns), None)
    if question_field not in columns or answer_field not in columns:
        raise SystemExit(f"Cannot find the question and answer fields of '{name}': it has "
                         f"{columns}. Name them with --question-field and --answer-field.")
    examples, unusable = [], []
    for number, row in enumerate(rows, 1):
        question, answer = row.get(question_field), row.get(answer_field)
        gold = None if answer is None else verify.gold_answer(answer)
        # A null would otherwise become the text "None": a question "Problem: None", or a gold
        # answer "None" that rewards \boxed{None}.
        if question is None or not str(question).strip() or not gold:
            unusable.append(number)
        else:
            examples.append({"question": question, "answer": gold})
    if not examples:
        raise SystemExit(f"None of the {len(rows)} rows of '{name}' has both a question ('{question_field}') "
                         f"and a readable answer ('{answer_field}'): fill them in, or name other fields with "
                         "--question-field and --answer-field.")
    if unusable:
        warnings.warn(f"'{name}': skipped {len(unusable)} of {len(rows)} rows whose question ('{question_field}') "
                      f"or answer ('{answer_field}') is missing, null, empty or unreadable (rows "
                      f"{', '.join(map(str, unusable[:5]))}{', ...' if len(unusable) > 5 else ''}).")
    return examples


def read_local_rows(path: Path) -> list[dict]:
    """The rows of a local file: .jsonl or .json (one JSON object a line, or one JSON list of
    objects), or .parquet. Errors name the file, the line and the fix."""
    if path.suffix == ".parquet":
        import pyarrow.parquet  # installed with datasets

        try:
            rows = pyarrow.parquet.read_table(path).to_pylist()
        except Exception as error:  # pyarrow raises several kinds for a damaged file
            raise SystemExit(f"Cannot read '{path}' as a parquet file ({error}): write it again, for "
                             "example with pandas' to_parquet, or pass a .jsonl file.") from None
    elif path.suffix in (".jsonl", ".json"):
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8-sig")  # tolerates the byte-order mark some editors write
        except UnicodeDecodeError as error:
            line = raw[:error.start].count(b"\n") + 1
            raise SystemExit(f"'{path}' line {line} is not UTF-8 text: save the file as UTF-8.") from None
        rows = json_rows(text, path)
    else:
        raise SystemExit(f"Cannot read '{path}': use a .jsonl, .json or .parquet file.")
    if not rows:
        raise SystemExit(f"'{path}' holds no rows: it needs one problem per row, with a question and an answer.")
    return rows


def json_rows(text: str, path: Path) -> list[dict]:
    r"""The objects of a JSON list, or of JSON lines (blank lines are ignored).

    >>> json_rows('{"question": "1+1?", "answer": "2"}\n\n{"question": "2+2?", "answer": "4"}', Path("d.jsonl"))
    [{'question': '1+1?', 'answer': '2'}, {'question': '2+2?', 'answer': '4'}]
    """
    if text.lstrip().startswith("["):
        try:
            rows, lines = json.loads(text), None
        except json.JSONDecodeError as error:
            raise SystemExit(f"'{path}' line {error.lineno} is not valid JSON ({error.msg}): fix it, or write "
                             "one JSON object a line.") from None
    else:
        rows, lines = [], []
        for number, line in enumerate(text.split("\n"), 1):  # not splitlines: JSON strings may hold U+2028
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise SystemExit(f"'{path}' line {number} is not valid JSON ({error.msg}): each line must be "
                                     "one JSON object; fix or delete that line.") from None
                lines.append(number)
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            where = f"line {lines[index]}" if lines else f"item {index + 1} of the list"
            raise SystemExit(f"'{path}' {where} is not a JSON object but {type(row).__name__}: each problem "
                             'must be an object such as {"question": ..., "answer": ...}.')
    return rows


def has_test_split(name: str) -> bool:
    """Whether a dataset name gives evaluation problems of its own (a test split, or, for the
    toy task, problems drawn with another seed)."""
    if name in BENCHMARKS:
        return BENCHMARKS[name][2] != BENCHMARKS[name][3]
    return name not in ("code", "lcb") and not Path(name).is_file()


def rewards(examples: list[dict], completions: list[str]) -> list[float]:
    """1.0 for a right final answer (math; not one that only restates an expression of the question)
    or a program that passes every test (code), else 0.0.
    Programs are checked in parallel subprocesses; math answers one by one (they are cheap)."""
    code = [i for i, example in enumerate(examples) if "tests" in example]
    scores = [0.0 if i in code else verify.math_reward(completion, example["answer"], example.get("question"))
              for i, (example, completion) in enumerate(zip(examples, completions))]
    if code:
        checked = verify.code_rewards([completions[i] for i in code], [examples[i]["tests"] for i in code])
        for i, score in zip(code, checked):
            scores[i] = score
    return scores

