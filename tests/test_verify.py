"""Tests of verify.py's math half: answer extraction, equivalence, gold answers, time bounds, and
a copy of the file working on its own."""
import inspect
import json
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest

import data
import verify
from verify import extract_answer, gold_answer, is_equiv, math_reward, normalize_answer

EQUIVALENCES = [
    # (pred, gold, equal?)
    ("72", "72", True),
    ("1,234", "1234", True),
    ("1234", "1,234", True),
    (r"\$18.90", "18.9", True),
    ("0.5", r"\frac{1}{2}", True),
    ("1/2", r"\frac12", True),
    (r"\dfrac{3}{4}", "0.75", True),
    (r"\tfrac{3}{4}", r"\frac 34", True),
    (r"\left( 3, \frac{\pi}{2} \right)", r"(3, \frac{\pi}{2})", True),
    (r"10\%", "10", True),  # MATH convention: the percent sign is dropped
    ("x=3", "3", True),
    ("3", "x = 3", True),
    (r"x \in [-2,7]", "[-2, 7]", True),
    (r"\text{13}", "13", True),
    ("**73**", "73", True),
    ("73.", "73", True),
    (r"90^\circ", "90", True),
    ("90°", "90", True),
    ("2.5e3", "2500", True),
    (r"4.5\times10^{33}", "4.5e33", True),
    (r"\frac{\sqrt{3}}{3}", r"\frac{1}{\sqrt3}", True),
    (r"2\sqrt{2}", r"\sqrt{8}", True),
    (r"3\sqrt{13}", r"\sqrt{117}", True),
    (r"\sqrt[3]{8}", "2", True),
    (r"\pi/2", r"\frac{\pi}{2}", True),
    ("(x+1)^2", "x^2+2x+1", True),
    ("-5i+6", "6-5i", True),
    (r"e^{i\pi}", "-1", True),
    (r"\binom{5}{2}", "10", True),
    ("2^{10}", "1024", True),
    (r"\frac{-35}{9}", r"-\frac{35}{9}", True),
    (r"1\frac{4}{5}", "9/5", True),  # a mixed number, as MATH writes them
    ("025", "25", True),
    (r"10,\!080", "10080", True),
    (".5", "0.5", True),
    ("y = 2x + 3", "y=3+2x", True),
    (r"\cot x", r"\frac{\cos x}{\sin x}", True),
    ("3, 5, 7", "7,5,3", True),  # a list of solutions, in any order
    (r"\{1,-2\}", "1,-2", True),
    ("(3,4]", "(3, 4]", True),
    (r"(9,36) \cup (0,9)", r"(0,9)\cup(9,36)", True),
    (r"1\pm\sqrt{19}", r"1+\sqrt{19}, 1-\sqrt{19}", True),
    ("(1,8,19), (2,7,13)", "(2,7,13),(1,8,19)", True),
    (r"\begin{pmatrix} 1/5 \\ -18/5 \end{pmatrix}", r"\begin{pmatrix} 0.2 \\ -3.6 \end{pmatrix}", True),
    (r"\text{Evelyn}", "Evelyn", True),
    (r"\text{(C)}", "C", True),
    (r"5.4 \text{ cents}", "5.4", True),
    (r"864 \mbox{ inches}^2", "864", True),
    (r"\frac{270}7\text{ degrees}", r"\frac{270}{7}", True),
    ("1e-34", "10^{-34}", True),
    (r"\sqrt{3+2\sqrt{2}}", r"1+\sqrt{2}", True),
    (r"\sqrt{3+2\sqrt{2}}-1-\sqrt{2}", "0", True),  # a zero that evaluating alone cannot prove
    (r"\infty", r"+\infty", True),
    ("inf", r"\infty", True),
    (r"-\infty", "-inf", True),
    (r"(-\infty, 3]", "(-inf,3]", True),
    (r"(0,+\infty)", r"(0,\infty)", True),
    (r"\frac{\sqrt{x}}{2}", r"\frac12\sqrt{x}", True),
    ("x^{1/2}", r"\sqrt{x}", True),
    ("1{,}000", "1000", True),
    (r"10\,000", "10000", True),
    ("1 000 000", "1000000", True),
    (r"10 \text{ square units}", "10", True),
    (r"5 \text{ more apples}", "5", True),  # "how many more": the word is part of the unit
    (r"4 \text{ times}", "4", True),
    (r"20 \text{ meters squared}", "20", True),
    (r"3 \text{ dozen}", "3", True),
    (r"100,\ 200", "100, 200", True),
    (r"x\,y", "xy", True),
    (r"2\pi\,r", r"2\pi r", True),
    ("2/3", "2", False),
    (r"4\sqrt{2}", "4", False),
    ("1-1/e", "1+1/e", False),
    ("0.33", r"\frac{1}{3}", False),
    (r"\sqrt{2}", "1.414", False),
    (r"\pi", "3.14", False),
    ("72", "73", False),
    ("-2", "2", False),
    ("10", "100", False),
    ("1e3", "100", False),
    ("3", r"\frac{1}{3}", False),
    (r"1\frac{1}{2}", r"\frac{1}{2}", False),
    (r"10\%", "0.1", False),  # the flip side of dropping the percent sign
    ("(3,4)", "(3,4]", False),
    ("(1,2)", "(2,1)", False),  # tuples are ordered
    ("(1,2)", "1,2", False),
    ("1,2", "1,2,3", False),
    ("x=3", "y=3", False),
    ("x = 3", "x = -3", False),
    ("2x+3", "2x-3", False),
    ("x^2", "x^3", False),
    ("6+9i", "6-9i", False),
    (r"\infty", r"-\infty", False),
    ("inf", "-inf", False),
    (r"\infty", "10^{400}", False),  # infinity is no large number
    (r"10^{-34}", r"6.63\times10^{-34}", False),  # small numbers compare relatively, not to 0
    ("2^{-200}", "3^{-200}", False),
    ("e^{-100}", "0", False),
    (r"\text{east}", r"\text{west}", False),
    (r"\text{ab}", r"\text{ba}", False),  # words are not products of symbols
    ("52_8", "528", False),  # base 8
    ("52_8", "52_9", False),
    # a unit is a unit, not a word that changes the number
    (r"5 \text{ or more}", "5", False),
    (r"2 \text{ and a half}", "2", False),
    (r"\text{Evelyn}\text{ or Navin}", r"\text{Evelyn}", False),
    # constants agree to 50 digits, not 30
    (r"3 + \frac{\pi}{10^{40}}", "3", False),
    (r"2^{128}+\sqrt{2}", "2^{128}", False),
    (r"\sqrt{9.000000000000000000000000000000001}", "3", False),
    # numbers side by side stay two numbers
    ("3, 500", "3500", False),
    ("3 5", "35", False),
    ("3 5", "15", False),
    (r"2\;3", "23", False),
    (r"5^\circ 2", "52", False),
    # a choice letter is no constant; shapes and kinds of collections count
    ("e", r"\text{(E)}", False),
    (r"\begin{pmatrix}1\\2&3&4\end{pmatrix}", r"\begin{pmatrix}1&2\\3&4\end{pmatrix}", False),
    (r"(2,32)\cup(8,18)", "(2,32), (8,18)", False),
    ("5", "", False),
    ("", "5", False),
    (None, "5", False),
    ("5", None, False),
]


@pytest.mark.parametrize("pred, gold, equal", EQUIVALENCES)
def test_is_equiv(pred, gold, equal):
    assert is_equiv(pred, gold) is equal


@pytest.mark.parametrize("text, answer", [
    (r"so the answer is \boxed{5}.", "5"),
    (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
    (r"first \boxed{3}, then \boxed{4}", "4"),
    (r"\fbox{7}", "7"),
    (r"$\boxed 5$", "5"),
    (r"\boxed{3} and then \boxed{4", "3"),  # the last box was cut off
    (r"\boxed{2} #### 3", "2"),
    ("3 + 4 = 7\n#### 1,234", "1,234"),
    ("The answer is 42.", "42"),
    ("So the final answer is $\\frac{1}{2}$.\n", r"\frac{1}{2}"),
    ("The answer is 3.5. That is all.", "3.5"),
    ("no answer here", None),
    ("", None),
    (None, None),
])
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer


def test_normalize_answer():
    assert normalize_answer(r"$\left( 3, \dfrac{\pi}{2} \right)$") == r"(3,\frac{\pi}{2})"
    assert normalize_answer(r"\$32,\!348") == "32348"
    assert normalize_answer(r"\cot x") == r"\cot x"  # the space is what separates \cot from x


def test_math_reward():
    assert math_reward(r"We find $x = \boxed{\dfrac{3}{4}}$.", "0.75") == 1.0
    assert math_reward(r"We find $x = \boxed{\dfrac{3}{5}}$.", "0.75") == 0.0
    assert math_reward("no idea", "0.75") == 0.0


def test_an_expression_copied_from_the_question_earns_nothing():
    question = r"Compute $513^2 - 487^2$."
    assert math_reward(r"$\boxed{513^2 - 487^2}$", "26000") == 1.0  # the value is right
    assert math_reward(r"$\boxed{513^2 - 487^2}$", "26000", question) == 0.0
    assert math_reward(r"$\boxed{26,\!000}$", "26000", question) == 1.0
    assert math_reward(r"$x = \boxed{3}$", "3", "Solve $x = 3$ for $x$.") == 1.0  # the gold's own form
    assert math_reward(r"$\boxed{\sqrt{242}}$", r"x = 11\sqrt2", r"Simplify $x = \sqrt{242}$.") == 0.0
    # a plain number of the question may be its answer
    assert math_reward(r"$\boxed{\frac{1}{2}}$", "0.5", r"Heads has probability $\frac{1}{2}$. And tails?") == 1.0
    # a currency sign before the math does not hide it, nor \(...\) math
    currency = r"A pen costs $5. Simplify $\sqrt{242}$, which is more than $15."
    assert math_reward(r"$\boxed{\sqrt{242}}$", r"11\sqrt2", currency) == 0.0
    assert math_reward(r"$\boxed{11\sqrt{2}}$", r"11\sqrt2", currency) == 1.0
    assert math_reward(r"$\boxed{\sqrt{242}}$", r"11\sqrt2", r"Simplify \(\sqrt{242}\).") == 0.0
    examples = [{"question": question, "answer": "26000"}] * 2
    assert data.rewards(examples, [r"\boxed{513^2 - 487^2}", r"\boxed{26000}"]) == [0.0, 1.0]


def test_math500_copied_expressions_fail_and_solutions_pass(shared_data):
    rows = read_jsonl(shared_data / "math500" / "test.jsonl")
    # every math span of every problem that has the gold's value, boxed as the answer
    copies = [(f"$\\boxed{{{span}}}$", row["answer"], row["problem"]) for row in rows
              for span in re.findall(r"\$([^$]+)\$", row["problem"])
              if math_reward(f"$\\boxed{{{span}}}$", row["answer"]) == 1.0]
    restated = [copy for copy in copies if math_reward(*copy) == 0.0]
    print(f"{len(restated)} of {len(copies)} copied expressions with the gold's value earn nothing")
    # kept: 2 written as their gold is, 3 plain numbers of "Write ... as a decimal" problems
    assert len(copies) >= 25 and len(restated) >= len(copies) - 5
    assert all(math_reward(row["solution"], row["answer"], row["problem"]) == 1.0 for row in rows)


def test_python_builtins_are_never_evaluated():
    for code in ("input()", "exit()", "print(3)", "open(1)"):
        with pytest.raises(ValueError, match="refusing"):
            verify._to_sympy(code)


def test_math_verify_backend():
    pytest.importorskip("math_verify")
    assert is_equiv(r"\frac{1}{2}", "0.5", backend="math_verify")
    assert not is_equiv(r"\frac{1}{3}", "0.5", backend="math_verify")


def test_math_verify_backend_missing(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install math-verify"):
        is_equiv("1", "1", backend="math_verify")


def test_agreement_without_math_verify_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(SystemExit, match="pip install math-verify"):
        verify._agreement(str(tmp_path / "math500.jsonl"))


def test_unknown_backend():
    with pytest.raises(ValueError, match="builtin"):
        is_equiv("1", "1", backend="wolfram")


# --- the benchmark files ---------------------------------------------------------------------

def read_jsonl(path):
    with open(path) as lines:
        return [json.loads(line) for line in lines]


LONE_FRACTION = re.compile(r"(?<![\w}^])(?<!\d )\\frac\{(\d+)\}\{(\d+)\}(?![\w{^])")


def as_decimal_or_slash(match):
    """`\\frac{3}{4}` as `0.75` when that decimal is exact, else as `3/4`."""
    top, bottom = int(match[1]), int(match[2])
    decimal = Decimal(top) / Decimal(bottom)
    return str(decimal) if Fraction(decimal) == Fraction(top, bottom) else f"{top}/{bottom}"


def equal_rewrites(answer):
    """Rewritings of a MATH answer that keep its value, each different from the answer."""
    rewrites = [
        LONE_FRACTION.sub(as_decimal_or_slash, answer),
        answer.replace(r"\frac", r"\dfrac"),
        re.sub(r"\s*([+=]|,(?!\\!|\d{3}))\s*", r" \1 ", answer),  # not in 10,\!080 or 58,500
        f"${answer}$",
    ]
    if answer.startswith("(") and answer.endswith(")") and r"\left" not in answer:
        rewrites.append(r"\left(" + answer[1:-1] + r"\right)")
    return [rewrite for rewrite in dict.fromkeys(rewrites) if rewrite != answer]


def one_number_changed(answer):
    """The answer with its first number increased by one, or None when it has no number."""
    number = re.search(r"\d+", answer)
    if number is None:
        return None
    bumped = str(int(number[0]) + 1).zfill(len(number[0]))  # .0672 becomes .0673, not .673
    return answer[: number.start()] + bumped + answer[number.end() :]


def test_gsm8k_gold_answers_are_numbers(shared_data):
    rows = read_jsonl(shared_data / "gsm8k" / "test.jsonl")
    golds = [gold_answer(row["answer"]) for row in rows]
    assert len(golds) == 1319
    for gold in golds:
        number = Fraction(gold.replace(",", ""))  # raises ValueError when it is not a number
        assert is_equiv(gold, str(number)) and not is_equiv(gold, str(number + 1)), gold
    assert golds[0] == "18"  # Janet's ducks
    assert math_reward(r"She makes \boxed{18} dollars.", golds[0]) == 1.0


def test_math500_rewrites(shared_data):
    golds = [gold_answer(row["answer"]) for row in read_jsonl(shared_data / "math500" / "test.jsonl")]
    equal = [(rewrite, gold) for gold in golds for rewrite in equal_rewrites(gold)]
    unequal = [(one_number_changed(gold), gold) for gold in golds if one_number_changed(gold)]
    equal_right = sum(is_equiv(rewrite, gold) for rewrite, gold in equal)
    # the last rewrite of each answer also goes through extraction, boxed inside a sentence
    boxed_right = sum(
        math_reward(f"Putting it together, we get $\\boxed{{{rewrites[-1]}}}$ as claimed.", gold) == 1
        for gold in golds if (rewrites := equal_rewrites(gold))
    )
    unequal_wrong = [(changed, gold) for changed, gold in unequal if is_equiv(changed, gold)]
    print(f"equal rewrites judged equal: {equal_right}/{len(equal)}, boxed in a sentence: "
          f"{boxed_right}/{len(golds)}, one number changed judged unequal: "
          f"{len(unequal) - len(unequal_wrong)}/{len(unequal)}")
    assert len(equal) > 600 and len(unequal) > 450
    assert equal_right >= 0.99 * len(equal)
    assert boxed_right >= 0.99 * len(golds)
    assert unequal_wrong == []


@pytest.mark.parametrize("folder, field, question_field", [
    ("amc23", "answer", "problem"), ("aime24", "answer", "problem"), ("minerva_math", "solution", "problem"),
    ("olympiadbench", "final_answer", "question"),
])
def test_other_benchmark_gold_answers(shared_data, folder, field, question_field):
    rows = read_jsonl(shared_data / folder / "test.jsonl")
    golds = [gold_answer(row[field]) for row in rows]
    assert all(golds)
    for gold, row in zip(golds, rows):
        assert math_reward(f"Hence the answer is $\\boxed{{{gold}}}$.", gold, row[question_field]) == 1.0, gold
        if changed := one_number_changed(gold):
            assert math_reward(f"Hence the answer is $\\boxed{{{changed}}}$.", gold) == 0.0, gold


def test_gold_answer_formats():
    assert gold_answer("so 2 * 3 = 6\n#### 1,234") == "1,234"
    assert gold_answer(27.0) == "27" and gold_answer(2.5) == "2.5" and gold_answer(25) == "25"
    assert gold_answer(r"the image is $\boxed{1.6} \mathrm{~cm}$") == "1.6"
    assert gold_answer(["$(1,2), (3,4)$"]) == "(1,2), (3,4)"
    assert gold_answer(["$69$", "$84$"]) == "69, 84"
    assert gold_answer(r"\$32") == r"\$32"


# --- time bounds and odd input -----------------------------------------------------------------

PATHOLOGICAL = [
    r"9^{9^{9^{9}}}",  # refused before sympy sees it
    r"(9^{9})^{9^{9}}",  # reaches sympy: the worker is killed after TIMEOUT_SECONDS
    "+".join(["x"] * 2500),  # 5,000 characters
    r"\frac{1}{2",  # unbalanced braces
    r"\sqrt{",
    "}}}{{{",
]


@pytest.mark.parametrize("pred", PATHOLOGICAL)
def test_pathological_input_is_false_and_fast(pred):
    start = time.monotonic()
    assert is_equiv(pred, "9") is False
    assert time.monotonic() - start < 10
    assert is_equiv(r"2\sqrt{2}", r"\sqrt{8}")  # the worker still answers afterwards


def test_time_bound_in_a_thread_leaves_no_thread():
    threads_before = threading.active_count()
    results = {}

    def check():
        results["tower"] = is_equiv(r"(9^{9})^{9^{9}}", "9")
        results["sqrt"] = is_equiv(r"2\sqrt{2}", r"\sqrt{8}")

    start = time.monotonic()
    thread = threading.Thread(target=check)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive() and time.monotonic() - start < 10
    assert results == {"tower": False, "sqrt": True}
    assert threading.active_count() == threads_before


def test_none_empty_and_huge_input():
    huge = "1" * 1_000_000
    assert extract_answer("x" * 1_000_000 + r"\boxed{5}") == "5"
    assert extract_answer(r"\boxed{" * 150_000) is None  # unclosed boxes: still linear time
    assert extract_answer("answer is" + " " * 1_000_000) is None
    assert is_equiv(huge, "1") is False and is_equiv("1", huge) is False
    assert math_reward(r"\boxed{" + huge + "}", "1") == 0.0
    assert math_reward(None, "1") == 0.0 and math_reward("", "1") == 0.0
    assert normalize_answer("") == ""


def test_worker_stops_when_its_parent_is_killed_during_a_comparison():
    parent = (
        "import os, signal, threading, time, verify\n"
        "verify.is_equiv(r'2\\sqrt2', r'\\sqrt8')\n"
        "print(verify._idle_workers[0].process.pid, flush=True)\n"
        "threading.Thread(target=verify.is_equiv, args=(r'(9^9)^{9^9}', '9')).start()\n"
        "time.sleep(0.5)\n"
        "os.kill(os.getpid(), signal.SIGKILL)  # no atexit: the worker is left mid-computation\n"
    )
    root = Path(__file__).resolve().parents[1]
    # stderr not captured: the worker inherits it, and run() would wait for the worker to close it
    run = subprocess.run([sys.executable, "-c", parent], cwd=root, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
    worker_pid = int(run.stdout)

    def running():  # an orphan that exited may stay a zombie until init reaps it
        try:
            return Path(f"/proc/{worker_pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 20
    while running() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not running()


def test_a_copy_under_another_name_without_the_main_block_works(tmp_path):
    source = (Path(__file__).resolve().parents[1] / "verify.py").read_text()
    math_checking, _ = source.split('\nif __name__ == "__main__":')  # cut off the CLI
    (tmp_path / "answer_check.py").write_text(math_checking)
    # a fresh interpreter in a folder with only the copy: the project's files are not importable
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    check = ("import answer_check\n"
             "print(answer_check.is_equiv('(x+1)^2', 'x^2+2x+1'), answer_check.is_equiv('(x+1)^2', 'x^2+1'))")
    run = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.stdout == "True False\n", run.stderr


# --- workers: time limit per thread, memory limit, signals, open files, no leak ---------------

linux_only = pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads Linux /proc")


def child_pids():
    """The processes this one started: the sympy workers, here."""
    tasks = Path("/proc/self/task").glob("*/children")
    return [int(pid) for task in tasks for pid in task.read_text().split()]


def running(pid):
    try:  # an exited child stays a zombie until it is reaped
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def python_command(code):
    """The command line of a fresh interpreter that runs `code`, with `child_pids` defined."""
    return [sys.executable, "-c", f"from pathlib import Path\n{inspect.getsource(child_pids)}{code}"]


def run_python(code):
    """The stdout of `code` run by a fresh interpreter in the project folder."""
    run = subprocess.run(python_command(code), cwd=Path(__file__).resolve().parents[1],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return run.stdout


def compare_in_threads(pred, gold, n_threads=4):
    """(verdict, seconds) of each of `n_threads` threads that compare at the same time."""
    results = [None] * n_threads

    def compare(i):
        start = time.monotonic()
        results[i] = (is_equiv(pred, gold), time.monotonic() - start)

    threads = [threading.Thread(target=compare, args=(i,)) for i in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


@linux_only
def test_workers_are_reused_and_stop_at_exit():
    before = len(child_pids())  # workers that earlier tests in this process started
    for _ in range(10):
        results = compare_in_threads("(x+1)^2", "x^2+2x+1", n_threads=3)
        assert [same for same, _ in results] == [True] * 3
    # 30 calls, at most 3 at once: at most one new worker per thread (on a loaded machine a call
    # may time out and its worker be replaced, so the earlier ones are not counted on)
    assert len([pid for pid in child_pids() if running(pid)]) <= before + 3
    code = (
        "import threading, verify\n"
        "verify.TIMEOUT_SECONDS = 60.0  # a slow first comparison must not stop its worker\n"
        "both_asking = threading.Barrier(2, timeout=60)\n"
        "class Worker(verify._Worker):  # each thread asks only when both hold a worker: two start\n"
        "    def ask(self, *args):\n"
        "        both_asking.wait()\n"
        "        return super().ask(*args)\n"
        "verify._Worker = Worker\n"
        "results = []\n"
        "def compare(): results.append(verify.is_equiv('(x+1)^2', 'x^2+2x+1'))\n"
        "threads = [threading.Thread(target=compare) for _ in range(2)]\n"
        "[thread.start() for thread in threads]; [thread.join() for thread in threads]\n"
        "assert results == [True, True], results\n"
        "print(*child_pids())\n"
    )
    # stderr not captured: the workers inherit it, and run() would wait for them to close it
    run = subprocess.run(python_command(code), cwd=Path(__file__).resolve().parents[1],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=120)
    assert run.returncode == 0, "the child failed: run its code by hand to see its error"
    worker_pids = [int(pid) for pid in run.stdout.split()]
    assert len(worker_pids) == 2  # the interpreter has exited: its workers must have too
    time.sleep(0.5)  # init reaps the orphans
    assert not any(running(pid) for pid in worker_pids)


def test_each_thread_keeps_its_own_time_limit(monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(verify, "TIMEOUT_SECONDS", 60.0)  # a slow machine must not time these out
        # four comparisons of a third of a second each, at once: four workers are started
        results = compare_in_threads(r"\sin(20x)", r"2\sin(10x)\cos(10x)")
        assert [same for same, _ in results] == [True] * 4
    results = compare_in_threads(r"(9^{9})^{9^{9}}", "9")
    assert [same for same, _ in results] == [False] * 4
    # with one worker for all, the calls queued: 2, 4, 6 and 8 s
    assert max(seconds for _, seconds in results) < verify.TIMEOUT_SECONDS + 1.5, results
    assert all(running(pid) for pid in child_pids())  # the killed workers are reaped: no zombie


@linux_only
def test_a_trainer_with_more_than_1024_open_files():
    # select() raises ValueError on a file descriptor above 1023; the worker's pipes get one here
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"the hard limit on open files is {hard}")
    code = (
        "import os, resource, verify\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))\n"
        "files = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]\n"
        "print(verify.is_equiv('(x+1)^2', 'x^2+2x+1'), verify.is_equiv('(x+1)^2', 'x^2+1'))\n"
    )
    assert run_python(code) == "True False\n"


@linux_only
def test_a_comparison_that_runs_out_of_memory_is_false_and_the_next_one_works():
    # (x+y+z+w)^{999} grows by hundreds of MB a second: the memory limit stops it, not the time
    code = (
        "import time, verify\n"
        "verify.WORKER_MEMORY_MB, verify.TIMEOUT_SECONDS = 200, 60.0\n"
        "print(verify.is_equiv('(x+1)^2', 'x^2+2x+1'))\n"
        "limits = open(f'/proc/{child_pids()[0]}/limits').read()\n"
        "print(next(line for line in limits.splitlines() if 'address' in line).split()[3])\n"
        "start = time.monotonic()\n"
        "print(verify.is_equiv('(x+y+z+w)^{999}', '1'), time.monotonic() - start < 60)\n"
        "print(verify.is_equiv(r'2\\sqrt{2}', r'\\sqrt{8}'))\n"
    )
    assert run_python(code).split() == ["True", str(200 * 2**20), "False", "True", "True"]


@linux_only
def test_ctrl_c_goes_to_the_trainer_not_the_worker(monkeypatch):
    """Ctrl-C in a terminal sends SIGINT to the whole foreground process group, the workers
    included: the comparison in flight still gets its answer, and no worker dies."""
    monkeypatch.setattr(verify, "TIMEOUT_SECONDS", 60.0)
    assert is_equiv("(x+1)^2", "x^2+2x+1")  # a worker is started and idle
    workers = child_pids()
    result = {}
    thread = threading.Thread(target=lambda: result.update(
        same=is_equiv("(x^2-1)^{30}", "(x-1)^{30}(x+1)^{30}")))  # half a second of sympy
    thread.start()
    time.sleep(0.1)
    for pid in workers:
        os.kill(pid, signal.SIGINT)
    thread.join(timeout=120)
    assert result == {"same": True}
    time.sleep(0.2)
    assert all(running(pid) for pid in workers)


@linux_only
def test_a_forked_child_starts_workers_of_its_own():
    """A DataLoader worker, say: sharing the parent's pipes would mix up the two's answers."""
    assert is_equiv("(x+1)^2", "x^2+2x+1")
    parent_workers = child_pids()
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the child: its answer and its workers, then exit without pytest's cleanup
        answer = is_equiv("(x+1)^2", "x^2+2x+1") and not is_equiv("(x+1)^2", "x^2+1")
        os.write(write_end, json.dumps([answer, child_pids()]).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as answer:
        child_answer, child_workers = json.loads(answer.read() or "[false, []]")
    os.waitpid(child, 0)
    assert child_answer is True and len(child_workers) == 1
    assert not set(child_workers) & set(parent_workers)
    assert set(child_pids()) == set(parent_workers) and is_equiv("(x+1)^2", "x^2+2x+1")
