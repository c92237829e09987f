"""Running untrusted programs against tests, with limits: the sandbox behind `verify.code_reward`.

`run_tests(program, tests)` runs a Python program, a policy's completion, on stdin/stdout tests or
on LiveCodeBench's function-call tests and returns one `Verdict` per test. The program runs in a
supervisor process of its own, which forks one child per test under limits on time, memory, output
and processes; started as root, each program also gets a uid of its own. The README ("How a program
runs", "What is isolated") says what this guards against and what it does not.

Nothing here is about GRPO, RRPO or SRPO: a reader of the algorithms can skip this file.
"""
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from typing import NamedTuple

SANDBOX_UID_BASE = 100_000  # started as root, a program runs as uid SANDBOX_UID_BASE + supervisor pid
MAX_OUTPUT_BYTES = 1 << 20  # a program's output (and any file it writes) is cut at this size
MAX_PROCESSES = 8  # processes and threads a program may run at once (it counts as one)


class Verdict(NamedTuple):
    """How a program did on one test."""

    passed: bool
    status: str  # "passed", "wrong answer", "runtime error", "time limit" or "not run"


def outputs_match(expected: str, actual: str) -> bool:
    """Stdin/stdout tests: the outputs are equal once trailing white space is dropped from every
    line and trailing blank lines are dropped; leading white space counts.

    >>> outputs_match("1 2\\n3\\n", "1 2   \\n3")
    True
    >>> outputs_match("1 2\\n", " 1 2\\n")
    False
    """
    def lines(text):
        return [line.rstrip() for line in text.rstrip().splitlines()]

    return lines(expected) == lines(actual)


def returns_match(expected: str, actual: str) -> bool:
    """Function-call tests: the returned value, sent back as JSON (so tuples arrive as lists), equals
    the expected JSON value. A return value that is not JSON fails.

    >>> returns_match("[0, 1]", "[0, 1.0]"), returns_match("[0, 1]", "[1, 0]"), returns_match("3", "")
    (True, False, False)
    """
    expected_value = json.loads(expected)
    try:
        return json.loads(actual) == expected_value
    except ValueError:
        return False


# The supervisor: a fresh interpreter (`python -I -S`: standard library only, no PYTHON* variables,
# no current directory on sys.path) that run_tests starts in a temporary directory and a session of
# its own. It forks one child per test, so every test starts from the same clean state and the
# program's parent is the supervisor, never the trainer. Started as root, the supervisor stays root
# (the program cannot signal it) and its children switch to a uid of their own; "kill every process
# of that uid" then reaches processes that left the process group too. The supervisor is a child
# subreaper: orphans of the program are re-parented to it, so once it has no children left, nothing
# of the program is left. It never sees the expected outputs: it reports what the program printed or
# returned, and run_tests judges.
_SUPERVISOR = r'''
import ctypes, json, os, resource, select, signal, sys, time

# What the prelude below uses, imported once rather than in every child.
import bisect, collections, copy, datetime, functools, heapq, io, itertools, math, operator, random
import re, statistics, string, typing

# The names LiveCodeBench's checker gives every program: LeetCode starter code uses `List` unimported.
PRELUDE = """
from string import *
from re import *
from datetime import *
from collections import *
from heapq import *
from bisect import *
from copy import *
from math import *
from random import *
from statistics import *
from itertools import *
from functools import *
from operator import *
from io import *
from sys import *
from json import *
from builtins import *
from typing import *
import string, re, datetime, collections, heapq, bisect, copy, math, random, statistics
import itertools, functools, operator, io, sys, json
sys.setrecursionlimit(50000)
"""
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 4, 36, 38
libc = ctypes.CDLL(None, use_errno=True)


def processes_of(uid):
    """Processes and threads running as `uid`: what RLIMIT_NPROC counts."""
    count = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}").st_uid == uid:
                count += len(os.listdir(f"/proc/{pid}/task"))
        except OSError:
            pass
    return count


def children():
    """Pids of the supervisor's children (alive or not yet reaped)."""
    me, found = os.getpid(), []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent == me:
            found.append(int(pid))
    return found


def kill_sandbox_uid():
    """kill(-1) from a process of the sandbox uid: every process of that uid dies, wherever it is."""
    helper = os.fork()
    if helper == 0:
        try:
            os.setuid(sandbox_uid)
            os.kill(-1, signal.SIGKILL)  # on Linux, everything the caller may signal except itself
        except ProcessLookupError:
            pass  # nothing to kill
        except BaseException:
            os._exit(1)
        os._exit(0)
    if os.waitpid(helper, 0)[1] != 0:
        sys.exit(f"cannot switch to the sandbox uid {sandbox_uid}")


def kill_leftovers():
    """SIGKILL every process of the program that is still alive."""
    if sandbox_uid is not None:
        return kill_sandbox_uid()
    # Without a uid of its own, the program is reached through the process groups of the
    # supervisor's children, and as a child subreaper the supervisor inherits every orphan.
    for pid in children():
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, signal.SIGKILL)
            except OSError:
                pass


def end_program(child):
    """Kill whatever is left of the program and reap it all; the exit code of `child`."""
    exit_code = None
    while True:
        # Until `child` is reaped, its pid and process group id cannot be reused: kill first.
        kill_leftovers()
        try:
            while (reaped := os.waitpid(-1, os.WNOHANG))[0]:
                if reaped[0] == child:
                    exit_code = os.waitstatus_to_exitcode(reaped[1])
        except ChildProcessError:
            return exit_code
        time.sleep(0.001)  # some are still dying, or new ones appeared: kill again


def confine(input_fd, output_fd):
    """In the child: the test's input as stdin, the output file as stdout, limits, then the uid."""
    os.setpgid(0, 0)
    os.dup2(input_fd, 0)
    os.dup2(output_fd, 1)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    os.closerange(3, resource.getrlimit(resource.RLIMIT_NOFILE)[0])  # the pipes to run_tests too
    random.seed()  # a fork copies the supervisor's random state
    cpu_s = int(job["timeout_s"]) + 1  # a backstop: the supervisor enforces the wall-clock limit
    for limit, value in [
        (resource.RLIMIT_CPU, cpu_s),
        (resource.RLIMIT_AS, job["memory_mb"] << 20),
        (resource.RLIMIT_FSIZE, job["max_output_bytes"]),  # writing past it kills with SIGXFSZ
        (resource.RLIMIT_NPROC, max_processes),
        (resource.RLIMIT_CORE, 0),
    ]:
        hard = resource.getrlimit(limit)[1]
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(limit, (value, value))
    if sandbox_uid is not None:
        # The sandbox uid may be unable to reach the Python installation (one under /root, say):
        # it imports through directory descriptors opened now, which need no access to the parents.
        sys.path = [f"/proc/self/fd/{os.open(path, os.O_RDONLY | os.O_DIRECTORY)}"
                    for path in sys.path if os.path.isdir(path)]
        os.setgroups([])
        os.setgid(sandbox_uid)
        os.setuid(sandbox_uid)
        libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)  # else a uid switch makes /proc/self root's
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # setuid programs (su, sudo) cannot raise it again
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # after setuid, which clears it
    sys.stdin = open(0, encoding="utf-8", closefd=False)
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False)
    sys.stderr = open(2, "w", encoding="utf-8", closefd=False)


def call_function(namespace, test):
    """Call the tested function, a method of `Solution` (LeetCode style) or a plain function, on the
    test's arguments: one JSON value per line, as in LiveCodeBench."""
    arguments = [json.loads(line) for line in test["input"].splitlines() if line.strip()]
    name, solution = test["fn_name"], namespace.get("Solution")
    function = getattr(solution(), name) if hasattr(solution, name) else namespace[name]
    return function(*arguments)


def run_program(test):
    """Run the program on one test the way `python solution.py` would; its exit status."""
    namespace = {"__name__": "__main__"}
    try:
        if test["fn_name"]:
            sys.stdout = open(os.devnull, "w")  # a function's answer is what it returns, not prints
        exec(PRELUDE, namespace)
        exec(compile(job["program"], "solution.py", "exec"), namespace)
        if test["fn_name"]:
            os.write(1, json.dumps(call_function(namespace, test)).encode())
        status = 0
    except SystemExit as stop:
        status = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    except BaseException:
        status = 1
    try:
        sys.stdout.flush()
    except BaseException:
        status = 1
    return status


def run_test(test):
    """Run the program on one test in a forked child: how it ended and what it printed."""
    input_fd, output_fd = os.memfd_create("stdin"), os.memfd_create("stdout")
    with open(input_fd, "wb", closefd=False) as stdin:
        stdin.write(b"" if test["fn_name"] else test["input"].encode())
    os.lseek(input_fd, 0, os.SEEK_SET)
    child = os.fork()
    if child == 0:
        status = 125  # the sandbox could not be set up
        try:
            confine(input_fd, output_fd)
            status = run_program(test)
        finally:
            os._exit(status & 0xFF)
    exited = os.pidfd_open(child)
    timed_out = not select.select([exited], [], [], job["timeout_s"])[0]
    os.close(exited)
    exit_code = end_program(child)
    output = os.pread(output_fd, job["max_output_bytes"], 0)
    os.close(input_fd)
    os.close(output_fd)
    return {"timed_out": timed_out, "exit_code": exit_code, "output": output.decode("utf-8", "replace")}


link_in = os.fdopen(os.dup(0), "rb")  # from run_tests: the job, then a line for each test to run
link_out = os.fdopen(os.dup(1), "wb")  # to run_tests: a JSON line for each test run
job = json.loads(link_in.readline())
libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
if os.getuid() == 0:
    sandbox_uid = job["sandbox_uid_base"] + os.getpid()  # no other live supervisor has this pid
    max_processes = job["max_processes"]
    os.chown(".", sandbox_uid, sandbox_uid)  # the working directory is the program's
    kill_sandbox_uid()  # checks the switch works, and clears what a crashed predecessor left
else:
    sandbox_uid = None
    max_processes = processes_of(os.getuid()) + job["max_processes"]  # RLIMIT_NPROC counts them all
for test in job["tests"]:
    if not link_in.readline():
        break  # run_tests wants no more tests
    link_out.write(json.dumps(run_test(test)).encode() + b"\n")
    link_out.flush()
'''


def _judge(test: dict, report: dict) -> Verdict:
    """The result of one test from the supervisor's report of how the program ran."""
    if report["timed_out"]:
        return Verdict(False, "time limit")
    if report["exit_code"] != 0:
        return Verdict(False, "runtime error")
    match = returns_match if test.get("fn_name") else outputs_match
    passed = match(test["output"], report["output"])
    return Verdict(passed, "passed" if passed else "wrong answer")


def _kill_session(process: subprocess.Popen) -> None:
    """SIGKILL a process started with start_new_session=True and its process group."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)


def run_tests(program: str, tests: list[dict], timeout_s: float = 2.0, memory_mb: int = 1024,
              stop_at_first_failure: bool = False) -> list[Verdict]:
    """Run a Python program on its tests in a sandboxed subprocess; one Verdict per test.

    A test is {"input": stdin text, "output": expected stdout} or, LiveCodeBench's "functional"
    style, {"fn_name": name, "input": the arguments as one JSON value per line, "output": the JSON
    of the return value}; the function is a method of `class Solution` or a plain function.
    Each test gets `timeout_s` seconds of wall-clock time and `memory_mb` of address space. With
    `stop_at_first_failure`, the tests after the first failure are "not run".

    >>> [r.status for r in run_tests("print(2 * int(input()))", [
    ...     {"input": "2\\n", "output": "4\\n"}, {"input": "3\\n", "output": "5\\n"}])]
    ['passed', 'wrong answer']
    """
    if not tests:
        raise ValueError("run_tests needs at least one test")
    for test in tests:
        if not isinstance(test.get("input"), str) or not isinstance(test.get("output"), str):
            raise ValueError(f"a test needs an 'input' and an 'output' string, got {test!r}")
    job = {
        "program": program,
        "tests": [{"input": test["input"], "fn_name": test.get("fn_name")} for test in tests],
        "timeout_s": timeout_s, "memory_mb": memory_mb, "max_output_bytes": MAX_OUTPUT_BYTES,
        "max_processes": MAX_PROCESSES, "sandbox_uid_base": SANDBOX_UID_BASE,
    }
    results = []
    with tempfile.TemporaryDirectory(prefix="run-tests-", ignore_cleanup_errors=True) as workdir:
        supervisor = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _SUPERVISOR], cwd=workdir, env={"PATH": os.defpath},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True,
        )
        # The supervisor enforces the time limits; this only guards against the supervisor hanging.
        backstop = threading.Timer(10 + len(tests) * (timeout_s + 1), _kill_session, [supervisor])
        backstop.start()
        try:
            supervisor.stdin.write(json.dumps(job).encode() + b"\n")
            for test in tests:
                supervisor.stdin.write(b"\n")  # run the next test
                supervisor.stdin.flush()
                report = supervisor.stdout.readline()
                if not report.endswith(b"\n"):
                    break  # the supervisor is gone: the program killed it, or the backstop did
                results.append(_judge(test, json.loads(report)))
                if stop_at_first_failure and not results[-1].passed:
                    break
        except BrokenPipeError:
            pass  # the supervisor is gone
        finally:
            _, stderr = supervisor.communicate()  # closes its stdin: it stops and exits
            backstop.cancel()
    if supervisor.returncode > 0:
        raise RuntimeError(f"the code checker failed:\n{stderr.decode(errors='replace')}")
    return results + [Verdict(False, "not run")] * (len(tests) - len(results))
