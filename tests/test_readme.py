"""Every fenced code block of README.md and of the documentation (docs/**/*.md) works as written.

Each page is parsed here and each block becomes one or more test cases whose id names the page and
line (``README:L40-python``, ``docs/runs.md:L7-bash-dry-run``):

- ``python`` blocks whose first line names a file (``# my_module.py``) are plugins: the block is
  written to that file in a temporary folder, and the ``attrib-bench ...`` commands the block
  names (in that first-line comment, or in the sentence right after the block) are run *from that
  folder* with ``PYTHONPATH`` unset, as a user would. A ``list`` command must show the registered
  name (and a method's typed hyper-parameters, read from its signature).
- other ``python`` blocks run as scripts, from a temporary folder.
- ``bash`` blocks (and bare blocks with ``$ `` prompts, whose output lines must be exactly what
  the command prints) are split into commands. The CI lines are skipped (CI runs them itself), and
  so are the documentation's own build commands (``tests/test_docs.py`` runs the strict build);
  ``list``/``eval``/``plot``/``report`` run as written (plot and report on a copy of
  ``results/cifar10``); ``run`` runs as written plus ``--dry-run``, with ``--out`` in a temporary
  folder; ``train`` and ``examples`` are parsed by click only (see ``ParseCase``);
  ``[VAR=...] bash results/reproduce.sh`` checks its settings (see ``EnvCase``).
- ``toml`` blocks are parsed, and an entry-point table must name attrib-bench's plug-in group.

The same code in two places (the README's tour repeats examples of docs/your-own.md) runs once.

Markers: cases that need ``../shared`` (data, ResNet-56 weights) are ``real``. ``run`` dry runs
with a localisation metric are also ``readme_long``, which the default selection leaves out
(``pytest -m readme_long`` runs them): the dry run draws the grids, which classifies all 10 000
test images per model, and runs every method's preflight per (model, metric); that took 10-12
minutes per README command on the shared 2-core CPU here, over the suite's 10-minute budget (the
pool logits are cached once sample selection is paid once, issue 17). The rest of the file takes
a few minutes (``plot`` and ``report`` cost 30-60 s each; the ``plot`` case of the reproduction
command is the check that a fresh clone regenerates every committed figure byte for byte).

Nothing is written into the repository: every output path is rewritten into pytest's tmp folder
and the commands run with a tmp folder as their current directory. The commands are started as
soon as the session's selection is known, two at a time (``readme_runner``), since each
``attrib-bench`` start costs seconds.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
#: The pages whose blocks are checked: the README, then the documentation site's pages.
PAGES = [README, *sorted((REPO / "docs").rglob("*.md"))]
REPRODUCE = REPO / "results" / "reproduce.sh"
COMMITTED = REPO / "results" / "cifar10"
#: The console script of this environment (next to the interpreter running the tests).
ATTRIB_BENCH = str(Path(sys.executable).with_name("attrib-bench"))
#: Commands the README's first block shows and CI (`.ci/run`) runs itself: installing, linting,
#: the test suite. Running them from a test would reinstall the package or recurse into pytest.
CI_PREFIXES = ("python3 -m venv", "pip ", "ruff ", "python -m pytest", ".venv/bin/")
#: The documentation's own build commands: tests/test_docs.py runs the strict build (``serve``
#: never returns).
DOCS_PREFIXES = ("mkdocs ", ".venv/bin/mkdocs ")
TIMEOUT_S = 900
RESULTS, OUT = "{RESULTS}", "{OUT}"  # placeholders for the tmp copies, filled in per job
#: A ``--results`` folder that is not in the repository (``runs/full``, the reader's own run)
#: stands for the committed store cut to this model (the one the tour runs) and its example
#: maps: ``plot`` and ``report`` of all nine models cost a minute each here; the docs' own
#: ``plot --results results/cifar10`` still reads all of it, byte for byte.
STAND_IN_MODEL = "xs-coda-sq-t1000"


# --------------------------------------------------------------------------- README parsing


@dataclass(frozen=True)
class Block:
    line: int  # the opening fence's line, 1-based
    lang: str
    body: list[str]
    after: str  # the paragraph right after the closing fence
    page: str = "README"  # "README" or the page's path, e.g. "docs/runs.md"

    @property
    def where(self) -> str:
        return f"{self.page}:L{self.line}"


def page_name(path: Path) -> str:
    return "README" if path == README else path.relative_to(REPO).as_posix()


def read_blocks(text: str, page: str = "README") -> list[Block]:
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = re.match(r"^```(\S*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        assert end is not None, f"{page}:{i + 1}: code block is never closed"
        k = end + 1
        while k < len(lines) and not lines[k].strip():
            k += 1
        after = []
        while k < len(lines) and lines[k].strip():
            after.append(lines[k])
            k += 1
        body = lines[i + 1:end]
        lang = fence.group(1)
        if not lang and any(line.startswith("$ ") for line in body):
            lang = "console"  # `$ ` prompt lines: commands (counted as bash), the rest output
        blocks.append(Block(i + 1, lang, body, " ".join(after), page))
        i = end + 1
    return blocks


def _logical_lines(block: Block) -> list[tuple[int, str]]:
    """(page line, command text) with ``\\`` continuations joined."""
    out, buf, start = [], "", 0
    for n, raw in enumerate(block.body, start=block.line + 1):
        if not buf:
            start = n
        if raw.rstrip().endswith("\\"):
            buf += raw.rstrip()[:-1] + " "
            continue
        out.append((start, buf + raw))
        buf = ""
    return out


def _drop_optional(text: str) -> str:
    """``plot --results X [--out DIR] [--format png|pdf|svg]`` → ``plot --results X``."""
    return re.sub(r"\s*\[--[^\]]*\]", "", text)


def _subcommand(tokens: list[str]) -> tuple[list[str], str | None, list[str]]:
    """``attrib-bench --plugin m list models`` → (["--plugin", "m"], "list", ["models"])."""
    i = 1
    while i < len(tokens):
        if tokens[i] == "--plugin":
            i += 2
        elif tokens[i].startswith("-"):
            i += 1
        else:
            return tokens[1:i], tokens[i], tokens[i + 1:]
    return tokens[1:], None, []


# --------------------------------------------------------------------------- running commands


@dataclass
class Done:
    argv: list[str]
    cwd: Path
    rc: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def explain(self) -> str:
        stderr = re.sub(r"[^\n]*\r", "", self.stderr)  # progress bars: their last state only
        return (f"$ {shlex.join(self.argv)}\n(cwd {self.cwd}; exit {self.rc}; "
                f"{self.seconds:.1f} s)\n--- stdout\n{self.stdout[-3000:]}\n"
                f"--- stderr\n{stderr[-3000:]}")


_PROCS: set[subprocess.Popen] = set()
_PROCS_LOCK = threading.Lock()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # plugins must be found as a user runs them, from their folder
    env.setdefault("OMP_NUM_THREADS", "1")  # two commands share the cores
    return env


def _execute(argv: list[str], cwd: Path) -> Done:
    cwd.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    with _PROCS_LOCK:
        _PROCS.add(proc)
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        stderr += f"\n[test_readme: killed after {TIMEOUT_S} s]"
    finally:
        with _PROCS_LOCK:
            _PROCS.discard(proc)
    return Done(argv, cwd, proc.returncode, stdout, stderr, time.perf_counter() - start)


class Runner:
    """Runs the subprocess cases in the background, two at a time, each once per key."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.pool = ThreadPoolExecutor(max_workers=2)
        self.jobs: dict[tuple, tuple[Path, Future]] = {}

    def submit(self, case: SubprocessCase) -> None:
        if case.key not in self.jobs:
            workdir = self.base / f"job{len(self.jobs)}"
            self.jobs[case.key] = (workdir, self.pool.submit(case.execute, workdir))

    def result(self, case: SubprocessCase):
        self.submit(case)
        workdir, future = self.jobs[case.key]
        return workdir, future.result()

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        with _PROCS_LOCK:
            for proc in list(_PROCS):
                proc.kill()


def _real_available() -> bool:
    from attrib_bench.core.checkpoints import resolve_weights_root
    from attrib_bench.data import resolve_data_root

    return ((resolve_data_root() / "cifar-10-batches-py" / "test_batch").is_file()
            and (resolve_weights_root() / "resnet56-4bfd9763.th").is_file())


@pytest.fixture(scope="session")
def readme_runner(request, tmp_path_factory):
    """Starts every selected subprocess case at once (two run at a time)."""
    runner = Runner(tmp_path_factory.mktemp("readme"))
    real_ok = None
    selected = []
    for item in request.session.items:
        case = getattr(getattr(item, "callspec", None), "params", {}).get("case")
        if not isinstance(case, SubprocessCase) or item.get_closest_marker("skip"):
            continue
        if case.real:
            real_ok = _real_available() if real_ok is None else real_ok
            if not real_ok:
                continue
        selected.append(case)
    for case in sorted(selected, key=lambda c: -c.cost):  # the longest first: less idle time
        runner.submit(case)
    yield runner
    runner.close()
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    finished = [f.result() for _, f in runner.jobs.values() if f.done() and not f.cancelled()
                and f.exception() is None]
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None and finished:
        with capture.global_and_fixture_disabled():  # what each command cost (tests only wait)
            reporter.write_sep("-", "README commands, seconds each")
            for done in finished:
                for item in done if isinstance(done, list) else [done]:
                    reporter.write_line(f"{item.seconds:7.1f}  "
                                        f"{shlex.join(item.argv[1:])[:150]}")


# --------------------------------------------------------------------------- cases


class Case:
    id: str
    real = False
    slow = False

    def param(self):
        # one xdist worker runs every case: the session's runner starts all their commands
        # at once, which two workers would each do again
        marks = [pytest.mark.xdist_group("readme")]
        marks += [pytest.mark.real] if self.real else []
        marks += [pytest.mark.readme_long] if self.slow else []
        return pytest.param(self, id=self.id, marks=marks)


class SubprocessCase(Case):
    key: tuple
    cost = 1  # rough relative run time, to start the longest first

    def execute(self, workdir: Path):
        raise NotImplementedError

    def run(self, request) -> None:
        workdir, done = request.getfixturevalue("readme_runner").result(self)
        self.check(workdir, done)

    def check(self, workdir: Path, done) -> None:
        raise NotImplementedError


class CliCase(SubprocessCase):
    """One ``attrib-bench`` command run as written, outputs redirected into tmp."""

    def __init__(self, where: str, tokens: list[str], expected: list[str] | None = None,
                 suffix: str = "bash") -> None:
        self.where, self.tokens, self.expected = where, tokens, expected
        self.global_args, self.sub, self.rest = _subcommand(tokens)
        argv = list(tokens[1:])
        self.results_as_written = None
        for i in range(1, len(argv)):
            # the first --results folder is a tmp copy (plot and report write into it), paths
            # inside it follow it there, and further --results folders are read where they are
            if argv[i - 1] == "--results" and self.results_as_written is None:
                self.results_as_written, argv[i] = argv[i], RESULTS
            elif self.results_as_written and argv[i].startswith(self.results_as_written + "/"):
                argv[i] = RESULTS + argv[i][len(self.results_as_written):]
            elif argv[i - 1] == "--results" and not Path(argv[i]).is_absolute():
                argv[i] = str(REPO / argv[i])
        if self.sub == "run":
            # --dry-run builds and checks every model, method, metric and setting and stops;
            # the computation itself is what the other tests cover.
            if "--out" in argv:
                argv[argv.index("--out") + 1] = OUT
            else:
                argv += ["--out", OUT]
            argv.append("--dry-run")
        self.argv = argv
        self.real = self.sub == "run" or (
            self.sub == "eval" and not (expected and expected[0].startswith("Error:")))
        # A dry run builds every sample set: localisation's grid pool classifies the whole test
        # set (10 000 images) per model, and every method's preflight runs per (model, metric);
        # 10-12 minutes per command here (see the module docstring).
        metrics = argv[argv.index("--metric") + 1] if "--metric" in argv else "all"
        self.slow = self.sub == "run" and ("localisation" in metrics or metrics == "all")
        self.cost = 9 if self.slow else 3 if self.sub in ("plot", "report") else 2
        self.key = ("cli", tuple(argv))
        self.id = f"{where}-{suffix}" + ("-dry-run" if self.sub == "run" else "")

    def execute(self, workdir: Path, cwd: Path | None = None) -> Done:
        if RESULTS in self.argv:
            _copy_results(self.results_as_written, workdir / "results")
        argv = [a.replace(RESULTS, str(workdir / "results")).replace(OUT, str(workdir / "out"))
                for a in self.argv]
        return _execute([ATTRIB_BENCH, *argv], cwd or workdir / "cwd")

    def check(self, workdir: Path, done: Done) -> None:
        if self.expected:  # a `$ ` block shows the output: it must be exactly that
            failing = self.expected[0].startswith("Error:")
            assert done.rc == (1 if failing else 0), done.explain()
            assert done.output.strip() == "\n".join(self.expected).strip(), (
                f"{self.where} shows:\n{chr(10).join(self.expected)}\n\n"
                f"actual:\n{done.explain()}")
            return
        assert done.rc == 0, done.explain()
        assert "Traceback" not in done.output, done.explain()
        if self.sub == "run":  # a dry run writes nothing
            out = workdir / "out"
            written = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
            assert not written, f"--dry-run wrote {written[:5]}\n{done.explain()}"
        if self.sub in ("plot", "report"):
            copy = (workdir / "results").resolve()
            paths = [Path(p) for p in done.stdout.split()]
            assert paths, done.explain()
            for path in paths:
                assert path.is_file() and copy in path.resolve().parents, (path, done.explain())
        if self.sub == "plot":
            figures = {p.name for p in (workdir / "results" / "figures").glob("*.png")}
            assert figures, done.explain()
            if self.results_as_written == "results/cifar10":
                # "A fresh clone regenerates every figure from the committed tables": the same
                # files, byte for byte (figures carry no timestamps).
                committed = {p.name for p in (COMMITTED / "figures").glob("*.png")}
                assert figures == committed
                differ = [n for n in sorted(figures) if (workdir / "results" / "figures" / n)
                          .read_bytes() != (COMMITTED / "figures" / n).read_bytes()]
                assert not differ, f"regenerated figures differ from the committed: {differ}"
        if self.sub == "report":
            html = Path(done.stdout.split()[-1]).read_text()
            assert html.lstrip().lower().startswith("<!doctype html") or "<html" in html[:500]
            assert "<script" not in html.lower()


def _copy_results(as_written: str, to: Path) -> None:
    """A page's first ``--results`` folder, copied to ``to``: the folder itself if the
    repository has it, else the stand-in for a run of the reader's own: the committed store cut
    to :data:`STAND_IN_MODEL` (``plot`` and ``report`` read a store like a run folder)."""
    from attrib_bench.store import read_store, write_store

    source = REPO / as_written
    if source.is_dir():
        shutil.copytree(source, to)
        return
    held = read_store(COMMITTED)
    keep = {p["run"] for p in held.manifest["parts"] if p["model"] == STAND_IN_MODEL}
    held.values = held.values[held.values["model"] == STAND_IN_MODEL]
    held.curves = held.curves[held.curves["model"] == STAND_IN_MODEL]
    held.summary = held.summary[held.summary["model"] == STAND_IN_MODEL]
    held.manifest["parts"] = [p for p in held.manifest["parts"] if p["model"] == STAND_IN_MODEL]
    held.manifest["runs"] = {k: v for k, v in held.manifest["runs"].items() if k in keep}
    write_store(held, to)
    (to / "examples").mkdir()
    shutil.copy(COMMITTED / "examples" / f"{STAND_IN_MODEL}.safetensors", to / "examples")


class PluginCase(SubprocessCase):
    """A ``# my_module.py`` block: written to that file in a tmp folder; its commands run there."""

    def __init__(self, block: Block, filename: str, commands: list[tuple[str, list[str]]]):
        self.block, self.filename = block, filename
        self.code = "\n".join(block.body) + "\n"
        self.commands = [(where, CliCase(block.where, tokens)) for where, tokens in commands]
        self.names = re.findall(r"@register_\w+\(\s*[\"']([^\"']+)[\"']", self.code)
        self.real = any(cmd.real for _, cmd in self.commands) or _loads_real(self.code)
        self.slow = any(cmd.slow for _, cmd in self.commands)
        self.cost = sum(cmd.cost for _, cmd in self.commands)
        # the same file and commands on two pages run once
        self.key = ("plugin", filename, self.code, tuple(tuple(c.argv) for _, c in self.commands))
        self.id = f"{block.where}-python"

    def execute(self, workdir: Path) -> list[Done]:
        folder = workdir / "plugin"
        folder.mkdir(parents=True)
        (folder / self.filename).write_text(self.code)
        return [cmd.execute(workdir / f"cmd{i}", cwd=folder)
                for i, (_, cmd) in enumerate(self.commands)]

    def check(self, workdir: Path, dones: list[Done]) -> None:
        assert self.commands, f"{self.block.where}: the plugin block names no command"
        assert self.names, f"{self.block.where}: the plugin block registers nothing"
        for (where, cmd), done in zip(self.commands, dones, strict=True):
            cmd.check(workdir, done)
            if cmd.sub == "list":  # the command the page names must show what it registered
                for name in self.names:
                    assert re.search(rf"(?m)^\s*{re.escape(name)}\s", done.stdout), (
                        f"{where}: {name!r} not listed\n{done.explain()}")
                for text in _typed_hparams(self.code):
                    assert text in done.stdout, f"{where}: {text!r} not shown\n{done.explain()}"


def _typed_hparams(code: str) -> list[str]:
    """``def f(model, inputs, target, p: int = 2)`` under ``@register_method`` → ["p: int = 2"]."""
    found = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.FunctionDef) and any(
                "register_method" in ast.unparse(d) for d in node.decorator_list):
            args = node.args.args[3:]
            defaults = node.args.defaults[len(node.args.defaults) - len(args):]
            found += [f"{a.arg}: {ast.unparse(a.annotation)} = {ast.unparse(d)}"
                      for a, d in zip(args, defaults, strict=True) if a.annotation is not None]
    return found


def _loads_real(code: str) -> bool:
    return "load_cifar10" in code or "pretrained=True" in code


class ScriptCase(SubprocessCase):
    """A plain python block: run as a script from a tmp folder (it must not need the
    repository's files: a user runs it from anywhere)."""

    def __init__(self, block: Block) -> None:
        self.block = block
        self.code = "\n".join(block.body) + "\n"
        self.real = _loads_real(self.code)
        self.cost = 2
        self.key = ("script", self.code)
        self.id = f"{block.where}-python"

    def execute(self, workdir: Path) -> Done:
        workdir.mkdir(parents=True)
        script = workdir / f"block_L{self.block.line}.py"
        script.write_text(self.code)
        return _execute([sys.executable, str(script)], workdir / "cwd")

    def check(self, workdir: Path, done: Done) -> None:
        assert done.rc == 0, done.explain()


class ParseCase(Case):
    """Parsed by click only, never run.

    ``train`` trains for an hour or more on this CPU; ``examples`` with its default methods
    (RISE with 6000 masks and LIME among them) ran more than 10 minutes here; ``compare`` on the
    committed store takes a minute (tests/test_compare.py runs the command). They are checked by
    parsing every option with the real command (``make_context``: option names, types, choices)
    and checking the model and method names are registered.
    """

    def __init__(self, where: str, tokens: list[str], extra: list[list[str]]) -> None:
        self.where, self.tokens, self.extra = where, tokens, extra
        self.id = f"{where}-bash-parse-only"

    def run(self, request) -> None:
        for more in [[], *self.extra]:  # e.g. "add --resume after a kill"
            _parse(self.tokens[1:] + more)


def _parse(args: list[str]) -> dict:
    """Parse ``attrib-bench ARGS`` with the real click command; return the subcommand's params."""
    from attrib_bench.cli import cli
    from attrib_bench.core.registry import METHODS, MODELS

    global_args, sub, rest = _subcommand(["attrib-bench", *args])
    assert sub is not None, args
    ctx = cli.make_context("attrib-bench", [*global_args, sub, *rest])
    command = cli.get_command(ctx, sub)
    assert command is not None, f"no command {sub!r}"
    with command.make_context(sub, list(rest), parent=ctx) as sub_ctx:
        params = dict(sub_ctx.params)
    for key in ("model_name", "models"):
        for name in str(params.get(key) or "").split(","):
            if name:
                MODELS.get(name)  # raises "unknown model ..., did you mean ..."
    if params.get("methods") not in (None, "all"):
        for name in params["methods"].split(","):
            METHODS.get(name)
    return params


class EnvCase(Case):
    """``[GRIDS=32 ...] bash results/reproduce.sh``: parsed, not run (hours of compute).

    Every variable must be one the script reads (``${NAME:-default}``). Then the script runs with
    ``AB`` (its attrib-bench command) set to a stub that only records its arguments; it must run
    the benchmark, add the runs to the store and draw the figures, and each recorded command is
    parsed by click as in :class:`ParseCase`.
    """

    def __init__(self, where: str, tokens: list[str]) -> None:
        self.where = where
        n = next(i for i, t in enumerate(tokens) if not re.match(r"^[A-Z_][A-Z0-9_]*=", t))
        self.env = dict(t.split("=", 1) for t in tokens[:n])
        self.command = tokens[n:]
        self.id = f"{where}-bash-parse-only"

    def run(self, request) -> None:
        assert self.command == ["bash", "results/reproduce.sh"], self.command
        script = REPRODUCE.read_text()
        unknown = [name for name in self.env if "${" + name + ":-" not in script]
        assert not unknown, f"results/reproduce.sh does not read {unknown}"
        tmp = request.getfixturevalue("tmp_path")
        log, stub = tmp / "calls", tmp / "ab"
        stub.write_text(f'#!/bin/sh\nprintf "%s\\037" "$@" >> {shlex.quote(str(log))}\n'
                        f'printf "\\n" >> {shlex.quote(str(log))}\n')
        stub.chmod(0o755)
        env = {**_env(), **self.env, "AB": str(stub)}
        proc = subprocess.run(self.command, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0, proc.stderr
        calls = [line.split("\x1f")[:-1] for line in log.read_text().splitlines()]
        # the runs, the store they go into, its figures (the report is made on demand)
        assert calls and {c[0] for c in calls} >= {"run", "store", "plot"}, calls
        for call in calls:
            _parse(call)


class SkipCase(Case):
    def __init__(self, where: str, reason: str, slug: str) -> None:
        self.reason = reason
        self.id = f"{where}-bash-skipped-{slug}"

    def param(self):
        return pytest.param(self, id=self.id, marks=pytest.mark.skip(reason=self.reason))


class UnknownCase(Case):
    def __init__(self, where: str, lang: str, text: str) -> None:
        self.where, self.text = where, text
        self.id = f"{where}-{lang or 'plain'}"

    def run(self, request) -> None:
        pytest.fail(f"{self.where}: no rule to check this block/command: {self.text!r}")


class TomlCase(Case):
    """A ``toml`` block: valid TOML; an entry-point table names attrib-bench's plug-in group."""

    def __init__(self, block: Block) -> None:
        self.block = block
        self.id = f"{block.where}-toml"

    def run(self, request) -> None:
        import tomllib

        from attrib_bench.core.registry import PLUGIN_GROUP

        data = tomllib.loads("\n".join(self.block.body))
        groups = data.get("project", {}).get("entry-points", {})
        assert groups, f"{self.block.where}: no rule for a toml block without entry points"
        assert set(groups) == {PLUGIN_GROUP}, (self.block.where, groups)
        for name, target in groups[PLUGIN_GROUP].items():
            assert re.fullmatch(r"[\w.]+(:[\w.]+)?", target), (name, target)


def _bash_cases(block: Block) -> list[Case]:
    cases: list[Case] = []
    lines = _logical_lines(block)
    console = block.lang == "console"
    for index, (line, text) in enumerate(lines):
        where = f"{block.page}:L{line}"
        if console:
            if not text.startswith("$ "):
                continue  # output of the previous command
            text = text[2:]
            expected = []
            for _, nxt in lines[index + 1:]:
                if nxt.startswith("$ "):
                    break
                expected.append(nxt)
        else:
            expected = []
        stripped = text.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith(DOCS_PREFIXES):
            cases.append(SkipCase(where, "the documentation's build: tests/test_docs.py runs "
                                  "mkdocs build --strict", "docs-build"))
            continue
        if stripped.startswith(CI_PREFIXES):
            cases.append(SkipCase(where, "install, lint and test suite: CI (.ci/run) runs these "
                                  "two lines itself", "CI-runs-it"))
            continue
        match = re.search(r"#\s*add ((?:--[\w-]+\s*)+)", stripped)
        extra = [match.group(1).split()] if match else []
        tokens = shlex.split(_drop_optional(stripped), comments=True)
        suffix = "bash" if block.lang == "bash" else "console"
        reproduce = tokens[:2] == ["bash", "results/reproduce.sh"]
        if re.match(r"^[A-Z_][A-Z0-9_]*=", tokens[0]) or reproduce:
            cases.append(EnvCase(where, tokens))
        elif tokens[0] == "attrib-bench" and _subcommand(tokens)[1] in (
                "train", "examples", "compare"):
            cases.append(ParseCase(where, tokens, extra))
        elif tokens[0] == "attrib-bench" and _subcommand(tokens)[1] in (
                "list", "eval", "plot", "report", "run"):
            cases.append(CliCase(where, tokens, expected or None, suffix))
        else:
            cases.append(UnknownCase(where, block.lang, stripped))
    return cases


def _python_case(block: Block) -> Case:
    first = block.body[0] if block.body else ""
    named = re.match(r"^#\s*([\w.]+\.py)\b(.*)$", first)
    if not named:
        return ScriptCase(block)
    commands = []
    comment = re.search(r"(attrib-bench\s.*)$", named.group(2))
    if comment:
        commands.append(("first-line comment", shlex.split(comment.group(1).strip())))
    for text in re.findall(r"`(attrib-bench [^`]+)`", block.after):
        commands.append(("sentence after the block", shlex.split(text)))
    return PluginCase(block, named.group(1), commands)


def collect_cases(pages: list[Path] = PAGES) -> list[Case]:
    cases: list[Case] = []
    for path in pages:
        for block in read_blocks(path.read_text(), page_name(path)):
            if block.lang == "python":
                cases.append(_python_case(block))
            elif block.lang in ("bash", "console"):
                found = _bash_cases(block)
                cases += found or [UnknownCase(block.where, block.lang, "(no command)")]
            elif block.lang == "toml":
                cases.append(TomlCase(block))
            else:
                cases.append(UnknownCase(block.where, block.lang, "\n".join(block.body)))
    return cases


CASES = collect_cases()


def test_readme_blocks_were_found():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), ids
    pages = {c.id.split(":L")[0] for c in CASES}
    assert {"README", "docs/getting-started.md", "docs/your-own.md"} <= pages, pages
    plugins = [c.id for c in CASES if isinstance(c, PluginCase)]
    # the README's tour: a method, a model, a metric; the docs: those and a dataset
    assert sum(i.startswith("README:") for i in plugins) >= 3, plugins
    assert sum(i.startswith("docs/your-own.md:") for i in plugins) >= 5, plugins


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_readme(case: Case, request) -> None:
    if case.real:  # skip (conftest fixtures) when ../shared is absent
        request.getfixturevalue("data_root")
        request.getfixturevalue("weights_root")
    case.run(request)
