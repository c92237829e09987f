"""Programming problems: the code prompt, a small built-in problem set, and a LiveCodeBench loader.

An example is {"question": str, "tests": list[dict], "instruction": CODE_INSTRUCTION}, with tests
in the format of `sandbox.run_tests`: {"input": stdin, "output": expected stdout}, or
LiveCodeBench's "functional" style {"fn_name": name, "input": one JSON argument per line,
"output": JSON of the return value}. The training scripts format a question as
`data.format_prompt(tokenizer, question, instruction=example["instruction"])` and score
completions with `verify.code_rewards`.

How fast checking runs on this machine (programs checked per second):

    python -c "import code_tasks; print(code_tasks.checking_throughput())"
"""
import base64
import io
import json
import pickle
import textwrap
import time
import zlib

from verify import code_rewards

CODE_INSTRUCTION = (
    "Solve the programming problem below one thought at a time. A thought is one small step: a "
    "single observation, idea or check of the approach. End every thought with </thought>. After "
    "your last thought, write the complete Python program in one ```python code block."
)


def code_question(statement: str, starter_code: str = "") -> str:
    """A problem statement and what the program must look like: starter code to complete (the
    tests call its function), or else a program that reads stdin and writes stdout.

    >>> print(code_question("Print the sum of two integers."))
    Print the sum of two integers.
    <BLANKLINE>
    Read the input from standard input and write the answer to standard output.
    """
    if starter_code:
        return (f"{statement}\n\nComplete this starter code; the tests call its function:\n"
                f"```python\n{starter_code}\n```")
    return f"{statement}\n\nRead the input from standard input and write the answer to standard output."


# ---------------------------------------------------------------------------------------------
# Built-in problems, written for this project
# ---------------------------------------------------------------------------------------------
# A stdin problem has tests (input, expected output); a functional problem has starter code, the
# name of the function the tests call, and tests (arguments, expected return value). Every problem
# has a reference solution (indented here for reading; builtin_examples dedents it); a few have a
# wrong one, with the kind of bug a model makes, that some test catches.
BUILTIN_PROBLEMS = [
    {
        "statement": "Read two integers a and b from one line and print a + b.",
        "tests": [("1 2\n", "3\n"), ("-7 7\n", "0\n"), ("1000000000000 1\n", "1000000000001\n")],
        "solution": """
            a, b = map(int, input().split())
            print(a + b)
        """,
    },
    {
        "statement": "The first line holds n, the second n integers. Print the largest of them.",
        "tests": [("3\n1 5 2\n", "5\n"), ("1\n-4\n", "-4\n"), ("4\n-3 -1 -2 -4\n", "-1\n")],
        "solution": """
            input()
            print(max(map(int, input().split())))
        """,
        "wrong_solution": """
            input()
            best = 0
            for x in map(int, input().split()):
                best = max(best, x)
            print(best)
        """,
    },
    {
        "statement": "Print the words of the input line in reverse order, separated by single spaces.",
        "tests": [("hello world\n", "world hello\n"), ("one\n", "one\n"), ("  a  b c \n", "c b a\n")],
        "solution": """
            print(' '.join(reversed(input().split())))
        """,
    },
    {
        "statement": "Print how many vowels (a, e, i, o, u, in upper or lower case) the input line has.",
        "tests": [("Hello World\n", "3\n"), ("xyz\n", "0\n"), ("AEIOUaeiou\n", "10\n")],
        "solution": """
            print(sum(c in 'aeiouAEIOU' for c in input()))
        """,
    },
    {
        "statement": "Read n and print the numbers 1 to n, one per line, but print Fizz instead of "
        "multiples of 3, Buzz instead of multiples of 5 and FizzBuzz instead of multiples of both.",
        "tests": [
            ("5\n", "1\n2\nFizz\n4\nBuzz\n"),
            ("1\n", "1\n"),
            ("15\n", "1\n2\nFizz\n4\nBuzz\nFizz\n7\n8\nFizz\nBuzz\n11\nFizz\n13\n14\nFizzBuzz\n"),
        ],
        "solution": """
            for i in range(1, int(input()) + 1):
                print('Fizz' * (i % 3 == 0) + 'Buzz' * (i % 5 == 0) or i)
        """,
        "wrong_solution": """
            for i in range(1, int(input()) + 1):
                if i % 3 == 0:
                    print('Fizz')
                elif i % 5 == 0:
                    print('Buzz')
                elif i % 15 == 0:
                    print('FizzBuzz')
                else:
                    print(i)
        """,
    },
    {
        "statement": "Print YES if the input line reads the same backwards and forwards once "
        "everything but letters is removed and case is ignored, else print NO.",
        "tests": [("A man, a plan, a canal: Panama\n", "YES\n"), ("hello\n", "NO\n"),
                  ("No lemon, no melon\n", "YES\n"), ("ab\n", "NO\n")],
        "solution": """
            letters = [c.lower() for c in input() if c.isalpha()]
            print('YES' if letters == letters[::-1] else 'NO')
        """,
        "wrong_solution": """
            s = input().lower()
            print('YES' if s == s[::-1] else 'NO')
        """,
    },
    {
        "statement": "F(0) = 0, F(1) = 1 and F(n) = F(n - 1) + F(n - 2). Read n (0 <= n <= 90) and "
        "print F(n).",
        "tests": [("0\n", "0\n"), ("10\n", "55\n"), ("90\n", "2880067194370816120\n")],
        "solution": """
            a, b = 0, 1
            for _ in range(int(input())):
                a, b = b, a + b
            print(a)
        """,
        "wrong_solution": """
            a, b = 1, 1
            for _ in range(int(input())):
                a, b = b, a + b
            print(a)
        """,
    },
    {
        "statement": "Read n (1 <= n <= 100000) and print how many prime numbers are at most n.",
        "tests": [("10\n", "4\n"), ("1\n", "0\n"), ("100\n", "25\n"), ("100000\n", "9592\n")],
        "solution": """
            n = int(input())
            is_prime = [False, False] + [True] * (n - 1)
            for p in range(2, int(n ** 0.5) + 1):
                if is_prime[p]:
                    is_prime[p * p::p] = [False] * len(range(p * p, n + 1, p))
            print(sum(is_prime))
        """,
    },
    {
        "statement": "The first line holds t; each of the next t lines holds two positive integers. "
        "For each line, print the greatest common divisor of its two integers on a line of its own.",
        "tests": [("3\n12 18\n7 5\n100 10\n", "6\n1\n10\n"), ("1\n1 1\n", "1\n")],
        "solution": """
            import math
            for _ in range(int(input())):
                a, b = map(int, input().split())
                print(math.gcd(a, b))
        """,
    },
    {
        "statement": "Print YES if the brackets ()[]{} on the input line are balanced, else print NO.",
        "tests": [("([]{})\n", "YES\n"), ("([)]\n", "NO\n"), ("((\n", "NO\n"), ("{}\n", "YES\n")],
        "solution": """
            stack = []
            for c in input():
                if c in '([{':
                    stack.append(c)
                elif c in ')]}':
                    if not stack or stack.pop() + c not in ('()', '[]', '{}'):
                        print('NO')
                        raise SystemExit
            print('NO' if stack else 'YES')
        """,
        "wrong_solution": """
            s = input()
            balanced = all(s.count(a) == s.count(b) for a, b in ('()', '[]', '{}'))
            print('YES' if balanced else 'NO')
        """,
    },
    {
        "statement": "The first line holds r and c, then come r lines of c integers: a matrix. Print "
        "its c by r transpose, one row per line, numbers separated by single spaces.",
        "tests": [("2 3\n1 2 3\n4 5 6\n", "1 4\n2 5\n3 6\n"), ("1 1\n7\n", "7\n")],
        "solution": """
            import sys
            r, c = map(int, input().split())
            rows = [line.split() for line in sys.stdin.read().splitlines()[:r]]
            for column in zip(*rows):
                print(' '.join(column))
        """,
    },
    {
        "statement": "The first line holds n, the second n integers. Print the second largest "
        "distinct value among them, or NONE if there is none.",
        "tests": [("5\n4 1 4 3 2\n", "3\n"), ("3\n2 2 2\n", "NONE\n"), ("2\n-1 5\n", "-1\n")],
        "solution": """
            input()
            values = sorted(set(map(int, input().split())))
            print(values[-2] if len(values) > 1 else 'NONE')
        """,
    },
    {
        "statement": "For every distinct word of the input line, print the word and how often it "
        "occurs, separated by a space: most frequent first, ties in alphabetical order.",
        "tests": [("b a b c a b\n", "b 3\na 2\nc 1\n"), ("x\n", "x 1\n")],
        "solution": """
            from collections import Counter
            counts = Counter(input().split())
            for word in sorted(counts, key=lambda word: (-counts[word], word)):
                print(word, counts[word])
        """,
    },
    {
        "statement": "Given a list of integers nums and an integer target, return the indices "
        "[i, j], i < j, of the two numbers that add up to target. Exactly one such pair exists.",
        "starter_code": "class Solution:\n    def twoSum(self, nums: List[int], target: int) -> List[int]:\n        ",
        "fn_name": "twoSum",
        "tests": [(([2, 7, 11, 15], 9), [0, 1]), (([3, 2, 4], 6), [1, 2]), (([3, 3], 6), [0, 1])],
        "solution": """
            class Solution:
                def twoSum(self, nums, target):
                    seen = {}
                    for j, x in enumerate(nums):
                        if target - x in seen:
                            return [seen[target - x], j]
                        seen[x] = j
        """,
        "wrong_solution": """
            class Solution:
                def twoSum(self, nums, target):
                    index = {x: i for i, x in enumerate(nums)}
                    for i, x in enumerate(nums):
                        if target - x in index:
                            return [i, index[target - x]]
        """,
    },
    {
        "statement": "Return whether the string t is an anagram of the string s: the same letters, "
        "each used as often.",
        "starter_code": "class Solution:\n    def isAnagram(self, s: str, t: str) -> bool:\n        ",
        "fn_name": "isAnagram",
        "tests": [(("anagram", "nagaram"), True), (("rat", "car"), False), (("ab", "abb"), False)],
        "solution": """
            class Solution:
                def isAnagram(self, s, t):
                    return sorted(s) == sorted(t)
        """,
    },
    {
        "statement": "Given a non-empty list of integers, return the largest sum of a non-empty run "
        "of consecutive elements.",
        "starter_code": "class Solution:\n    def maxSubArray(self, nums: List[int]) -> int:\n        ",
        "fn_name": "maxSubArray",
        "tests": [(([-2, 1, -3, 4, -1, 2, 1, -5, 4],), 6), (([1],), 1), (([-3, -1, -2],), -1)],
        "solution": """
            class Solution:
                def maxSubArray(self, nums):
                    best = ending_here = nums[0]
                    for x in nums[1:]:
                        ending_here = max(x, ending_here + x)
                        best = max(best, ending_here)
                    return best
        """,
        "wrong_solution": """
            class Solution:
                def maxSubArray(self, nums):
                    return sum(x for x in nums if x > 0) or max(nums)
        """,
    },
    {
        "statement": "Given a list of intervals [start, end], merge the overlapping ones (intervals "
        "that touch overlap) and return the result sorted by start.",
        "starter_code": "class Solution:\n    def merge(self, intervals: List[List[int]]) -> List[List[int]]:\n        ",
        "fn_name": "merge",
        "tests": [
            (([[1, 3], [2, 6], [8, 10], [15, 18]],), [[1, 6], [8, 10], [15, 18]]),
            (([[1, 4], [4, 5]],), [[1, 5]]),
            (([[5, 6], [1, 2]],), [[1, 2], [5, 6]]),
        ],
        "solution": """
            class Solution:
                def merge(self, intervals):
                    merged = []
                    for start, end in sorted(intervals):
                        if merged and start <= merged[-1][1]:
                            merged[-1][1] = max(merged[-1][1], end)
                        else:
                            merged.append([start, end])
                    return merged
        """,
    },
    {
        "statement": "You climb a staircase of n steps, one or two steps at a time. Return in how "
        "many distinct ways you can reach the top.",
        "starter_code": "class Solution:\n    def climbStairs(self, n: int) -> int:\n        ",
        "fn_name": "climbStairs",
        "tests": [((1,), 1), ((2,), 2), ((3,), 3), ((45,), 1836311903)],
        "solution": """
            class Solution:
                def climbStairs(self, n):
                    a, b = 1, 1
                    for _ in range(n):
                        a, b = b, a + b
                    return a
        """,
    },
    {
        "statement": "Return the longest common prefix of a non-empty list of strings.",
        "starter_code": "class Solution:\n    def longestCommonPrefix(self, strs: List[str]) -> str:\n        ",
        "fn_name": "longestCommonPrefix",
        "tests": [((["flower", "flow", "flight"],), "fl"), ((["dog", "racecar", "car"],), ""),
                  ((["a"],), "a")],
        "solution": """
            import os

            class Solution:
                def longestCommonPrefix(self, strs):
                    return os.path.commonprefix(strs)
        """,
    },
    {
        "statement": "Return the sum of the decimal digits of the integer n >= 0.",
        "starter_code": "def digit_sum(n: int) -> int:\n    ",
        "fn_name": "digit_sum",
        "tests": [((0,), 0), ((12345,), 15), ((10 ** 18,), 1)],
        "solution": """
            def digit_sum(n):
                return sum(map(int, str(n)))
        """,
    },
    {
        "statement": "Return the square matrix rotated by 90 degrees clockwise.",
        "starter_code": "def rotate(matrix: list[list[int]]) -> list[list[int]]:\n    ",
        "fn_name": "rotate",
        "tests": [
            (([[1, 2], [3, 4]],), [[3, 1], [4, 2]]),
            (([[1]],), [[1]]),
            (([[1, 2, 3], [4, 5, 6], [7, 8, 9]],), [[7, 4, 1], [8, 5, 2], [9, 6, 3]]),
        ],
        # zip gives tuples: they reach the checker as JSON lists, which LiveCodeBench accepts too
        "solution": """
            def rotate(matrix):
                return list(zip(*matrix[::-1]))
        """,
    },
]


def builtin_examples() -> list[dict]:
    """The built-in problems as examples, each with its reference `solution` and, for a few, a
    `wrong_solution` that some test catches."""
    examples = []
    for problem in BUILTIN_PROBLEMS:
        if "fn_name" in problem:
            tests = [
                {"fn_name": problem["fn_name"], "input": "\n".join(map(json.dumps, arguments)),
                 "output": json.dumps(expected)}
                for arguments, expected in problem["tests"]
            ]
        else:
            tests = [{"input": stdin, "output": stdout} for stdin, stdout in problem["tests"]]
        example = {"question": code_question(problem["statement"], problem.get("starter_code", "")),
                   "tests": tests, "instruction": CODE_INSTRUCTION,
                   "solution": textwrap.dedent(problem["solution"]).strip()}
        if "wrong_solution" in problem:
            example["wrong_solution"] = textwrap.dedent(problem["wrong_solution"]).strip()
        examples.append(example)
    return examples


def checking_throughput(n_programs: int = 64, workers: int | None = None) -> float:
    """Programs checked per second by `verify.code_rewards`, on a batch of built-in reference
    solutions (all their tests run, as with fraction=True)."""
    examples = builtin_examples()
    batch = [examples[i % len(examples)] for i in range(n_programs)]
    completions = [f"```python\n{example['solution']}\n```" for example in batch]
    tests_list = [example["tests"] for example in batch]
    start = time.perf_counter()
    rewards = code_rewards(completions, tests_list, fraction=True, workers=workers)
    seconds = time.perf_counter() - start
    if min(rewards) < 1.0:
        raise RuntimeError("a reference solution failed its tests: the checker is broken here")
    return n_programs / seconds


# ---------------------------------------------------------------------------------------------
# LiveCodeBench (livecodebench/code_generation_lite)
# ---------------------------------------------------------------------------------------------
LCB_HUB_ID = "livecodebench/code_generation_lite"
# One file of new problems per release: "release_vN" is the first N files, "vN" the N-th alone.
LCB_FILES = ["test.jsonl", "test2.jsonl", "test3.jsonl", "test4.jsonl", "test5.jsonl", "test6.jsonl"]


class _StringsOnly(pickle.Unpickler):
    """Unpickles plain data only: a pickle that names any class or function (which is how a pickle
    runs code) is refused."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def decode_lcb_tests(encoded: str) -> list[dict]:
    """LiveCodeBench test cases: a JSON list, or (the private ones) that JSON pickled, compressed
    with zlib and base64-encoded.

    >>> decode_lcb_tests('[{"input": "1", "output": "2", "testtype": "stdin"}]')[0]["output"]
    '2'
    """
    try:
        return json.loads(encoded)
    except json.JSONDecodeError:
        pickled = zlib.decompress(base64.b64decode(encoded))
        return json.loads(_StringsOnly(io.BytesIO(pickled)).load())


def lcb_examples(rows) -> list[dict]:
    """LiveCodeBench rows as examples: the question (statement and starter code) and all test
    cases, public then private. Functional tests call the function named in the row's metadata."""
    examples = []
    for row in rows:
        fn_name = json.loads(row["metadata"] or "{}").get("func_name")
        tests = []
        for case in decode_lcb_tests(row["public_test_cases"]) + decode_lcb_tests(row["private_test_cases"]):
            test = {"input": case["input"], "output": case["output"]}
            if case["testtype"] == "functional":
                if not fn_name:
                    raise ValueError(f"{row['question_title']!r} has functional tests but no func_name")
                test["fn_name"] = fn_name
            tests.append(test)
        question = code_question(row["question_content"], row["starter_code"])
        examples.append({"question": question, "tests": tests, "instruction": CODE_INSTRUCTION})
    return examples


def lcb_files(version: str) -> list[str]:
    """The files of a LiveCodeBench version: "release_v6" (all problems up to v6) or "v6" (the
    problems new in v6).

    >>> lcb_files("release_v2"), lcb_files("v6")
    (['test.jsonl', 'test2.jsonl'], ['test6.jsonl'])
    """
    release = version.removeprefix("release_")
    number = release.removeprefix("v")
    if not release.startswith("v") or not number.isdigit() or not 1 <= int(number) <= len(LCB_FILES):
        last = len(LCB_FILES)
        raise ValueError(f"unknown LiveCodeBench version {version!r}: use release_v1..v{last} or v1..v{last}")
    return LCB_FILES[: int(number)] if version.startswith("release_") else [LCB_FILES[int(number) - 1]]


def load_lcb(version: str = "release_v6", split: str = "test") -> list[dict]:
    """LiveCodeBench problems as examples, downloaded from the hub. `split` takes the datasets
    slicing syntax, e.g. "test[:100]". The hub's loading script is not used (recent `datasets`
    no longer runs scripts): the release files are read as JSON lines."""
    from datasets import load_dataset  # imported here: only the download needs it, and it is slow to import

    data_files = {"test": [f"hf://datasets/{LCB_HUB_ID}/{name}" for name in lcb_files(version)]}
    return lcb_examples(load_dataset("json", data_files=data_files, split=split))
