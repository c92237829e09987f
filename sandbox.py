"""Running untrusted programs against tests, with limits: the sandbox behind `verify.code_reward`.

`run_tests(program, tests)` runs a Python program, a policy's completion, on stdin/stdout tests or
on LiveCodeBench's function-call tests and returns one `Verdict` per test. The program runs in a
supervisor process of its own, which forks one child per test under limits on time, memory, output,
open files and processes. Where Linux allows it, the program also gets a private view of the
machine (namespaces): the Python installation read-only and nothing else of the file system, an
empty working directory, /tmp and /dev/shm of bounded size for each test, no processes but its own,
and no network but its own loopback. Started as root, each program also gets a uid of its own. The
README ("How a program runs", "What is isolated") says what this guards against and what it does not.

Nothing here is about GRPO, RRPO or SRPO: a reader of the algorithms can skip this file.
"""
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import warnings
from typing import NamedTuple

SANDBOX_UID_BASE = 100_000  # started as root, a program runs as uid SANDBOX_UID_BASE + supervisor pid
MAX_OUTPUT_BYTES = 1 << 20  # a program's output (and any file it writes) is cut at this size
MAX_PROCESSES = 8  # processes and threads a program may run at once (it counts as one)
MAX_OPEN_FILES = 64  # per process; with MAX_OUTPUT_BYTES, this bounds what memfds and pipes can hold
MAX_DIRECTORY_BYTES = 16 << 20  # with namespaces: what its working directory, /tmp and /dev/shm each hold
# Run each program in Linux namespaces of its own (set False to skip them). run_tests sets it to
# False, with a warning, the first time the machine refuses them; the other limits still apply.
NAMESPACES = True
NAMESPACES_REFUSED = 3  # the supervisor's exit status when it cannot set the namespaces up
# Per architecture, its seccomp name and the numbers of the kernel keyring calls (add_key,
# request_key, keyctl), which every program is refused
KEYRING_SYSCALLS = {"x86_64": (0xC000003E, (248, 249, 250)), "aarch64": (0xC00000B7, (217, 218, 219))}


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
# program's parent is the supervisor, never the trainer. It never sees the expected outputs: it
# reports what the program printed or returned, and run_tests judges.
#
# With namespaces, the supervisor is pid 1 of a PID namespace that holds nothing but it and the
# program, in mount, network and IPC namespaces of its own (and a user namespace when not root, since
# only root may create the others without one). Its root is a small read-only tmpfs mounted on the
# temporary directory: the Python installation and /usr bound read-only, a few devices, /proc, and
# mount points where each test gets fresh tmpfs. Its parent waits outside the PID namespace.
#
# Without namespaces, a root supervisor stays root (the program cannot signal it) and its children
# switch to a uid of their own; "kill every process of that uid" then reaches processes that left
# the process group too. The supervisor is a child subreaper: orphans of the program are re-parented
# to it, so once it has no children left, nothing of the program is left.
_SUPERVISOR = r'''
import ctypes, fcntl, json, os, resource, select, signal, struct, sys, time

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
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 4, 24, 36, 38
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER = 0x20000, 0x8000000, 0x10000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 8, 32, 4096, 16384
MS_PRIVATE = 1 << 18
AF_INET, SOCK_DGRAM, SIOCSIFFLAGS, IFF_UP = 2, 2, 0x8914, 1
libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


def checked(result, what):
    """Raise OSError naming `what` when a libc call failed."""
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")


def mount(source, target, fstype=None, flags=0, options=None):
    """mount(2), where any of the strings may be None."""
    source, path, fstype, options = [text and text.encode() for text in (source, target, fstype, options)]
    checked(libc.mount(source, path, fstype, flags, options), f"mount {target}")


def bind_read_only(source, target):
    mount(source, target, flags=MS_BIND | MS_REC)
    # The remount keeps the flags the source has: a user namespace may not drop them.
    kept = os.statvfs(target).f_flag & (MS_NOSUID | MS_NODEV | MS_NOEXEC)  # ST_* equals MS_* for these
    mount(None, target, flags=MS_REMOUNT | MS_BIND | MS_RDONLY | kept)


def refuse_namespaces(error):
    """Tell run_tests that this machine refuses the namespaces: it starts again without them."""
    print(f"namespaces unavailable: {error}", file=sys.stderr)
    sys.exit(job["namespaces_refused"])


def enter_namespaces():
    """Unshare mount, network, IPC and PID namespaces, inside a new user namespace unless root (in it
    we are uid 0, with the capabilities to mount). The PID namespace is for the next child."""
    uid, gid = os.getuid(), os.getgid()
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWPID
    checked(libc.unshare(flags if uid == 0 else flags | CLONE_NEWUSER), "unshare")
    if uid != 0:
        for name, mapping in [("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")]:
            with open(f"/proc/self/{name}", "w") as file:
                file.write(mapping)


def build_root():
    """Mount the program's view of the machine on the working directory and make it our root: /usr
    and the Python installation read-only, a few devices, /etc/hosts, /proc of the PID namespace and
    mount points for the per-test tmpfs. Nothing else of the machine: no project files, no data, no
    other program's files. Network: loopback only."""
    root = os.getcwd()
    os.umask(0o022)  # what is made here, the program must be able to enter
    mount(None, "/", flags=MS_REC | MS_PRIVATE)  # nothing mounted here reaches the machine
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    system = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"]
    python = [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix]
    visible = []
    for path in system + python:
        if path in system and os.path.islink(path):
            os.symlink(os.readlink(path), root + path)  # /bin -> usr/bin where /usr is merged
        elif os.path.isdir(path) and not any(f"{path}/".startswith(f"{seen}/") for seen in visible):
            os.makedirs(root + path)  # its parents (/root, say) are ours: the program may enter them
            bind_read_only(path, root + path)
            visible.append(path)
    os.makedirs(f"{root}/dev/shm")
    for name in ["null", "zero", "full", "random", "urandom"]:
        open(f"{root}/dev/{name}", "w").close()
        mount(f"/dev/{name}", f"{root}/dev/{name}", flags=MS_BIND)
    for name, target in [("fd", ""), ("stdin", "/0"), ("stdout", "/1"), ("stderr", "/2")]:
        os.symlink(f"/proc/self/fd{target}", f"{root}/dev/{name}")
    os.makedirs(f"{root}/etc")
    with open(f"{root}/etc/hosts", "w") as hosts:
        hosts.write("127.0.0.1 localhost\n::1 localhost\n")
    os.makedirs(f"{root}/proc")
    mount("proc", f"{root}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.makedirs(f"{root}/tmp")
    os.makedirs(root + workdir, exist_ok=True)
    mount(None, root, flags=MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    # Bring up loopback (a struct ifreq), through libc: importing `socket` would cost more than that.
    sock = libc.socket(AF_INET, SOCK_DGRAM, 0)
    fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", IFF_UP))
    os.close(sock)
    os.chroot(root)  # a chrooted process may not create user namespaces: the program cannot leave it
    os.chdir(workdir)


def private_directories():
    """In the child, with namespaces: mount and IPC namespaces of its own, in which its working
    directory, /tmp and /dev/shm are empty tmpfs of bounded size. They vanish with its last process:
    nothing it writes outlives the test or reaches another program."""
    checked(libc.unshare(CLONE_NEWNS | CLONE_NEWIPC), "unshare")
    # A new IPC namespace has System V limits of no practical size: a program could hold gigabytes
    # of shared memory or message queues, beyond its address space. Bound them as a directory, where
    # the kernel lets a namespace set its own (older kernels refuse it in a user namespace).
    page = os.sysconf("SC_PAGE_SIZE")
    for name, value in [("shmmax", job["max_directory_bytes"]), ("shmall", job["max_directory_bytes"] // page),
                        ("shmmni", 16), ("msgmni", 16), ("msgmnb", 1 << 16), ("sem", "32 256 32 16")]:
        try:
            with open(f"/proc/sys/kernel/{name}", "w") as limit:
                limit.write(f"{value}\n")
        except OSError:
            pass
    # In a user namespace the program is uid 0 there, which may write these limits back: read-only
    bind_read_only("/proc/sys", "/proc/sys")
    owner = sandbox_uid or 0  # else uid 0 of its user namespace
    for path, mode, uid in [("/tmp", "1777", 0), ("/dev/shm", "1777", 0), (workdir, "700", owner)]:
        os.makedirs(path, exist_ok=True)  # the working directory lies in the new /tmp, usually
        size = f"size={job['max_directory_bytes']},nr_inodes=1024"
        mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, f"{size},mode={mode},uid={uid},gid={uid}")
    os.chdir(workdir)


def refuse_keyrings():
    """Make the kernel's keyring calls fail (EPERM) for this process and all it starts. Keyrings
    belong to a uid, not to a namespace: a key one program adds would outlive it and could carry
    answers to the next. Nothing in Python uses them. Calls of another architecture's ABI (i386 on
    x86_64) fail too. On an architecture not in KEYRING_SYSCALLS, nothing is filtered."""
    if os.uname().machine not in job["keyring_syscalls"]:
        return
    arch, numbers = job["keyring_syscalls"][os.uname().machine]
    load_arch, load_number = (0x20, 0, 0, 4), (0x20, 0, 0, 0)  # BPF_LD|BPF_W|BPF_ABS of seccomp_data
    clear_x32 = (0x54, 0, 0, 0xBFFFFFFF)  # BPF_ALU|BPF_AND|BPF_K: x32 calls are numbers + 2^30
    allow, deny = (0x06, 0, 0, 0x7FFF0000), (0x06, 0, 0, 0x00050000 | 1)  # BPF_RET: ALLOW, ERRNO(EPERM)
    tests = [(0x15, len(numbers) - i, 0, number) for i, number in enumerate(numbers)]  # BPF_JEQ: to deny
    program = [load_arch, (0x15, 1, 0, arch), deny, load_number, clear_x32, *tests, allow, deny]
    filters = (ctypes.c_uint64 * len(program))(*[code | jt << 16 | jf << 24 | k << 32 for code, jt, jf, k in program])
    fprog = struct.pack("HP", len(program), ctypes.addressof(filters))
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # what a filter needs without CAP_SYS_ADMIN
    checked(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.c_char_p(fprog), 0, 0), "seccomp")


def drop_capabilities():
    """In a user namespace the program runs as its uid 0: it gets no capabilities, now or in what it
    executes, so it cannot undo the mounts or leave its root."""
    for capability in range(64):
        libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0)  # fails past the last capability: fine
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    checked(libc.capset(header, (ctypes.c_uint32 * 6)()), "capset")  # effective, permitted, inheritable


def reach_python_through_descriptors():
    """Without namespaces, the sandbox uid may be unable to reach the Python installation (one under
    /root, say): it imports through directory descriptors opened now, as root, which need no access
    to the parents. Packages already imported (encodings, json) import their modules lazily from
    their __path__: it goes through the descriptors too."""
    through = {path: f"/proc/self/fd/{os.open(path, os.O_RDONLY | os.O_DIRECTORY)}"
               for path in sys.path if os.path.isdir(path)}

    def reachable(path):
        for directory, descriptor in through.items():
            if f"{path}/".startswith(f"{directory}/"):
                return descriptor + path[len(directory):]
        return path

    sys.path = list(through.values())
    for module in list(sys.modules.values()):
        if isinstance(getattr(module, "__path__", None), list):
            module.__path__[:] = map(reachable, module.__path__)  # the same list as __spec__'s


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
    if namespaces:
        try:
            os.kill(-1, signal.SIGKILL)  # from pid 1: every other process of the PID namespace
        except ProcessLookupError:
            pass  # nothing to kill
        return
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
    """In the child: its own directories, the test's input as stdin, the output file as stdout,
    limits, then the uid (or, in a user namespace, no capabilities)."""
    os.setpgid(0, 0)
    if namespaces:
        private_directories()
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
        (resource.RLIMIT_NOFILE, job["max_open_files"]),
        (resource.RLIMIT_NPROC, max_processes),
        (resource.RLIMIT_CORE, 0),
    ]:
        hard = resource.getrlimit(limit)[1]
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(limit, (value, value))
    if sandbox_uid is not None:
        if not namespaces:
            reach_python_through_descriptors()
        os.setgroups([])
        os.setgid(sandbox_uid)
        os.setuid(sandbox_uid)
        libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)  # else a uid switch makes /proc/self root's
    elif namespaces:
        drop_capabilities()
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
namespaces, workdir = job["namespaces"], os.getcwd()
# Started as root, the program gets a uid of its own (no other live supervisor has this pid).
sandbox_uid = job["sandbox_uid_base"] + os.getpid() if os.getuid() == 0 else None
if namespaces:
    try:
        enter_namespaces()
    except OSError as error:
        refuse_namespaces(error)
    supervisor = os.fork()
    if supervisor:  # outside the PID namespace: wait for its pid 1, the supervisor; pass on its status
        status = os.waitstatus_to_exitcode(os.waitpid(supervisor, 0)[1])
        os._exit(status if status >= 0 else 128 - status)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # pid 1 gets no signal it does not handle from inside
    try:
        build_root()
    except OSError as error:
        refuse_namespaces(error)
    # RLIMIT_NPROC counts per user namespace: in ours (not root), this process and its parent count too.
    max_processes = job["max_processes"] + (0 if sandbox_uid is not None else 2)
else:
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    if sandbox_uid is not None:
        os.chown(".", sandbox_uid, sandbox_uid)  # the working directory is the program's
        max_processes = job["max_processes"]
    else:
        max_processes = processes_of(os.getuid()) + job["max_processes"]  # RLIMIT_NPROC counts them all
if sandbox_uid is not None:
    kill_sandbox_uid()  # checks the switch works, and clears what a crashed predecessor left
refuse_keyrings()
# What the prelude uses, imported once rather than in every child (and after the fork above).
import bisect, collections, copy, datetime, functools, heapq, io, itertools, math, operator, random
import re, statistics, string, typing
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
        "max_open_files": MAX_OPEN_FILES, "max_directory_bytes": MAX_DIRECTORY_BYTES,
        "max_processes": MAX_PROCESSES, "sandbox_uid_base": SANDBOX_UID_BASE,
        "namespaces": NAMESPACES, "namespaces_refused": NAMESPACES_REFUSED, "keyring_syscalls": KEYRING_SYSCALLS,
    }
    results, returncode, stderr = _supervise(job, tests, timeout_s, stop_at_first_failure)
    if job["namespaces"] and returncode == NAMESPACES_REFUSED:
        _stop_using_namespaces(stderr.decode(errors="replace").strip())
        job["namespaces"] = False
        results, returncode, stderr = _supervise(job, tests, timeout_s, stop_at_first_failure)
    if returncode > 0:
        raise RuntimeError(f"the code checker failed:\n{stderr.decode(errors='replace')}")
    return results + [Verdict(False, "not run")] * (len(tests) - len(results))


def _stop_using_namespaces(reason: str) -> None:
    """Run the next programs without namespaces, and say so once."""
    global NAMESPACES
    if NAMESPACES:
        NAMESPACES = False
        warnings.warn(f"the code sandbox runs programs without namespaces ({reason}): they can read "
                      "what any user can read and use the network; see 'What is isolated' in the README",
                      RuntimeWarning, stacklevel=3)


def _supervise(job: dict, tests: list[dict], timeout_s: float,
               stop_at_first_failure: bool) -> tuple[list[Verdict], int, bytes]:
    """Start a supervisor on `job` and judge its reports; the verdicts so far, its exit status and
    what it wrote to stderr."""
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
    return results, supervisor.returncode, stderr
