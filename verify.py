r"""Answer checking: is a model's final answer right (math), does its program pass the tests (code)?

Math answers take three steps, cheapest first:

1. `extract_answer` takes the final answer out of a completion: the last `\boxed{...}`, else a
   GSM8K-style `#### 42`, else a closing "the answer is 42".
2. `normalize_answer` drops what does not change the value: `$`, `\left`/`\right`, `\dfrac`,
   `\text{...}` wrappers and units, thousands separators, degree signs, markdown bold, a trailing
   period, and the percent sign (the MATH convention: `10\%` equals `10`); `inf` is `\infty`.
3. `is_equiv` compares the normalized strings, then exact numbers (`0.5`, `1/2`, `\frac12`,
   `2.5e3`), then expressions with sympy: exactly where it can, else to 50 digits relative to the
   size of the values (`e^{-100}` is not 0). Tuples, intervals and matrices compare element by
   element, sets and comma lists in any order. `x=3` equals `3` when the other side has no `=`.

sympy runs in separate worker processes with a time and a memory limit: it can take minutes, or
all the memory, on `9^{9^{9^{9}}}`, and a reward function must never hang a training run. Each
thread that checks at the same time gets a worker of its own, so that no call waits for another's.
Plain numbers, the common case, never reach a worker. The benchmark files' gold fields go through
`gold_answer` first.

    >>> math_reward(r"so the total is $\boxed{\dfrac{1}{2}}$.", gold_answer("... #### 0.5"))
    1.0

Programs (the Code section): `code_reward` runs the program in a completion on its tests with
`sandbox.run_tests`. The math half needs no other file of this project: copy this file alone.
"""
import argparse
import atexit
import builtins
import importlib.util
import json
import os
import re
import resource
import select
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from functools import partial

# ---------------------------------------------------------------------------------------------
# Math answers
# ---------------------------------------------------------------------------------------------

TIMEOUT_SECONDS = 2.0  # hard limit on one symbolic comparison: the worker is killed after it
WORKER_START_SECONDS = 60.0  # a fresh worker imports sympy first, slow on a busy machine
WORKER_MEMORY_MB = 1024  # address space of a worker (sympy alone takes 60 MB); read as one starts
MAX_ANSWER_CHARS = 1000  # a longer final answer is judged wrong without reading it

_BOX = re.compile(r"\\(?:boxed|fbox|framebox)")
_SPACES = re.compile(r"\s*")


def _braced(text: str, start: int, stop: int | None = None) -> tuple[str, int] | None:
    """(content, index after it) of the brace group at text[start], None if it is open at `stop`.

    >>> _braced("{a{b}c}d", 0)
    ('a{b}c', 7)
    """
    depth = 0
    for i in range(start, len(text) if stop is None else stop):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i], i + 1
    return None


def boxed_contents(text: str):
    r"""The contents of the closed `\boxed{...}` (or `\fbox`, `\framebox`) of `text`, last first;
    `\boxed 5` gives its next token, as LaTeX does.

    >>> list(boxed_contents(r"\boxed{\frac{1}{2}} and \boxed{3} and \boxed{4"))
    ['3', '\\frac{1}{2}']
    """
    stop = len(text)
    for box in reversed(list(_BOX.finditer(text))):
        start = _SPACES.match(text, box.end()).end()
        if text.startswith("{", start):
            group = _braced(text, start, stop)
            if group is not None:
                yield group[0]
                continue
        elif token := re.match(r"[^\s$]+", text[start : start + 100]):
            yield token[0]
            continue
        # A box that does not close (a completion cut off by the length limit) is skipped. An
        # earlier box then closes before this one starts or not at all, so the scan stops here,
        # which keeps the search linear in the length of the text.
        stop = box.start()


def extract_answer(text: str | None) -> str | None:
    r"""The final answer of a completion: the last `\boxed{}`, else `#### X`, else "answer is X".

    None when there is none.

    >>> extract_answer(r"so $x = \boxed{\frac{1}{2}}$.")
    '\\frac{1}{2}'
    >>> extract_answer("She pays 3 + 4 = 7 dollars.\n#### 7"), extract_answer("I am not sure.")
    ('7', None)
    """
    if not text:
        return None
    boxed = next(boxed_contents(text), None)
    if boxed is not None:
        return boxed.strip() or None
    if hashes := re.findall(r"####[ \t]*(\S[^\n]*)", text):
        return hashes[-1].strip()
    if said := re.findall(r"answer is:?[ \t]*(\S[^\n]*)", text, flags=re.IGNORECASE):
        sentence = re.split(r"\.\s", said[-1])[0]  # "is 3.5. So" ends at ". ", not at "3."
        return sentence.rstrip(".").strip("$ ") or None
    return None


def gold_answer(value: str | float | int | list[str]) -> str | None:
    r"""A benchmark's gold field as an answer string for `is_equiv`.

    GSM8K (`... #### 1,234`), MATH-500 and AIME (the answer), AMC (a float), Minerva (a solution
    with a `\boxed{}`), OlympiadBench (a list of `$...$` strings).

    >>> gold_answer("3 + 4 = 7 apples\n#### 7"), gold_answer(27.0), gold_answer(["$1$", "$-2$"])
    ('7', '27', '1, -2')
    """
    if isinstance(value, (list, tuple)):
        return ", ".join(gold_answer(item) for item in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if not isinstance(value, str):
        return str(value)
    if _BOX.search(value) or "####" in value:
        return extract_answer(value)
    return re.sub(r"(?<!\\)\$", "", value).strip()  # `\$` is a dollar sign, not math mode


def normalize_answer(answer: str) -> str:
    r"""The answer without what does not change its value.

    >>> normalize_answer(r"$\left( 3, \dfrac{\pi}{2} \right)$")
    '(3,\\frac{\\pi}{2})'
    >>> normalize_answer(r"**1,234** \text{ apples}.")
    '1234'
    """
    text = re.sub(r"\\\$|\$", "", answer).replace("{,}", ",")
    text = re.sub(r"\\(?:left|right)(?:\.|(?![a-zA-Z]))", "", text)  # `\right.`: no bracket
    text = re.sub(r"\\[dt]frac", r"\\frac", text)
    # thin spaces (not the `\\` of a new row) go, but two digits stay apart unless the second
    # starts a group of three (`10\,000`, and `10,\!080` as MATH writes thousands)
    thin_space = r"(?<!\\)\\[,!;: ]"
    text = re.sub(rf"(?<=\d){thin_space}(?=\d{{3}}(?!\d))|(?<=\d,)\\!(?=\d{{3}}(?!\d))", "", text)
    text = re.sub(rf"(?<=\d){thin_space}(?=\d)|(?<=\d,){thin_space}(?=\d)", " ", text)  # `100,\ 200` is a list
    text = re.sub(rf"(\\[a-zA-Z]+)?{thin_space}", lambda match: f"{match[1]} " if match[1] else "", text)  # `\pi\,r`
    spaced_comma = re.search(r"\d,\s+\d", text)  # `3, 500` is two numbers, not 3500
    # (a space in their place too, so that `5^\circ 2` does not become 52)
    text = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°|\\%|%", " ", text)
    # `\text{ cm}^2` after a value is a unit; a whole `\text{east}` is the answer itself; and
    # `5 \text{ or more}` is not 5
    unit = r"\\(?:text|mbox|mathrm)\{([a-zA-Z ]*)\}(?:\^\{?\d\}?)?"
    text = re.sub(rf"(?<=\S)\s*{unit}\s*\.?\s*$",
                  lambda match: match[0] if _NOT_UNITS & set(match[1].lower().split()) else "", text)
    text = re.sub(r"\\(?:text|textbf|mbox|mathrm|mathbf)\{([^{}]*)\}", r"\1", text)
    # white space only matters between two letters (`\cot x` is not `\cotx`) and between two
    # digits (`3 5` is not 35)
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"(?<![a-zA-Z\d]) | (?![a-zA-Z\d])|(?<=[a-zA-Z]) (?=\d)|(?<=\d) (?=[a-zA-Z])", "", text)
    text = re.sub(r"^\*\*(.*)\*\*", r"\1", text.rstrip(".")).rstrip(".")
    text = re.sub(r"([_^])\{(\w)\}", r"\1\2", text)  # x^{2} is x^2
    text = re.sub(r"\\sqrt\{(\d)\}", r"\\sqrt\1", text)  # (`\sqrt{x}` stays: `\sqrtx` is no command)
    # inf, infinity and ∞ are \infty, and +\infty is \infty (`\inf` is the infimum: kept)
    text = re.sub(r"(?i)(?<![a-zA-Z\\])(?:inf(?:inity)?|∞)(?![a-zA-Z])", r"\\infty", text)
    text = re.sub(r"(?:^|(?<=[(\[,]))\+(?=\\infty(?![a-zA-Z]))", "", text)
    if not spaced_comma and re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", text):  # a lone number; (2,251,252) is a tuple
        text = text.replace(",", "")
    if re.fullmatch(r"-?\d{1,3}( \d{3})+(\.\d+)?", text):  # 1 000 000, as SI writes it
        text = text.replace(" ", "")
    if re.fullmatch(r"\([A-Ea-e]\)", text):  # a multiple-choice letter
        text = text[1].upper()
    return text


# words that make a number after them something else than that number: a range (`5 \text{ or
# more}`, `\text{ at least}`), an alternative (`\text{ or Navin}`), a denial, a rough value. Other
# words are units, multipliers included: `3 \text{ dozen}` answers "how many dozen"
_NOT_UNITS = {"or", "nor", "not", "no", "none", "neither", "either", "except", "least", "most", "wrong",
              "incorrect", "false", "impossible", "approximately", "about", "around", "nearly", "almost",
              "roughly", "plus", "minus", "and"}

_NUMBER = r"-?(?:\d+\.?\d*|\.\d+)"
_DIGIT_OR_BRACED_DIGITS = r"(\d|\{\d+\})"


def _to_fraction(text: str) -> Fraction | None:
    r"""The exact value of a plain number, or None.

    >>> [_to_fraction(text) for text in (r"\frac{3}{4}", "1.5e2", r"1\frac12", "x")]
    [Fraction(3, 4), Fraction(150, 1), Fraction(3, 2), None]
    """
    try:
        if re.fullmatch(_NUMBER, text):  # 3, -0.25, .5
            return Fraction(text)
        if match := re.fullmatch(rf"({_NUMBER})/({_NUMBER})", text):
            return Fraction(match[1]) / Fraction(match[2])
        fraction = rf"(-?)(\d*)\\frac{_DIGIT_OR_BRACED_DIGITS * 2}"
        if match := re.fullmatch(fraction, text):  # \frac{3}{4}, \frac34, and 1\frac{4}{5} = 9/5
            sign, whole, top, bottom = match.groups()
            value = int(whole or 0) + Fraction(int(top.strip("{}")), int(bottom.strip("{}")))
            return -value if sign else value
        scientific = rf"({_NUMBER})(?:e|E|\\times10\^|\\cdot10\^)\{{?(-?\d+)\}}?"
        if (match := re.fullmatch(scientific, text)) and abs(int(match[2])) <= 400:
            return Fraction(match[1]) * Fraction(10) ** int(match[2])
    except (ValueError, ZeroDivisionError):  # 1/0, or more digits than int() converts
        pass
    return None


def _split_top_level(text: str, separator: str) -> list[str]:
    """The pieces of `text` between the `separator`s that are outside all brackets.

    >>> _split_top_level("(1,2),3", ",")
    ['(1,2)', '3']
    """
    pieces, depth, start, i = [], 0, 0, 0
    while i < len(text):
        if text[i] in "([{":
            depth += 1
        elif text[i] in ")]}":
            depth -= 1
        elif depth == 0 and text.startswith(separator, i):
            pieces.append(text[start:i])
            start = i = i + len(separator)
            continue
        i += 1
    return pieces + [text[start:]]


def _encloses(text: str) -> bool:
    """Whether the bracket that opens `text` closes at its very end: `(1,2)` yes, `(1)(2)` no."""
    depth = 0
    for i, char in enumerate(text):
        depth += (char in "([{") - (char in ")]}")
        if depth == 0:
            return i == len(text) - 1
    return False


def _split_collection(text: str) -> tuple[str, list[str]] | None:
    r"""(kind, items) of a tuple, interval, set, list, union, matrix or `a\pm b`; None otherwise.

    The order of the items matters for every kind but "set" and "union".

    >>> _split_collection("(3,4]"), _split_collection(r"1\pm\sqrt2")
    (('(]', ['3', '4']), ('set', ['1+\\sqrt2', '1-\\sqrt2']))
    """
    if match := re.fullmatch(r"\\begin\{([pbv]?matrix)\}(.*)\\end\{\1\}", text):
        rows = [row.split("&") for row in match[2].split(r"\\")]
        return "matrix " + "x".join(str(len(row)) for row in rows), [cell for row in rows for cell in row]
    # `1,-2` is a set of values and `(0,1)\cup(2,3)` a set of intervals: neither is the other
    for separator, kind in ((",", "set"), (r"\cup", "union")):
        if len(pieces := _split_top_level(text, separator)) > 1:
            return kind, pieces
    if text.startswith(r"\{") and _encloses(text[1:]):
        return "set", _split_top_level(text[2:-2], ",")
    if len(pieces := _split_top_level(text, r"\pm")) == 2:
        return "set", [pieces[0] + "+" + pieces[1], pieces[0] + "-" + pieces[1]]
    if text[:1] in ("(", "[") and text[-1] in ")]" and _encloses(text):
        if len(items := _split_top_level(text[1:-1], ",")) > 1:
            return text[0] + text[-1], items
    return None


def _equiv(pred: str, gold: str, symbolic: bool) -> bool:
    """Whether two normalized answers are equal; `symbolic` lets sympy compare single values."""
    if pred == gold:
        return True
    pred_collection, gold_collection = _split_collection(pred), _split_collection(gold)
    if pred_collection is None and gold_collection is None:
        return _same_value(pred, gold, symbolic)
    if pred_collection is None or gold_collection is None:
        return False
    (pred_kind, pred_items), (gold_kind, gold_items) = pred_collection, gold_collection
    if pred_kind != gold_kind or len(pred_items) != len(gold_items):
        return False
    if pred_kind not in ("set", "union"):
        return all(_equiv(p, g, symbolic) for p, g in zip(pred_items, gold_items))
    unmatched = list(gold_items)
    for item in pred_items:
        match = next((g for g in unmatched if _equiv(item, g, symbolic)), None)
        if match is None:
            return False
        unmatched.remove(match)
    return True


def _same_value(pred: str, gold: str, symbolic: bool) -> bool:
    """Whether two single values are equal: as numbers, as words, or (if `symbolic`) by sympy."""
    pred_number, gold_number = _to_fraction(pred), _to_fraction(gold)
    if pred_number is not None and gold_number is not None:
        return pred_number == gold_number
    # words compare as words: as products of symbols, `ab` would equal `ba`
    if re.fullmatch(r"[a-zA-Z]{2,}", pred) or re.fullmatch(r"[a-zA-Z]{2,}", gold):
        return pred.lower() == gold.lower()
    # a capital letter is a choice or a name (`(E)`, point `B`), not Euler's number or a variable
    if re.fullmatch(r"[A-Z]", pred) or re.fullmatch(r"[A-Z]", gold):
        return pred == gold
    return symbolic and _same_expression(pred, gold)


# the LaTeX commands that name a sympy object; any other command fails the symbolic comparison
_LATEX_NAMES = {
    "pi": "pi", "infty": "oo", "cdot": "*", "times": "*", "div": "/", "ln": "log", "log": "log",
    "exp": "exp", "sin": "sin", "cos": "cos", "tan": "tan", "cot": "cot", "sec": "sec",
    "csc": "csc", "arcsin": "asin", "arccos": "acos", "arctan": "atan", "alpha": "alpha",
    "beta": "beta", "gamma": "gamma", "theta": "theta", "phi": "phi", "omega": "omega",
}


def _argument(latex: str, start: int) -> tuple[str, int]:
    r"""The argument of a command that starts at latex[start] (`{...}`, `\pi` or `7`), and the
    index after it."""
    start = _SPACES.match(latex, start).end()
    if latex.startswith("{", start):
        if (group := _braced(latex, start)) is None:
            raise ValueError(f"unbalanced braces in {latex!r}")
        return group
    if match := re.compile(r"\\[a-zA-Z]+|[^\\]").match(latex, start):
        return match[0], match.end()
    raise ValueError(f"a command without its argument in {latex!r}")


def latex_to_sympy(latex: str) -> str:
    r"""Python syntax for sympy's `parse_expr`, from a normalized LaTeX expression.

    Hand-written because sympy's own `parse_latex` needs one exact version of the antlr4 runtime.
    Implicit products like `2\pi r` are left to `parse_expr`.

    >>> latex_to_sympy(r"3\sqrt{13}+\frac{\pi}2")
    '3root((13),2)+(( pi )/(2))'
    """
    out, i = [], 0
    while i < len(latex):
        if latex[i] == "\\":
            name = re.compile(r"\\([a-zA-Z]+|.)").match(latex, i)[1]
            i += 1 + len(name)
            if name in ("frac", "binom"):
                top, i = _argument(latex, i)
                bottom, i = _argument(latex, i)
                top, bottom = latex_to_sympy(top), latex_to_sympy(bottom)
                if name == "frac":
                    out.append(f"(({top})/({bottom}))")
                else:
                    out.append(f"binomial({top},{bottom})")
            elif name == "sqrt":
                degree = "2"
                if latex.startswith("[", i):  # \sqrt[3]{x}
                    degree, i = latex[i + 1 : latex.index("]", i)], latex.index("]", i) + 1
                radicand, i = _argument(latex, i)
                out.append(f"root(({latex_to_sympy(radicand)}),{latex_to_sympy(degree)})")
            elif name in _LATEX_NAMES:
                out.append(f" {_LATEX_NAMES[name]} ")
            else:
                raise ValueError(f"no sympy equivalent for \\{name}")
        elif latex[i] == "{":
            group, i = _argument(latex, i)
            out.append(f"({latex_to_sympy(group)})")
        elif latex[i] == "_" and latex[i - 1 : i].isdigit():
            raise ValueError("a number in another base, like 52_8, compares as text only")
        else:
            out.append("**" if latex[i] == "^" else latex[i])
            i += 1
    return "".join(out)


_BUILTIN_NAMES = frozenset(vars(builtins))


def _to_sympy(latex: str):
    """A sympy expression for a normalized LaTeX expression; an equation `a=b` becomes `a-b`."""
    from sympy import E, I
    from sympy.parsing.sympy_parser import (
        implicit_multiplication_application, parse_expr, rationalize, standard_transformations,
    )

    transformations = standard_transformations + (implicit_multiplication_application, rationalize)
    sides = []
    for side in _split_top_level(latex, "="):
        code = latex_to_sympy(side)
        # parse_expr calls eval(): let through only names, numbers, operators and brackets, and
        # no Python builtin (`input()` would wait for the timeout, `exit()` end the worker)
        if (not re.fullmatch(r"[\w\s+\-*/().,!]*", code) or re.search(r"__|\.(?!\d)", code)
                or set(re.findall(r"[a-zA-Z_]\w*", code)) & _BUILTIN_NAMES):
            raise ValueError(f"refusing to evaluate {code!r}")
        if re.search(r"\d\s+\.?\d", code):  # `3 5` is no product in LaTeX
            raise ValueError(f"two numbers side by side in {code!r}")
        sides.append(parse_expr(code, {"e": E, "i": I}, transformations=transformations))
    if len(sides) > 2:
        raise ValueError("a chain of equations")
    return sides[0] - sides[1] if len(sides) == 2 else sides[0]


def _same_expression(pred: str, gold: str) -> bool:
    """Whether sympy finds two normalized LaTeX expressions equal. Runs in the worker only."""
    import sympy

    if pred.count("=") != gold.count("="):  # `x-5` is not the equation `x=5`
        return False
    pred_value, gold_value = _to_sympy(pred), _to_sympy(gold)
    difference = pred_value - gold_value
    if difference.free_symbols:
        return sympy.simplify(difference) == 0
    if pred_value.is_infinite or gold_value.is_infinite:  # oo - oo is nan, and oo is no big number
        return pred_value == gold_value
    if difference.is_Rational:  # two exact rationals: 2^{-200} is not 3^{-200}
        return difference == 0
    # A constant: evaluating is more reliable than simplify on nested radicals and trigonometry.
    # Relative to the size of the values, so that e^{-100} is not 0; to 50 digits (evaluated to
    # 70), so that a rounded value like 1.414 is not \sqrt2, nor is 3 + \pi / 10^{40} 3.
    error = abs(difference.evalf(70))
    if error <= 1e-50 * max(abs(pred_value.evalf(70)), abs(gold_value.evalf(70))):
        return True
    # Near 0, evaluating cannot tell a tiny value from a zero that does not cancel exactly
    # (\sqrt{3+2\sqrt2}-1-\sqrt2 against 0): ask sympy for a proof.
    return bool(error < 1e-50) and difference.equals(0) is True


def _serve_worker(timeout_seconds: float, memory_mb: int) -> None:
    """The worker process: read `[backend, pred, gold]` JSON lines, answer `true` or `false`, or
    `out of memory` (then the parent replaces it: a failed allocation may leave sympy broken)."""
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout = sys.stderr  # a stray print from a library must not break the protocol
    # imported before "ready", so that no comparison is timed out by an import; simplify imports
    # more on its first call (half a second)
    import sympy  # noqa: F401
    if importlib.util.find_spec("math_verify"):
        import math_verify  # noqa: F401
    _equiv("(x+1)^2", "x^2+2x+1", symbolic=True)

    # set after the imports and a first comparison, which must not fail; past it, an allocation
    # raises MemoryError
    memory, memory_hard = memory_mb * 2**20, resource.getrlimit(resource.RLIMIT_AS)[1]
    if memory_hard != resource.RLIM_INFINITY:
        memory = min(memory, memory_hard)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory_hard))
    except ValueError:  # some systems (macOS) refuse a limit on the address space: none there
        pass
    print("ready", file=answers, flush=True)
    for line in sys.stdin:
        # A CPU limit of its own for each request: a worker whose parent died in the middle of a
        # request (killed, so no atexit) stops a few seconds later instead of running on.
        cpu_seconds = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])  # user + system
        limit = int(cpu_seconds + timeout_seconds) + 2  # SIGXCPU kills it past this
        resource.setrlimit(resource.RLIMIT_CPU, (limit, resource.getrlimit(resource.RLIMIT_CPU)[1]))
        backend, pred, gold = json.loads(line)
        try:
            if backend == "math_verify":
                from math_verify import parse, verify

                answer = json.dumps(bool(verify(parse(f"${gold}$"), parse(f"${pred}$"))))
            else:
                answer = json.dumps(bool(_equiv(pred, gold, symbolic=True)))
        except MemoryError:
            answer = "out of memory"
        except Exception:  # sympy raises many kinds of errors on odd input: all mean "not equal"
            answer = "false"
        print(answer, file=answers, flush=True)


# The worker loads this file by its path, not by its module name: a copy of this file under another
# name, without the `__main__` block, or in a folder that is not on sys.path works the same.
_WORKER_BOOTSTRAP = """
import signal
signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in a terminal is for the trainer alone
import importlib.util, sys
spec = importlib.util.spec_from_file_location("_sympy_worker", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
module._serve_worker(float(sys.argv[2]), int(sys.argv[3]))
"""


class _Worker:
    """A child process that runs `_serve_worker` of this file and answers comparisons over pipes.

    A plain subprocess rather than multiprocessing: "spawn" and "forkserver" import the parent's
    main script again (a training script imports torch), and "fork" is unsafe after CUDA started.
    """

    def __init__(self):
        self.process = subprocess.Popen(
            [sys.executable, "-c", _WORKER_BOOTSTRAP, os.path.abspath(__file__),
             str(TIMEOUT_SECONDS), str(WORKER_MEMORY_MB)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        if self._read_line(WORKER_START_SECONDS) != "ready":
            self.stop()
            raise RuntimeError("the sympy worker did not start; its error, if any, is on stderr")

    def _read_line(self, timeout: float) -> str | None:
        # poll() instead of a reader thread: works from any thread and leaves no thread behind;
        # instead of select(), which fails on the file descriptors above 1023 of a busy process
        poller = select.poll()
        poller.register(self.process.stdout, select.POLLIN)
        return self.process.stdout.readline().strip() if poller.poll(timeout * 1000) else None

    def ask(self, request: list[str], timeout: float) -> str | None:
        """The worker's answer to `request`, or None when it took over `timeout` or died."""
        try:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
        except OSError:
            return None
        return self._read_line(timeout)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()  # reaps it: no zombie is left behind


_idle_workers: list[_Worker] = []  # started and waiting; a call takes one, alone, and puts it back
_idle_lock = threading.Lock()


def _compare_in_worker(backend: str, pred: str, gold: str) -> bool:
    """Ask an idle worker, or start one when none is idle: as many workers as threads compare at
    the same time, so that each call keeps its own time limit. A worker that timed out, died or
    ran out of memory is stopped; a new one starts when it is needed."""
    with _idle_lock:
        worker = _idle_workers.pop() if _idle_workers else None
    if worker is not None and worker.process.poll() is not None:  # killed while idle
        worker.stop()
        worker = None
    worker = worker or _Worker()
    answer = worker.ask([backend, pred, gold], TIMEOUT_SECONDS)
    if answer in ("true", "false"):
        with _idle_lock:
            _idle_workers.append(worker)
    else:
        worker.stop()
    return answer == "true"


def _forget_parent_workers() -> None:
    """In a forked child (a DataLoader worker, say): the parent's workers and lock are not ours."""
    global _idle_workers, _idle_lock
    _idle_workers, _idle_lock = [], threading.Lock()


os.register_at_fork(after_in_child=_forget_parent_workers)


@atexit.register
def _stop_workers() -> None:
    with _idle_lock:
        while _idle_workers:
            _idle_workers.pop().stop()


_ASSIGNMENT = re.compile(r"^[a-zA-Z](?:_\w)?(?:=|\\in)")  # `x=`, `x_1=` or `x\in`
_POWER_TOWER = re.compile(r"\d\^\{?\(?\d+\^|\^\{?\(?\d{5,}")  # 9^{9^9}, 2^{100000}: too big


def is_equiv(pred: str | None, gold: str | None, backend: str = "builtin") -> bool:
    r"""Whether the predicted answer `pred` equals the `gold` answer (LaTeX strings, gold second).

    backend "builtin" is the checker of this file, "math_verify" the math-verify package
    (`pip install math-verify`). A call takes at most TIMEOUT_SECONDS, from any number of threads
    at once (plus the start of a worker process when none is idle: on first use, after a timeout,
    and for each thread beyond those that checked at once before). Odd input, and a comparison
    that needs more than WORKER_MEMORY_MB, give False, not an error.

    >>> is_equiv(r"\dfrac{1}{2}", "0.5"), is_equiv("x=3", "3"), is_equiv("2/3", "2")
    (True, True, False)
    """
    if backend not in ("builtin", "math_verify"):
        raise ValueError(f"backend must be 'builtin' or 'math_verify', not {backend!r}")
    if backend == "math_verify" and importlib.util.find_spec("math_verify") is None:
        raise ImportError("is_equiv(..., backend='math_verify') needs `pip install math-verify`")
    if not pred or not gold or len(pred) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
        return False
    if backend == "math_verify":
        return _compare_in_worker("math_verify", pred, gold)
    pred, gold = normalize_answer(pred), normalize_answer(gold)
    # `x=3` answers `3`, but `x=3` against `y=3` compares the two equations
    if "=" not in gold and r"\in" not in gold:
        pred = _ASSIGNMENT.sub("", pred)
    if "=" not in pred and r"\in" not in pred:
        gold = _ASSIGNMENT.sub("", gold)
    if _equiv(pred, gold, symbolic=False):
        return True
    if _to_fraction(pred) is not None and _to_fraction(gold) is not None:
        return False  # two plain numbers: sympy would not change the verdict
    if _POWER_TOWER.search(pred) or _POWER_TOWER.search(gold):
        return False
    return _compare_in_worker("builtin", pred, gold)


_DOLLAR = re.compile(r"(?<!\\)\$")
_BRACKETED_MATH = re.compile(r"\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)


def _math_spans(question: str) -> list[str]:
    r"""Every stretch of `question` that may be math: between any two neighbouring unescaped `$`
    (not only the ones that pair from the left, so that a currency sign, as in "costs $5.
    Simplify $\sqrt{242}$.", does not hide the math after it), and inside `\(...\)`, `\[...\]`."""
    between_dollars = _DOLLAR.split(question)[1:-1]
    return [span for span in between_dollars if span.strip()] + [
        next(filter(None, match.groups())) for match in _BRACKETED_MATH.finditer(question)]


def _form(answer: str) -> str:
    """How an answer is written, beyond normalize_answer: no `x=`, no braces, no spaces; two
    answers of one form say the same thing the same way."""
    return re.sub(r"[{}\s]", "", _ASSIGNMENT.sub("", normalize_answer(answer)))


def restates_question(answer: str, gold: str, question: str) -> bool:
    r"""Whether `answer` is an expression of the question, copied unworked, and written otherwise
    than `gold`: `\sqrt{242}` for "Simplify $\sqrt{242}$." (gold `11\sqrt2`) has the right value
    and does not answer. Value checks accept it; a policy under training soon finds that.

    A plain number of the question is not an expression: it may be the answer as it stands (a
    probability given in the question), and a check by value cannot tell which form a question
    asks for (`\frac{3}{20}` for "Write $\frac{3}{20}$ as a decimal" still passes).

    >>> restates_question(r"\sqrt{242}", r"11\sqrt2", r"Simplify $\sqrt{242}$.")
    True
    >>> restates_question("5", "5", "If $x = 5$, what is $x$?"), restates_question("0.5", r"\frac12", "Add $0.5$.")
    (False, False)
    """
    form = _form(answer)
    if form == _form(gold) or _to_fraction(_ASSIGNMENT.sub("", normalize_answer(answer))) is not None:
        return False
    return any(form == _form(span) for span in _math_spans(question))


def math_reward(completion: str | None, gold: str, question: str | None = None) -> float:
    r"""1.0 when the final answer of `completion` equals `gold`, else 0.0 (also without an answer).
    With the `question`, an answer that only restates one of its expressions gets 0.0
    (`restates_question`).

    >>> math_reward(r"... so $x = \boxed{5}$.", "5"), math_reward("I give up.", "5")
    (1.0, 0.0)
    >>> math_reward(r"$\boxed{99^2+99+1}$", "9901"), math_reward(r"$\boxed{99^2+99+1}$", "9901", "Compute $99^2+99+1$.")
    (1.0, 0.0)
    """
    answer = extract_answer(completion)
    return float(answer is not None and is_equiv(answer, gold)
                 and not (question and restates_question(answer, gold, question)))


def _agreement(math500_path: str) -> None:
    """Print how often the two backends agree on MATH-500 (the README's "Answer checking")."""
    if importlib.util.find_spec("math_verify") is None:
        raise SystemExit("--agreement compares with math-verify: `pip install math-verify` first.")
    with open(math500_path) as lines:
        rows = [json.loads(line) for line in lines]
    cases = {"answer from the solution": [], "$\\dfrac$ and spaces": [], "one number changed": []}
    for row in rows:
        gold = row["answer"]
        cases["answer from the solution"].append((extract_answer(row["solution"]), gold))
        spaced = re.sub(r"\s*([+=])\s*", r" \1 ", gold.replace(r"\frac", r"\dfrac"))
        cases["$\\dfrac$ and spaces"].append((f"${spaced}$", gold))
        if number := re.search(r"\d+", gold):
            bumped = str(int(number[0]) + 1).zfill(len(number[0]))
            cases["one number changed"].append((gold.replace(number[0], bumped, 1), gold))
    for kind, pairs in cases.items():
        builtin = [is_equiv(pred, gold) for pred, gold in pairs]
        math_verify = [is_equiv(pred, gold, backend="math_verify") for pred, gold in pairs]
        agree = sum(b == m for b, m in zip(builtin, math_verify))
        print(f"{kind}: {len(pairs)} pairs, judged equal by builtin {sum(builtin)}, by math_verify "
              f"{sum(math_verify)}; the backends agree on {agree} ({agree / len(pairs):.1%})")
        for (pred, gold), b, m in zip(pairs, builtin, math_verify):
            if b != m:
                print(f"    builtin {b}, math_verify {m}: {pred!r} against gold {gold!r}")


# ---------------------------------------------------------------------------------------------
# Code
# ---------------------------------------------------------------------------------------------

PYTHON_FENCE_TAGS = ("python", "python3", "py")
# A fenced block: an opening fence with an optional language tag, then a closing fence, each
# starting its own line.
_FENCED_BLOCK = re.compile(r"^[ \t]*```[ \t]*([\w+-]*)[^\n]*\n(.*?)^[ \t]*```", re.DOTALL | re.MULTILINE)
_OPENING_PYTHON_FENCE = re.compile(r"^[ \t]*```[ \t]*(?:python3?|py)?[ \t]*\n", re.MULTILINE | re.IGNORECASE)


def extract_code(completion: str) -> str | None:
    """The program in a completion: the last fenced block tagged python (or py), else the last
    untagged fenced block (so an output example after the program does not replace it), else the
    text after an opening python fence that is never closed (generation stopped at the token limit,
    or the model ended without the closing fence). None when there is no code.

    >>> extract_code("Draft:\\n```python\\nprint(1)\\n```\\nFinal:\\n```py\\nprint(2)\\n```\\n")
    'print(2)'
    >>> extract_code("```python\\nprint(input())\\n```\\nOutput:\\n```\\n3\\n```")
    'print(input())'
    >>> extract_code("```python\\nprint(input())")
    'print(input())'
    >>> extract_code("No code here.") is None
    True
    """
    blocks = list(_FENCED_BLOCK.finditer(completion))
    python_bodies = [block[2] for block in blocks if block[1].lower() in PYTHON_FENCE_TAGS]
    untagged_bodies = [block[2] for block in blocks if not block[1]]
    if python_bodies or untagged_bodies:
        code = (python_bodies or untagged_bodies)[-1]
    else:
        tail = completion[blocks[-1].end():] if blocks else completion
        opening = _OPENING_PYTHON_FENCE.search(tail)
        code = tail[opening.end():] if opening else ""
    return code.rstrip() or None


def code_reward(completion: str, tests: list[dict], fraction: bool = False, timeout_s: float = 2.0,
                memory_mb: int = 1024) -> float:
    """1.0 when the completion's program passes every test, else 0.0 (no program: 0.0); with
    `fraction`, the fraction of tests passed.

    >>> code_reward("```python\\nprint(2 * int(input()))\\n```", [{"input": "2", "output": "4"}])
    1.0
    """
    from sandbox import run_tests  # here, not at the top: the math half works without sandbox.py

    program = extract_code(completion)
    if program is None:
        return 0.0
    # For an all-or-nothing reward, the first failure decides: skip the rest.
    results = run_tests(program, tests, timeout_s, memory_mb, stop_at_first_failure=not fraction)
    passed = sum(result.passed for result in results)
    return passed / len(tests) if fraction else float(passed == len(tests))


def code_rewards(completions: list[str], tests_list: list[list[dict]], fraction: bool = False,
                 timeout_s: float = 2.0, memory_mb: int = 1024, workers: int | None = None) -> list[float]:
    """code_reward for a batch, checked in parallel: `workers` programs at a time, by default one
    per CPU core this process may use (more would stretch wall-clock time limits)."""
    if len(completions) != len(tests_list):
        raise ValueError(f"{len(completions)} completions but {len(tests_list)} test lists")
    check = partial(code_reward, fraction=fraction, timeout_s=timeout_s, memory_mb=memory_mb)
    with ThreadPoolExecutor(workers or len(os.sched_getaffinity(0))) as pool:
        return list(pool.map(check, completions, tests_list))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Answer checking; see the docstring of verify.py.")
    parser.add_argument("--agreement", metavar="MATH500_JSONL",
                        help="compare the builtin and math_verify backends on MATH-500")
    args = parser.parse_args()
    if args.agreement:
        _agreement(args.agreement)
    else:
        parser.print_help()
