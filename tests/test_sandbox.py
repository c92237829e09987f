"""The sandbox's isolation (sandbox.py): what a program sees of the machine, the memory it can hold
outside its address space, what outlives it, and the network. Each test runs a hostile (or a
correct) program; the ones that need Linux namespaces skip where the machine refuses them."""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import code_tasks
import sandbox
from conftest import sandbox_namespaces_work
from sandbox import run_tests

REPO = Path(__file__).resolve().parents[1]
AS_ROOT = os.getuid() == 0


needs_namespaces = pytest.mark.skipif(not sandbox_namespaces_work(),
                                      reason="this machine refuses the sandbox's namespaces")


def printed(program: str, **limits) -> str:
    """What the program printed on one test with empty input."""
    reports = []
    judge = sandbox._judge
    sandbox._judge = lambda test, report: reports.append(report) or judge(test, report)
    try:
        run_tests(program, [{"input": "", "output": ""}], **limits)
    finally:
        sandbox._judge = judge
    return reports[0]["output"]


# ---------------------------------------------------------------------------------------------
# Files: the project, its tests and the rest of the machine are out of sight
# ---------------------------------------------------------------------------------------------
@needs_namespaces
def test_a_program_cannot_read_the_tests_it_is_graded_on():
    # Without namespaces this program passes the built-in stdin problems without solving them.
    cheat = (
        "import sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "import code_tasks\n"
        "stdin = sys.stdin.read()\n"
        "for example in code_tasks.builtin_examples():\n"
        "    for test in example['tests']:\n"
        "        if test['input'] == stdin:\n"
        "            print(test['output'], end='')\n"
    )
    examples = code_tasks.builtin_examples()
    stdin_tests = [test for example in examples for test in example["tests"] if "fn_name" not in test]
    assert run_tests(cheat, stdin_tests[:3]) == [sandbox.Verdict(False, "runtime error")] * 3  # no code_tasks


@needs_namespaces
def test_a_program_sees_only_the_python_installation_and_its_own_directories():
    others = [code_tasks.__file__, str(REPO), str(REPO.parent), "/etc/passwd", "/home", "/var"]
    program = f"import json, os\nprint(json.dumps([os.path.exists(path) for path in {others!r}] + os.listdir('/')))"
    seen = json.loads(printed(program))
    assert seen[:len(others)] == [False] * len(others)
    python = {path.split("/")[1] for path in (sys.prefix, sys.base_prefix)}  # "root" for /root/.pyenv
    system = {"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "dev", "etc", "proc", "tmp"}
    assert set(seen[len(others):]) <= system | python


# ---------------------------------------------------------------------------------------------
# Memory outside the address space, and what outlives a program
# ---------------------------------------------------------------------------------------------
@needs_namespaces
def test_dev_shm_holds_a_bounded_amount_and_nothing_stays():
    name = f"hog-{os.getpid()}"
    program = (
        "mib = 0\n"
        "try:\n"
        "    while mib < 64:\n"
        f"        with open(f'/dev/shm/{name}-{{mib}}', 'wb') as file:\n"
        "            file.write(b'x' * (1 << 20))\n"
        "        mib += 1\n"
        "except OSError:\n"
        "    pass\n"
        "print(mib)\n"
    )
    try:
        assert 0 < int(printed(program, memory_mb=64)) <= sandbox.MAX_DIRECTORY_BYTES >> 20
    finally:
        left = list(Path("/dev/shm").glob(f"{name}-*"))
        for path in left:
            path.unlink()
    assert left == []


def test_memfds_are_bounded_by_the_open_file_limit(isolation):
    program = (
        "import os\n"
        "fds = []\n"
        "try:\n"
        "    while len(fds) < 200:\n"
        "        fd = os.memfd_create('hog')\n"
        "        os.write(fd, b'x' * (1 << 20))\n"
        "        fds.append(fd)\n"
        "except OSError:\n"
        "    pass\n"
        "try:\n"
        "    os.ftruncate(os.memfd_create('big'), 100 << 20)\n"
        "except OSError:\n"
        "    print(len(fds), 'and no memfd over the file size limit')\n"
    )
    count, rest = printed(program, memory_mb=64).split(" ", 1)
    assert 0 < int(count) < sandbox.MAX_OPEN_FILES and rest == "and no memfd over the file size limit\n"


@needs_namespaces
def test_files_do_not_outlive_a_test_or_reach_another_program():
    marker = f"left-by-{os.getpid()}"
    program = (
        "import os\n"
        f"paths = [f'{{directory}}/{marker}' for directory in ('/tmp', '/dev/shm', '.')]\n"
        "print(any(os.path.lexists(path) for path in paths))\n"
        "for path in paths:\n"
        "    open(path, 'w').write('mine')\n"
        f"os.symlink('/etc/hosts', '/tmp/{marker}-link')\n"
    )
    no_files = {"input": "", "output": "False"}
    passed = sandbox.Verdict(True, "passed")
    assert run_tests(program, [no_files, no_files]) == [passed, passed]  # a test, then the next one
    assert run_tests(program, [no_files]) == [passed]  # another program
    assert not any(os.path.lexists(f"{directory}/{marker}") for directory in ("/tmp", "/dev/shm"))


@needs_namespaces
def test_system_v_shared_memory_and_message_queues_are_bounded_as_a_directory():
    program = (
        "import ctypes\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "sizes = (sandbox_bytes // 2, 200 << 20)\n"
        "queues = sum(libc.msgget(0, 0o1600) >= 0 for _ in range(100))\n"
        "print([libc.shmget(0, size, 0o1600) >= 0 for size in sizes], queues)\n"
    ).replace("sandbox_bytes", str(sandbox.MAX_DIRECTORY_BYTES))
    # a new IPC namespace alone would allow both segments and 100 queues
    assert printed(program, memory_mb=64) == "[True, False] 16\n"


def test_kernel_keyrings_are_refused(isolation):
    # Keyrings belong to a uid, not to a namespace: a key would outlive the program and could pass
    # answers to the next one that runs under the same uid or can read it.
    if os.uname().machine not in sandbox.KEYRING_SYSCALLS:
        pytest.skip("no keyring filter on this architecture")
    add_key, request_key, keyctl = sandbox.KEYRING_SYSCALLS[os.uname().machine][1]
    program = (
        "import ctypes\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "results = []\n"
        f"results.append(libc.syscall({add_key}, b'user', b'answer:21', b'42', 2, -4))\n"  # into the user keyring
        "results.append(ctypes.get_errno())\n"
        f"results.append(libc.syscall({keyctl}, 0, -4, 0))\n"  # KEYCTL_GET_KEYRING_ID of the user keyring
        "results.append(ctypes.get_errno())\n"
        "print(results)\n"
    )
    assert printed(program) == "[-1, 1, -1, 1]\n"  # EPERM, twice


# ---------------------------------------------------------------------------------------------
# Correct programs work wherever Python lives
# ---------------------------------------------------------------------------------------------
def test_lazy_standard_library_imports_work(isolation):
    # Here and on CI, Python lives under /root, which the uid a root trainer gives the program
    # cannot enter: these modules are imported after that switch. Where Python lives somewhere any
    # user can enter, this test cannot tell the cases apart.
    program = (
        "import codecs, json.tool, socket\n"
        "print('x'.encode('idna'), codecs.lookup('cp1252').name, b'\\xef\\xbb\\xbfok'.decode('utf-8-sig'),\n"
        "      socket.getaddrinfo('127.0.0.1', 80)[0][4][0])\n"
    )
    assert printed(program) == "b'x' cp1252 ok 127.0.0.1\n"


# ---------------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------------
@needs_namespaces
def test_a_program_reaches_no_network_but_its_own_loopback():
    with socket.create_server(("127.0.0.1", 0)) as trainer_side:
        program = (
            "import socket\n"
            "try:\n"
            f"    socket.create_connection({trainer_side.getsockname()}, timeout=2).close()\n"
            "    print('reached the trainer')\n"
            "except OSError:\n"
            "    print('refused')\n"
            "with socket.create_server(('127.0.0.1', 0)) as own:\n"
            "    socket.create_connection(own.getsockname()).close()\n"
            "    print('own loopback')\n"
        )
        assert printed(program) == "refused\nown loopback\n"


# ---------------------------------------------------------------------------------------------
# Without namespaces, and as another user than root
# ---------------------------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux's unshare")
def test_where_namespaces_are_refused_it_warns_once_and_still_checks():
    # In a user namespace without a uid mapping, creating another one is refused (EPERM).
    script = (
        "import json, warnings, sandbox\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    statuses = [sandbox.run_tests('print(1)', [{'input': '', 'output': '1'}])[0].status for _ in '12']\n"
        "print(json.dumps([statuses, [str(w.message) for w in caught], sandbox.NAMESPACES]))\n"
    )
    result = subprocess.run(["unshare", "--user", sys.executable, "-c", script], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    if "unshare failed" in result.stderr:
        pytest.skip(f"this machine refuses user namespaces: {result.stderr.strip()}")
    statuses, warnings, namespaces = json.loads(result.stdout)
    assert statuses == ["passed", "passed"] and namespaces is False
    assert len(warnings) == 1 and "without namespaces (namespaces unavailable: " in warnings[0]
    assert "unshare: Operation not permitted" in warnings[0]


def anyone_can_run(path: str) -> bool:
    parents = Path(path).resolve().parents
    return all(parent.stat().st_mode & 0o001 for parent in parents) and os.stat(path).st_mode & 0o005 == 0o005


SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin")


as_another_user = pytest.mark.skipif(
    not (AS_ROOT and shutil.which("setpriv") and SYSTEM_PYTHON and anyone_can_run(SYSTEM_PYTHON)),
    reason="needs root, setpriv and a python3 in /usr/bin that anyone can run")


def printed_as_nobody(program: str) -> str:
    """What the program printed on one test, checked by a trainer that runs as nobody (uid 65534),
    for which the supervisor makes a user namespace of its own."""
    with tempfile.TemporaryDirectory() as public:
        os.chmod(public, 0o755)
        shutil.copy(REPO / "sandbox.py", public)
        script = (
            "import json, sandbox\n"
            "reports = []\n"
            "sandbox._judge = lambda test, report: reports.append(report) or sandbox.Verdict(True, '')\n"
            f"sandbox.run_tests({program!r}, [{{'input': '', 'output': ''}}], timeout_s=1)\n"
            "print(json.dumps([reports[0]['output'], sandbox.NAMESPACES]))\n"
        )
        result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", SYSTEM_PYTHON,
                                 "-c", script], cwd=public, capture_output=True, text=True, timeout=120)
    output, namespaces = json.loads(result.stdout)
    assert namespaces, result.stderr
    return output


@as_another_user
def test_a_trainer_that_is_not_root_gets_namespaces_too():
    program = (
        "import os\n"
        "print(os.getuid(), os.path.exists('/etc/passwd'))\n"
        "n = 0\n"
        "try:\n"
        "    while True:\n"
        "        if os.fork() == 0:\n"
        "            __import__('time').sleep(5)\n"
        "        n += 1\n"
        "except OSError:\n"
        "    print(n + 1, 'processes')\n"
    )
    # uid 0 of its own user namespace
    assert printed_as_nobody(program) == f"0 False\n{sandbox.MAX_PROCESSES} processes\n"


@as_another_user
def test_a_program_cannot_raise_its_system_v_limits_again_in_a_user_namespace():
    # uid 0 of a user namespace owns its IPC namespace's limits, unless /proc/sys is read-only
    program = (
        "try:\n"
        "    open('/proc/sys/kernel/msgmni', 'w').write('32000')\n"
        "except OSError as error:\n"
        "    print(type(error).__name__)\n"
        "print(open('/proc/sys/kernel/msgmni').read().strip())\n"
    )
    assert printed_as_nobody(program) == "OSError\n16\n"
