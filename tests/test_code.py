"""Code checking (verify.py, sandbox.py) and programming problems (code_tasks.py): extracting the
program, judging outputs, the sandbox against hostile programs, the built-in problems and the
LiveCodeBench loader. Hostile programs get a 1 s time limit so the file stays fast."""
import base64
import json
import os
import pickle
import sys
import time
import types
import zlib
from pathlib import Path

import pytest

import code_tasks
import sandbox
from sandbox import outputs_match, returns_match, run_tests, Verdict
from verify import code_reward, code_rewards, extract_code

AS_ROOT = os.getuid() == 0
needs_root = pytest.mark.skipif(not AS_ROOT, reason="only a root trainer can run programs as another uid")
LIMIT_S = 1.0
SLACK_S = 3.0  # process start-up and clean-up on a loaded machine
PRINTS_OK = [{"input": "", "output": "ok\n"}]


def fenced(program: str) -> str:
    return f"Some thoughts.</thought>\n```python\n{program}\n```\n"


def statuses(program: str, tests: list[dict], **limits) -> list[str]:
    return [result.status for result in run_tests(program, tests, **limits)]


def name_process(name: str) -> str:
    """Program lines that rename the process (and so its children) to `name`, to find them later."""
    return f"import ctypes\nctypes.CDLL(None).prctl(15, {name.encode()!r}, 0, 0, 0)\n"


def processes_named(name: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == name:
                found.append(int(pid))
        except OSError:
            pass
    return found


# ---------------------------------------------------------------------------------------------
# Extracting the program
# ---------------------------------------------------------------------------------------------
def test_extract_code_takes_the_last_python_block():
    completion = "Plan.</thought>\n```python\nprint(1)\n```\nBetter:</thought>\n```py\nprint(2)\n```\n"
    assert extract_code(completion) == "print(2)"
    assert extract_code("```Python3\nx = 1\ny = 2\n```") == "x = 1\ny = 2"


def test_extract_code_keeps_the_program_when_an_output_example_follows():
    completion = "```python\nprint(input())\n```\nFor input 3 it prints:\n```\n3\n```"
    assert extract_code(completion) == "print(input())"


def test_extract_code_falls_back_to_untagged_blocks_and_unterminated_fences():
    assert extract_code("Code:\n```\nprint(3)\n```\nDone.") == "print(3)"
    assert extract_code("Code:\n```python\nprint(4)\nprint(5)") == "print(4)\nprint(5)"
    assert extract_code("```cpp\nint main() {}\n```\n```python\nprint(6)\n") == "print(6)"


def test_extract_code_none_without_code():
    assert extract_code("The answer is 42.</thought>") is None
    assert extract_code("```python\n\n```") is None
    assert extract_code("```cpp\nint main() {}\n```") is None


# ---------------------------------------------------------------------------------------------
# Judging outputs
# ---------------------------------------------------------------------------------------------
def test_outputs_match_ignores_only_trailing_white_space():
    assert outputs_match("1 2\n3\n", "1 2  \n3\n\n\n")
    assert outputs_match("3", "3\n")
    assert not outputs_match("1 2\n", " 1 2\n")
    assert not outputs_match("1\n2\n", "1 2\n")
    assert not outputs_match("1\n", "")


def test_returns_match_compares_json_values():
    assert returns_match("[[1, 2], [3]]", "[[1, 2], [3]]")
    assert returns_match("2", "2.0")
    assert not returns_match("[1, 2]", "[2, 1]")
    assert not returns_match('"a"', "a")  # not JSON


# ---------------------------------------------------------------------------------------------
# Running programs
# ---------------------------------------------------------------------------------------------
def test_stdin_program_gets_one_result_per_test():
    program = "a, b = map(int, input().split())\nprint(a * b)"
    tests = [{"input": "3 4\n", "output": "12\n"}, {"input": "2 2", "output": "5"}, {"input": "0 9", "output": "0"}]
    assert run_tests(program, tests) == [
        Verdict(True, "passed"), Verdict(False, "wrong answer"), Verdict(True, "passed"),
    ]


@pytest.mark.parametrize("program", [
    "print(sum(int(x) for x in input().split()))",
    "import sys\nprint(sum(map(int, sys.stdin.read().split())))",
    "print(sum(map(int, open(0).read().split())))",
    "import sys\nprint(sum(map(int, sys.stdin.buffer.read().split())))",
    "def main():\n    print(sum(map(int, input().split())))\n\nif __name__ == '__main__':\n    main()",
    "print(sum(map(int, stdin.readline().split())))",  # `stdin` from the prelude, as in LiveCodeBench
])
def test_the_usual_ways_of_reading_stdin_work(program):
    assert statuses(program, [{"input": "1 2 3\n", "output": "6\n"}]) == ["passed"]


def test_functional_tests_call_a_solution_method_or_a_plain_function():
    tests = [{"fn_name": "add", "input": "[1, 2]\n3", "output": "[4, 5]"}]
    method = "class Solution:\n    def add(self, nums: List[int], k: int) -> List[int]:\n        return [x + k for x in nums]"
    function = "def add(nums, k):\n    return tuple(x + k for x in nums)"  # a tuple arrives as a list
    assert statuses(method, tests) == ["passed"]
    assert statuses(function, tests) == ["passed"]
    assert statuses(function, [{**tests[0], "output": "[4, 6]"}]) == ["wrong answer"]


def test_a_function_is_judged_on_what_it_returns_not_what_it_prints():
    program = "def answer():\n    print(42)"
    assert statuses(program, [{"fn_name": "answer", "input": "", "output": "42"}]) == ["wrong answer"]


def test_a_return_value_that_is_not_json_cannot_fake_equality():
    program = "class Anything:\n    def __eq__(self, other):\n        return True\n\ndef answer():\n    return Anything()"
    assert statuses(program, [{"fn_name": "answer", "input": "", "output": "42"}]) == ["runtime error"]


def test_errors_are_runtime_errors():
    assert statuses("print(1 / 0)", PRINTS_OK) == ["runtime error"]
    assert statuses("print('ok'", PRINTS_OK) == ["runtime error"]  # a syntax error
    assert statuses("def other():\n    return 1", [{"fn_name": "answer", "input": "", "output": "1"}]) == ["runtime error"]


def test_stop_at_first_failure_skips_the_remaining_tests():
    tests = [{"input": "1", "output": "2"}, {"input": "2", "output": "2"}]
    assert statuses("print(input())", tests, stop_at_first_failure=True) == ["wrong answer", "not run"]
    assert statuses("print(input())", tests) == ["wrong answer", "passed"]


def test_bad_tests_give_a_clear_error():
    with pytest.raises(ValueError, match="at least one test"):
        run_tests("print(1)", [])
    with pytest.raises(ValueError, match="'input' and an 'output'"):
        run_tests("print(1)", [{"input": "1"}])


# ---------------------------------------------------------------------------------------------
# Rewards
# ---------------------------------------------------------------------------------------------
def test_code_reward_is_all_or_nothing_or_the_fraction_passed():
    tests = [{"input": "1", "output": "1"}, {"input": "2", "output": "4"}]
    echo = fenced("print(input())")
    assert code_reward(echo, tests) == 0.0
    assert code_reward(echo, tests, fraction=True) == 0.5
    assert code_reward(fenced("print(int(input()) ** 2)"), tests) == 1.0
    assert code_reward("I could not write the program.", tests, fraction=True) == 0.0


def test_code_rewards_keeps_the_order_of_the_batch():
    tests = [{"input": "5", "output": "10"}]
    completions = [fenced("print(2 * int(input()))"), fenced("print(input())"), "no code", fenced("while True: pass")]
    assert code_rewards(completions, [tests] * 4, timeout_s=LIMIT_S, workers=4) == [1.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="completions"):
        code_rewards(completions, [tests])


# ---------------------------------------------------------------------------------------------
# Hostile programs: checking ends within its time bound and the trainer is unharmed
# ---------------------------------------------------------------------------------------------
def test_infinite_loops_hit_the_time_limit_even_ignoring_signals():
    program = "import signal\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM):\n    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    pass"
    start = time.monotonic()
    assert statuses(program, PRINTS_OK * 2, timeout_s=LIMIT_S) == ["time limit", "time limit"]
    assert time.monotonic() - start < 2 * LIMIT_S + SLACK_S


@pytest.mark.parametrize("program", [
    "x = bytearray(10 ** 11)",
    "chunks = []\nwhile True:\n    chunks.append(bytearray(10 ** 7))",
])
def test_memory_bombs_fail(program):
    start = time.monotonic()
    assert statuses(program, PRINTS_OK, timeout_s=LIMIT_S, memory_mb=256) in (["runtime error"], ["time limit"])
    assert time.monotonic() - start < LIMIT_S + SLACK_S


@pytest.mark.parametrize("leave_the_session", [False, True])
def test_fork_bombs_are_contained_and_leave_nothing_behind(leave_the_session, isolation):
    name = f"bomb{os.getpid() % 100000}{int(leave_the_session)}"
    program = name_process(name) + (
        "import os\n"
        "while True:\n"
        "    try:\n"
        f"        if os.fork() == 0 and {leave_the_session}:\n"
        "            os.setsid()  # out of the process group: killing the group misses it\n"
        "    except OSError:\n"
        "        pass\n"
    )
    start = time.monotonic()
    assert statuses(program, PRINTS_OK, timeout_s=LIMIT_S) == ["time limit"]
    assert time.monotonic() - start < LIMIT_S + SLACK_S
    assert processes_named(name) == []


def test_a_background_process_does_not_outlive_the_check(isolation):
    name = f"daemon{os.getpid() % 100000}"
    program = name_process(name) + "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(100)\nprint('ok')"
    assert statuses(program, PRINTS_OK) == ["passed"]
    assert processes_named(name) == []


@pytest.mark.parametrize("program", [
    "while True:\n    print('x' * 1000)",
    "print('x' * 10 ** 8)",
    "import os\nwhile True:\n    os.write(1, b'x' * 65536)",
])
def test_output_floods_are_cut_off(program):
    start = time.monotonic()
    assert statuses(program, PRINTS_OK, timeout_s=LIMIT_S) in (["runtime error"], ["time limit"])
    assert time.monotonic() - start < LIMIT_S + SLACK_S


@pytest.mark.parametrize("program, status", [
    ("print('ok')\nraise SystemExit", "passed"),
    ("import sys\nprint('ok')\nsys.exit(0)", "passed"),
    ("import sys\nprint('ok')\nsys.exit(3)", "runtime error"),
    ("import sys\nprint('ok')\nsys.exit('bye')", "runtime error"),
    ("import sys\nprint('ok')\nsys.exit(256)", "passed"),  # the OS keeps the low 8 bits, as for any process
    ("import os, sys\nprint('ok')\nsys.stdout.flush()\nos._exit(0)", "passed"),
    ("import os\nprint('ok')\nos._exit(0)", "wrong answer"),  # _exit skips flushing: the output is lost
    ("import os, sys\nprint('ok')\nsys.stdout.flush()\nos._exit(-1)", "runtime error"),
    ("import os, signal\nprint('ok', flush=True)\nos.kill(os.getpid(), signal.SIGSEGV)", "runtime error"),
])
def test_exits_of_every_kind(program, status):
    assert statuses(program, PRINTS_OK) == [status]


def test_killing_its_parent_does_not_reach_the_trainer():
    program = "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nprint('ok')"
    assert statuses(program, PRINTS_OK * 2) != ["passed", "passed"]
    assert statuses("print('ok')", PRINTS_OK) == ["passed"]  # this process lives on, and so does checking


@needs_root
def test_a_program_cannot_signal_the_trainer():
    program = f"import os\nos.kill({os.getpid()}, 0)  # signal 0: only asks whether it may\nprint('ok')"
    assert statuses(program, PRINTS_OK) == ["runtime error"]  # PermissionError


@pytest.mark.parametrize("program", [
    "def f(n):\n    return f(n + 1)\nf(0)",
    "import sys\nsys.setrecursionlimit(10 ** 9)\ndef f(n):\n    return f(n + 1) + 1\nf(0)",
])
def test_deep_recursion_fails_cleanly(program):
    start = time.monotonic()
    assert statuses(program, PRINTS_OK, timeout_s=LIMIT_S, memory_mb=256) in (["runtime error"], ["time limit"])
    assert time.monotonic() - start < LIMIT_S + SLACK_S


def test_the_working_directory_is_private_and_removed(monkeypatch):
    program = "import os\nopen('scratch.txt', 'w').write('mine')\nprint(os.getcwd(), open('scratch.txt').read())"
    report = {}
    judge = sandbox._judge
    monkeypatch.setattr(sandbox, "_judge", lambda test, reported: report.update(reported) or judge(test, reported))
    run_tests(program, PRINTS_OK)
    workdir, content = report["output"].split()
    assert content == "mine" and workdir != os.getcwd()
    assert not Path(workdir).exists()


@needs_root
def test_a_program_cannot_write_outside_its_working_directory(tmp_path):
    trainer_dir = tmp_path / "trainer"
    trainer_dir.mkdir(mode=0o755)
    (trainer_dir / "weights.txt").write_text("precious")
    home_file = Path.home() / f"written-by-a-program-{os.getpid()}"
    targets = [trainer_dir / "new.txt", trainer_dir / "weights.txt", home_file]
    program = (
        f"for path in {[str(p) for p in targets]!r}:\n"
        "    try:\n"
        "        open(path, 'w').write('pwned')\n"
        "    except OSError:\n"
        "        print('denied')\n"
    )
    assert statuses(program, [{"input": "", "output": "denied\n" * 3}]) == ["passed"]
    assert not targets[0].exists() and not home_file.exists()
    assert targets[1].read_text() == "precious"


def test_the_trainers_environment_is_invisible(monkeypatch):
    monkeypatch.setenv("RESETS_TEST_SECRET", "hunter2")
    program = "import os\nprint(any('hunter2' in value for value in os.environ.values()))"
    assert statuses(program, [{"input": "", "output": "False"}]) == ["passed"]


@needs_root
def test_the_trainers_environment_cannot_be_read_through_proc(monkeypatch):
    monkeypatch.setenv("RESETS_TEST_SECRET", "hunter2")
    program = f"try:\n    print(open('/proc/{os.getpid()}/environ').read())\nexcept OSError:\n    print('denied')"
    assert statuses(program, [{"input": "", "output": "denied"}]) == ["passed"]


def test_the_expected_outputs_never_reach_the_program():
    # Whatever the program digs out of the process that runs it, the expected output is not there.
    secret = "EXPECTED-7f3a"
    program = f"import json, sys\nsecret = {secret[::-1]!r}[::-1]\nprint(secret in json.dumps(vars(sys.modules['__main__']), default=str))"
    assert statuses(program, [{"input": "", "output": "False"}, {"input": "", "output": secret}]) == ["passed", "wrong answer"]


# ---------------------------------------------------------------------------------------------
# Built-in problems and the prompt
# ---------------------------------------------------------------------------------------------
def test_builtin_problems_have_both_kinds_of_tests():
    examples = code_tasks.builtin_examples()
    assert len(examples) >= 20
    functional = [e for e in examples if "fn_name" in e["tests"][0]]
    assert 5 <= len(functional) <= len(examples) - 5
    for example in examples:
        assert example["question"] and len(example["tests"]) >= 2


def test_builtin_reference_solutions_pass_and_wrong_solutions_fail():
    examples = code_tasks.builtin_examples()
    wrong = [e for e in examples if "wrong_solution" in e]
    assert len(wrong) >= 5
    completions = [fenced(e["solution"]) for e in examples] + [fenced(e["wrong_solution"]) for e in wrong]
    tests_list = [e["tests"] for e in examples + wrong]
    rewards = code_rewards(completions, tests_list, fraction=True)
    assert rewards[:len(examples)] == [1.0] * len(examples)
    assert all(reward < 1.0 for reward in rewards[len(examples):])


def test_code_prompt_asks_for_thoughts_then_a_program(tiny_tokenizer):
    import data

    [example], _ = data.tokenize_prompts(code_tasks.builtin_examples()[-1:], tiny_tokenizer, 16, 10**6)
    prompt = tiny_tokenizer.decode(example["prompt_ids"])
    assert "</thought>" in code_tasks.CODE_INSTRUCTION and "```python" in code_tasks.CODE_INSTRUCTION
    assert code_tasks.CODE_INSTRUCTION in prompt and "def rotate(matrix" in prompt
    assert data.THOUGHT_INSTRUCTION not in prompt


def test_checking_throughput_runs():
    assert code_tasks.checking_throughput(n_programs=4, workers=2) > 0


# ---------------------------------------------------------------------------------------------
# LiveCodeBench
# ---------------------------------------------------------------------------------------------
def lcb_private(cases: list[dict]) -> str:
    """LiveCodeBench's encoding of private test cases: base64 of zlib of a pickled JSON string."""
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(cases)))).decode()


LCB_ROWS = [
    {
        "question_title": "Double it", "question_content": "Print twice the integer N.", "starter_code": "",
        "public_test_cases": json.dumps([{"input": "2\n", "output": "4\n", "testtype": "stdin"}]),
        "private_test_cases": lcb_private([{"input": "-5\n", "output": "-10\n", "testtype": "stdin"},
                                           {"input": "0\n", "output": "0\n", "testtype": "stdin"}]),
        "metadata": "{}",
    },
    {
        "question_title": "Shift", "question_content": "Add k to every element of nums.",
        "starter_code": "class Solution:\n    def shift(self, nums: List[int], k: int) -> List[int]:\n        ",
        "public_test_cases": json.dumps([{"input": "[1, 2]\n3", "output": "[4, 5]", "testtype": "functional"}]),
        "private_test_cases": lcb_private([{"input": "[]\n1", "output": "[]", "testtype": "functional"}]),
        "metadata": json.dumps({"func_name": "shift"}),
    },
]


def test_lcb_examples_decode_public_and_private_tests():
    double, shift = code_tasks.lcb_examples(LCB_ROWS)
    assert "Print twice the integer N." in double["question"] and "standard input" in double["question"]
    assert [t["input"] for t in double["tests"]] == ["2\n", "-5\n", "0\n"]
    assert "def shift(self, nums" in shift["question"]
    assert shift["tests"] == [{"input": "[1, 2]\n3", "output": "[4, 5]", "fn_name": "shift"},
                              {"input": "[]\n1", "output": "[]", "fn_name": "shift"}]
    assert code_reward(fenced("print(2 * int(input()))"), double["tests"]) == 1.0
    solution = "class Solution:\n    def shift(self, nums, k):\n        return [x + k for x in nums]"
    assert code_reward(fenced(solution), shift["tests"]) == 1.0


def test_lcb_private_tests_that_would_run_code_are_refused():
    class RunsCode:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    encoded = base64.b64encode(zlib.compress(pickle.dumps(RunsCode()))).decode()
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        code_tasks.decode_lcb_tests(encoded)


def test_lcb_versions_name_release_files():
    assert code_tasks.lcb_files("release_v6") == code_tasks.LCB_FILES
    assert code_tasks.lcb_files("v1") == ["test.jsonl"]
    with pytest.raises(ValueError, match="unknown LiveCodeBench version"):
        code_tasks.lcb_files("v7")


def test_load_lcb_reads_the_release_files_from_the_hub(monkeypatch):
    calls = []

    def load_dataset(builder, data_files, split):
        calls.append((builder, data_files, split))
        return LCB_ROWS

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    examples = code_tasks.load_lcb(version="release_v2", split="test[:2]")
    assert len(examples) == 2
    assert calls == [("json", {"test": ["hf://datasets/livecodebench/code_generation_lite/test.jsonl",
                                        "hf://datasets/livecodebench/code_generation_lite/test2.jsonl"]}, "test[:2]")]
