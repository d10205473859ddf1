"""Every shell, console and Dockerfile example of README.md and docs/*.md, run as written.

Each block runs with bash in a copy of the checkout whose .venv is the venv running the tests. The only
changes made to an example are these, all made by swap() below:

- The source. Every URL given to prefectflow.py (`--url`, `parametro_url=`) becomes the bundled sample
  (sample/todos.json) served on 127.0.0.1 by the test; a prefectflow.py command that names no source
  (and is not --demo) gets `--url` that sample, since its default, the public API, is not offline.
- Runs until stopped. A prefectflow.py command that would run on its schedule until stopped (none of
  FINITE) gets `--runs 1`: the first run starts at once, so one run is the example's whole behaviour.
  A command with `--config` is left to its file, which must end it (`once = true`, `runs = 1`).
- `--listen HOST:PORT` becomes 127.0.0.1:0: never a fixed port, never another interface; in a
  Dockerfile's HEALTHCHECK, that address becomes the one the service logs it took.
- `make test` runs the suite on one small file (PYTEST_ADDOPTS): as written it would run this file again.

A Dockerfile is run as a container runs it: its RUN lines in order (but those that install packages or
change the system, which here would change the machine running the tests), then its CMD as the container's
process, its HEALTHCHECK command once that process serves, which must pass, then SIGTERM (`docker
stop`), which must end it with 143. Nothing else can reach out: the HTTP(S) proxies the examples see
are a closed port on 127.0.0.1, and only loopback bypasses them.

A block right after a line `<!-- example: not run (reason) -->` is not run; its test is skipped with
that reason, so `pytest -rs` lists them.
"""
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import List, NamedTuple, Optional

import pytest
from conftest import ROOT, Source, ok, wait_for

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNABLE = {"sh": "shell", "shell": "shell", "bash": "shell", "console": "console",
            "dockerfile": "dockerfile", "Dockerfile": "dockerfile"}
NOT_RUN = re.compile(r"^\s*<!--\s*example:\s*not run\s*\((.*)\)\s*-->\s*$")
MARKER = re.compile(r"^\s*<!--\s*example:")
FENCE = re.compile(r"^ {0,3}(```+|~~~+)\s*([\w+-]*)")
SAMPLE = (ROOT / "sample" / "todos.json").read_bytes()

# prefectflow.py run as a script (not `prefect run -p prefectflow.py`, whose flow is the module's).
OURS = re.compile(r"\bpython[\d.]*\s+(?:\S*/)?prefectflow\.py(?=\s|$)")
# Options after which prefectflow.py ends on its own.
FINITE = ("--once", "--demo", "--runs", "--visualize", "--next", "--help", "-h", "--config")
VALUE = r"""('[^']*'|"[^"]*"|[^\s'"]+)"""
URL_OPTION = re.compile(r"(--url(?:\s+|=))" + VALUE)
PARAMETER = re.compile(r"(parametro_url=)" + VALUE)
LISTEN = re.compile(r"(--listen(?:\s+|=))" + VALUE)
# What an example that runs unmarked must not do on the machine running the tests (as root, often).
HOST_CHANGES = re.compile(r"(^|[\s;&|(])(sudo|systemctl|journalctl|apt-get|apt|docker|useradd|adduser|install)\s")
# Tests that `make test` runs in an example: small, quick, and never this file.
MAKE_TEST_SELECTION = "tests/test_docs.py"


class Block(NamedTuple):
    page: str  # its path in the checkout
    line: int  # of its opening fence
    kind: str  # shell, console or dockerfile
    text: str
    not_run: Optional[str]  # the reason it is not run, if it is not


def blocks(path: Path, root: Path = ROOT) -> List[Block]:
    """The fenced shell, console and Dockerfile blocks of a Markdown file, with their not-run reasons."""
    found, lines = [], path.read_text(encoding="utf-8").splitlines()
    fence, start, body = None, 0, []
    for number, line in enumerate(lines, 1):
        match = FENCE.match(line)
        if fence is None and match:
            fence, kind, start, body = match.group(1), match.group(2), number, []
        elif fence is not None and line.strip().startswith(fence) and line.strip().strip(fence[0]) == "":
            if kind in RUNNABLE:
                before = next((text for text in reversed(lines[:start - 1]) if text.strip()), "")
                reason = NOT_RUN.match(before)
                found.append(Block(path.relative_to(root).as_posix(), start, RUNNABLE[kind],
                                   "\n".join(body) + "\n", reason and reason.group(1).strip()))
            fence = None
        elif fence is not None:
            body.append(line)
    return found


EXAMPLES = [block for page in PAGES for block in blocks(page)]


def swap(command: str, url: str) -> str:
    """One command of an example with the swaps the module's docstring lists (not the --listen one)."""
    command = PARAMETER.sub(lambda m: m.group(1) + shlex.quote(url), command)
    ours = OURS.search(command)
    if not ours:
        return command
    command = URL_OPTION.sub(lambda m: m.group(1) + shlex.quote(url), command)
    words = set(re.findall(r"(?<![\w-])(-[\w-]+)", command[ours.end():]))
    added = []
    if "--url" not in words and "--demo" not in words:
        added += ["--url", shlex.quote(url)]
    if not words & set(FINITE):
        added += ["--runs", "1"]
    return command[:ours.end()] + "".join(" " + word for word in added) + command[ours.end():]


def swap_listen(command: str) -> tuple:
    """The command with its --listen address on 127.0.0.1:0, and the address it had (None if none)."""
    found = LISTEN.search(command)
    if not found:
        return command, None
    return LISTEN.sub(lambda m: m.group(1) + "127.0.0.1:0", command), shlex.split(found.group(2))[0]


def commands(block: Block) -> List[str]:
    """The shell commands of a shell or console block, continuation lines joined."""
    text = block.text
    if block.kind == "console":  # the lines after a "$ " prompt, and the lines they continue on
        kept, going = [], False
        for line in text.splitlines():
            if line.startswith("$ ") or going:
                kept.append(line[2:] if line.startswith("$ ") else line)
                going = line.endswith("\\")
        text = "\n".join(kept)
    return [line for line in text.replace("\\\n", " ").splitlines() if line.strip()]


def dockerfile(text: str) -> dict:
    """A Dockerfile's RUN commands, CMD, HEALTHCHECK command and ENV, as shell commands."""
    found = {"RUN": [], "CMD": None, "HEALTHCHECK": None, "ENV": {}}
    for line in text.replace("\\\n", " ").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        instruction, _, rest = line.strip().partition(" ")
        instruction, rest = instruction.upper(), rest.strip()
        if instruction in ("RUN", "CMD"):
            shell = shlex.join(json.loads(rest)) if rest.startswith("[") else rest
            if instruction == "RUN":
                found["RUN"].append(shell)
            else:
                found["CMD"] = shell
        elif instruction == "HEALTHCHECK":
            command = rest.split(" CMD ", 1)[1].strip() if " CMD " in f" {rest}" else None
            found["HEALTHCHECK"] = shlex.join(json.loads(command)) if command and command.startswith("[") else command
        elif instruction == "ENV":
            found["ENV"].update(dict(pair.split("=", 1) for pair in shlex.split(rest)))
        elif instruction not in ("FROM", "COPY", "ADD", "WORKDIR", "EXPOSE", "USER", "LABEL", "ARG",
                                 "VOLUME", "STOPSIGNAL"):
            raise AssertionError(f"the harness does not know how to run {instruction}")
    return found


@pytest.fixture
def checkout(tmp_path):
    """A copy of the checkout, its .venv the venv running the tests."""
    copy = tmp_path / "checkout"
    shutil.copytree(ROOT, copy, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", ".pytest_cache", "*.tmp"))
    (copy / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    return copy


@pytest.fixture
def environment():
    """The environment examples run in: no way out but loopback, nothing of pytest's."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: a proxy that refuses
        proxy = f"http://127.0.0.1:{closed.getsockname()[1]}"
        env = {name: value for name, value in os.environ.items()
               if not name.startswith(("PYTEST_", "PREFECTFLOW_")) and name.lower() not in ("http_proxy", "https_proxy",
                                                                                           "all_proxy", "no_proxy")}
        env.update({name: proxy for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")})
        env.update(no_proxy="127.0.0.1,localhost,::1", NO_PROXY="127.0.0.1,localhost,::1",
                   PYTEST_ADDOPTS=f"-p no:cacheprovider {MAKE_TEST_SELECTION}")
        yield env


def run_shell(script: str, cwd: Path, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def check_make_is_ready(script: str, cwd: Path, env: dict) -> None:
    """Skip an example that runs make if make would rebuild the venv (which is not the copy's own)."""
    if re.search(r"(^|\s)make(\s|$)", script) and run_shell("make -q .venv/.dev", cwd, env).returncode != 0:
        pytest.skip("the venv running the tests is not up to date with the locks (make .venv/.dev)")


@pytest.mark.parametrize("block", EXAMPLES, ids=[f"{b.page}:{b.line}" for b in EXAMPLES])
def test_example_runs_as_written(block, checkout, environment):
    if block.not_run is not None:
        pytest.skip(f"{block.page}:{block.line}: not run ({block.not_run})")
    source = Source()
    try:
        url = source.add("/todos", ok(SAMPLE))
        if block.kind == "dockerfile":
            run_container(dockerfile(block.text), url, checkout, environment)
            return
        script = "\n".join(swap_listen(swap(command, url))[0] for command in commands(block))
        changes = HOST_CHANGES.search(script)
        assert not changes, f"{changes.group(2)} would change this machine: mark the block not run"
        check_make_is_ready(script, checkout, environment)
        result = run_shell(script, checkout, environment)
        assert result.returncode == 0, f"{script}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    finally:
        source.close()


def run_container(image: dict, url: str, checkout: Path, environment: dict) -> None:
    env = {**environment, **image["ENV"]}
    for command in image["RUN"]:
        if HOST_CHANGES.search(command):
            continue  # installs packages into the image: here, the machine running the tests has them
        result = run_shell(swap(command, url), checkout, env)
        assert result.returncode == 0, f"RUN {command}\n{result.stdout}{result.stderr}"
    assert image["CMD"], "a Dockerfile example without CMD"
    if image["HEALTHCHECK"] is None:  # the CMD is the whole example
        result = run_shell(swap(image["CMD"], url), checkout, env)
        assert result.returncode == 0, f"CMD {image['CMD']}\n{result.stdout}{result.stderr}"
        return
    command, listened = swap_listen(swap(image["CMD"], url).replace(" --runs 1", "", 1))
    assert listened, "a HEALTHCHECK needs a CMD that --listen's"
    log = checkout / "container.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=checkout, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        def served():
            assert proc.poll() is None, f"CMD {command} ended: {proc.returncode}\n{log.read_text()}"
            found = re.search(r"Serving on http://(127\.0\.0\.1:\d+)\n", log.read_text())
            return found and found.group(1)
        address = wait_for(served, "'Serving on' line", deadline=120)
        port = listened.rpartition(":")[2]
        check = re.sub(rf"(?<=://)(127\.0\.0\.1|localhost|\[::1\]|{re.escape(listened.rpartition(':')[0])}):{port}\b",
                       address, image["HEALTHCHECK"])
        result = run_shell(check, checkout, env, timeout=120)
        assert result.returncode == 0, f"HEALTHCHECK CMD {check}\n{result.stdout}{result.stderr}"
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(120)
    assert code == 128 + signal.SIGTERM, log.read_text()


def test_examples_not_run_say_why():
    """A not-run marker stands right before a block that could run, and gives its reason."""
    markers = [(page.relative_to(ROOT).as_posix(), number, line)
               for page in PAGES
               for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
               if MARKER.search(line)]
    placed = {(block.page, block.not_run) for block in EXAMPLES if block.not_run is not None}
    for page, number, line in markers:
        reason = NOT_RUN.match(line)
        assert reason and reason.group(1).strip(), f"{page}:{number}: write <!-- example: not run (reason) -->"
        assert (page, reason.group(1).strip()) in placed, f"{page}:{number}: not right before a sh/console/Dockerfile block"


def test_the_examples_are_found(tmp_path):
    (tmp_path / "page.md").write_text(
        "# Page\n\n```sh\nmake demo\n```\n\n<!-- example: not run (needs the internet) -->\n\n```shell\n"
        "make lock\n```\n\n```json\n{}\n```\n\n```console\n$ ls \\\n  -l\ntotal 0\n$ true\n```\n\n"
        "```dockerfile\nCMD [\"echo\", \"hi there\"]\n```\n", encoding="utf-8")
    found = blocks(tmp_path / "page.md", tmp_path)
    assert [(b.line, b.kind, b.not_run) for b in found] == [
        (3, "shell", None), (9, "shell", "needs the internet"), (17, "console", None), (24, "dockerfile", None)]
    assert commands(found[2]) == ["ls    -l", "true"]
    assert dockerfile(found[3].text)["CMD"] == "echo 'hi there'"


@pytest.mark.parametrize("written, run", [
    (".venv/bin/python prefectflow.py            # until Ctrl-C",
     ".venv/bin/python prefectflow.py --url URL --runs 1            # until Ctrl-C"),
    (".venv/bin/python prefectflow.py --once", ".venv/bin/python prefectflow.py --url URL --once"),
    (".venv/bin/python prefectflow.py --once --url http://127.0.0.1:8000/todos --output out/todos.json",
     ".venv/bin/python prefectflow.py --once --url URL --output out/todos.json"),
    (".venv/bin/python prefectflow.py --paginate --url 'http://h:3000/todos?_page=1&_limit=50'",
     ".venv/bin/python prefectflow.py --runs 1 --paginate --url URL"),
    (".venv/bin/python prefectflow.py --demo", ".venv/bin/python prefectflow.py --demo"),
    (".venv/bin/python prefectflow.py --visualize docs/flow.png",
     ".venv/bin/python prefectflow.py --url URL --visualize docs/flow.png"),
    (".venv/bin/prefect run -p prefectflow.py --param parametro_url=https://example.org/todos",
     ".venv/bin/prefect run -p prefectflow.py --param parametro_url=URL"),
    ("make demo   # the --once run", "make demo   # the --once run"),
])
def test_what_the_harness_swaps(written, run):
    assert swap(written, "URL") == run


def test_the_listen_address_is_swapped_for_any_free_loopback_port():
    assert swap_listen("python prefectflow.py --listen 0.0.0.0:9100 -q") == (
        "python prefectflow.py --listen 127.0.0.1:0 -q", "0.0.0.0:9100")
