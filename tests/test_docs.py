"""The README and the documentation site cannot drift from the code.

- Every command and option is documented on a task page, and the generated references list every
  command, option and public name (docs/_hooks/reference.py builds them from the code).
- Every `cnnctc` command line on a page is parsed by the real parser, and every Python example
  compiles.
- Every example that can run offline runs, with the bundled model, in one temporary folder per
  page (tests/docs_runner.py, one process for all), and prints what the page shows. How a page
  marks its examples: docs/contributing.md, "The documentation".
"""
import argparse
import dataclasses
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from cnnctc.cli import COMMANDS, build_parser
from cnnctc.render import FONT_CANDIDATES, find_fonts

DOCS = ROOT / "docs"
README = ROOT / "README.md"
REFERENCE = {DOCS / "reference" / "cli.md", DOCS / "reference" / "python.md"}
EXAMPLES = DOCS / "examples"   # files the examples read (e.g. a word photo), seen as examples/ from each folder
ALL_FONTS = find_fonts() == list(FONT_CANDIDATES)  # the shown renders need the nine Debian font files

spec = importlib.util.spec_from_file_location("docs_reference_hook", DOCS / "_hooks" / "reference.py")
hook = importlib.util.module_from_spec(spec)
spec.loader.exec_module(hook)


def nav_pages():
    """The pages of mkdocs.yml's nav, in order (read without a YAML parser: `- Title: page.md` lines)."""
    nav = re.split(r"\n\S", (ROOT / "mkdocs.yml").read_text(encoding="utf-8").split("\nnav:\n", 1)[1], 1)[0]
    return [DOCS / name for name in re.findall(r":\s*(\S+\.md)\s*$", nav, re.M)]


PAGES = [README] + nav_pages()


def name(page):
    return str(page.relative_to(ROOT))


# -- reading the pages ---------------------------------------------------------------------------------

@dataclasses.dataclass
class Block:
    page: Path
    lang: str
    text: str
    line: int
    markers: dict
    output: str = None   # the ```text block right after a python or sh block

    def where(self):
        return f"{name(self.page)}:{self.line}"


FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
MARKER = re.compile(r"<!--\s*([\w-]+)(?::\s*(.*?))?\s*-->", re.S)


def blocks(page):
    text = page.read_text(encoding="utf-8")
    found, end = [], 0
    for match in FENCE.finditer(text):
        between = text[end:match.start()]
        end = match.end()
        lang, body = match.group(1), match.group(2)
        previous = found[-1] if found else None
        if lang == "text" and previous is not None and previous.lang in ("python", "sh") and not between.strip() \
                and previous.output is None:
            previous.output = body
            continue
        # Markers: the HTML comments right before the block (other comments, such as a TODO, are not markers).
        markers, chunk = {}, between.rstrip()
        while chunk.endswith("-->"):
            start = chunk.rfind("<!--")
            marker = MARKER.fullmatch(chunk[start:])
            if marker:
                markers[marker.group(1)] = marker.group(2)
            chunk = chunk[:start].rstrip()
        found.append(Block(page, lang, body, text[:match.start()].count("\n") + 1, markers))
    return found


ALL_BLOCKS = [b for page in PAGES for b in blocks(page)]
# Lines that install or are CI's own steps: checked for syntax only.
SETUP = re.compile(r"^\s*(pip install|python3 -m venv|sudo apt-get|bash \.ci/run|mkdocs )")


def logical_lines(text):
    """Shell text with backslash-continued lines joined."""
    return re.sub(r"[ \t]*\\\n[ \t]*", " ", text).splitlines()


def console_commands(block):
    """[(command, [shown output lines])] of a ```console block."""
    commands = []
    lines = block.text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("$ "):
            command = line[2:]
            while command.endswith("\\") and i + 1 < len(lines):
                i += 1
                command = command[:-1].rstrip() + " " + lines[i].strip()
            commands.append((command, []))
        elif commands:
            commands[-1][1].append(line)
        i += 1
    return commands


def shell_text(block):
    """The shell code of a sh or console block (console: its commands)."""
    if block.lang == "console":
        return "\n".join(command for command, _ in console_commands(block))
    return block.text


def cnnctc_invocations(shell):
    """The argument lists of every `cnnctc ...` in shell code (within &&, ||, ;, | and if/then/else)."""
    found = []
    for line in logical_lines(shell):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        try:
            tokens = list(lexer)
        except ValueError:   # a quote spanning lines (the demo's python3 -c): no cnnctc command in it
            continue
        segment = []
        for token in tokens + [";"]:
            if token in ("&&", "||", ";", "|", "(", ")") or (not segment and token in ("if", "then", "else", "do")):
                if segment and segment[0] == "cnnctc":
                    args = []
                    skip = False
                    for arg in segment[1:]:
                        if skip:
                            skip = False
                        elif arg in (">", ">>", "2>", "<"):
                            skip = True
                        else:
                            args.append(arg)
                    found.append(args)
                segment = []
            else:
                segment.append(token)
    return found


def parse(args):
    """None when ``cnnctc ARGS`` parses, else argparse's message."""
    import contextlib
    import io
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(args)
    except SystemExit as exc:
        if exc.code not in (0, None):
            return err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else f"exit {exc.code}"
    return None


# -- the reference pages and what the task pages document ----------------------------------------------

def subcommands():
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


COMMON = {"--help", "--manifest", "--quiet"}  # every command's, documented once on the reference page


def long_options(parser):
    return {opt for action in parser._actions for opt in action.option_strings
            if opt.startswith("--") and opt not in COMMON}


def task_text():
    """The hand-written pages (the README and every page but the generated references)."""
    return "\n".join(p.read_text(encoding="utf-8") for p in PAGES if p not in REFERENCE)


def test_every_page_is_in_the_nav_and_exists():
    pages = nav_pages()
    assert all(p.is_file() for p in pages), [name(p) for p in pages if not p.is_file()]
    on_disk = {p for p in DOCS.rglob("*.md") if "_hooks" not in p.parts}
    assert on_disk == set(pages), sorted(name(p) for p in on_disk ^ set(pages))


@pytest.mark.parametrize("command", sorted(subcommands()))
def test_the_cli_reference_lists_the_command_and_each_option_with_its_help(command):
    reference = hook.cli_reference()
    parser = subcommands()[command]
    section = reference.split(f"## `cnnctc {command}`", 1)
    assert len(section) == 2, f"`cnnctc {command}` has no section in the generated reference"
    section = section[1].split("\n## ", 1)[0]
    missing = sorted(opt for opt in long_options(parser) | {"--help", "--quiet"}
                     if not re.search(re.escape(opt) + r"\b", section))
    assert not missing, f"cnnctc {command}: options missing from the generated reference: {missing}"
    for action in parser._actions:
        if action.option_strings and action.help is None:
            pytest.fail(f"cnnctc {command} {action.option_strings[0]} has no help text")
        if action.help:
            assert " ".join(hook._cell(action.help).split()[:4]) in section


@pytest.mark.parametrize("command", sorted(subcommands()))
def test_every_command_and_option_is_explained_on_a_task_page(command):
    text = task_text()
    assert f"cnnctc {command}" in text or f"`{command}`" in text, f"no task page mentions `cnnctc {command}`"
    missing = sorted(opt for opt in long_options(subcommands()[command])
                     if not re.search(re.escape(opt) + r"\b", text))
    assert not missing, f"cnnctc {command}: options no page explains (only the generated reference lists them): " \
                        f"{missing}"
    reference_intro = (DOCS / "reference" / "cli.md").read_text(encoding="utf-8")
    assert all(opt in reference_intro for opt in COMMON - {"--help"}) and "--help" in reference_intro


def test_every_help_example_parses():
    wrong = [(example, parse(shlex.split(example)[1:])) for command in COMMANDS for example in command.examples]
    assert not [w for w in wrong if w[1]], [w for w in wrong if w[1]]


def test_the_python_reference_lists_every_public_name():
    import cnnctc
    listed = {dotted.rsplit(".", 1)[1] for names in hook.api_names().values() for dotted in names}
    assert listed == set(cnnctc.__all__) - {"__version__"}
    api = hook.python_api()
    assert all(f"::: cnnctc.{module}.{n}" in api for n, module in cnnctc._LAZY.items())


# -- every example: syntax and options ----------------------------------------------------------------

def test_the_pages_have_examples_of_each_kind():
    kinds = {b.lang for b in ALL_BLOCKS}
    assert {"python", "sh", "console", "text"} <= kinds, kinds
    assert all(b.lang in ("python", "sh", "console", "text") for b in ALL_BLOCKS), \
        [b.where() for b in ALL_BLOCKS if b.lang not in ("python", "sh", "console", "text")]


def test_every_python_example_compiles():
    for block in ALL_BLOCKS:
        if block.lang == "python":
            compile(block.text, block.where(), "exec")


def test_every_shell_example_is_valid_bash():
    for block in ALL_BLOCKS:
        if block.lang in ("sh", "console"):
            run = subprocess.run(["bash", "-n"], input=shell_text(block), capture_output=True, text=True)
            assert run.returncode == 0, f"{block.where()}: {run.stderr}"


def test_every_cnnctc_command_line_parses():
    wrong, count = [], 0
    for block in ALL_BLOCKS:
        if block.lang in ("sh", "console"):
            for args in cnnctc_invocations(shell_text(block)):
                count += 1
                problem = parse(args)
                if problem:
                    wrong.append(f"{block.where()}: cnnctc {' '.join(args)}: {problem}")
    assert count > 40 and not wrong, wrong


def test_commands_in_the_text_use_only_options_that_exist():
    """Prose too: a `cnnctc NAME --option` anywhere on a page names an option NAME has."""
    commands = subcommands()
    wrong = []
    for page in PAGES:
        for line in page.read_text(encoding="utf-8").splitlines():
            for match in re.finditer(r"\bcnnctc ([a-z][a-z-]+)((?: +[^|&;`#]*)?)", line):
                command, rest = match.group(1), match.group(2)
                if command not in commands:
                    continue
                known = long_options(commands[command]) | COMMON
                wrong += [f"{name(page)}: {command} {opt}" for opt in re.findall(r"(--[a-z][a-z0-9-]*)", rest)
                          if opt not in known]
    assert not wrong, f"pages use options the commands do not have: {sorted(set(wrong))}"


def test_the_demo_blocks_are_the_lines_the_demo_script_runs():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import readme_demo
    demo = [b for b in ALL_BLOCKS if "run-by" in b.markers]
    assert demo and all(b.markers["run-by"] == "benchmarks/readme_demo.py" for b in demo)
    script = set(readme_demo.readme_lines())
    shown = " ".join(re.sub(r" *\\\n *", " ", b.text) for b in demo)
    assert all(line in shown for line in script), [line for line in script if line not in shown]
    for block in demo:
        for line in logical_lines(shell_text(block)):
            command = re.sub(r"\s+#.*$", "", line).rstrip()
            if command.startswith(("cnnctc ", "msrun ")):
                assert command in script, f"{block.where()}: {command!r} is not a line readme_demo.py runs"


def test_repeated_blocks_are_verbatim_copies():
    for block in ALL_BLOCKS:
        if "same-as" in block.markers:
            source = ROOT / block.markers["same-as"]
            assert source in PAGES and source != block.page, block.where()
            assert any(b.text == block.text and b.lang == block.lang and "same-as" not in b.markers
                       for b in blocks(source)), f"{block.where()} is not a block of {name(source)}"


def test_only_known_markers():
    known = {"needs-hub", "run-by", "same-as", "fresh"}
    used = {m for b in ALL_BLOCKS for m in b.markers}
    assert used <= known, used - known


def test_the_readme_is_short_and_leaves_the_reference_to_the_site():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 150
    assert "cnnctc/mini-synth" in text and "cnnctc.load()" in text and 'mshub.load("' in text
    for page in nav_pages():
        assert f"(docs/{page.relative_to(DOCS)}" in text, f"the README does not link {name(page)}"


def test_no_machine_paths_in_the_pages():
    for page in PAGES + [ROOT / "mkdocs.yml"]:
        text = page.read_text(encoding="utf-8")
        assert not re.search(r"/(work|tmp|root|home/[a-z]+)/", text.replace("/home/you/", "")), name(page)


# -- every example that can run offline, run ------------------------------------------------------------

def runnable(block):
    return block.lang in ("python", "sh", "console") and not ({"needs-hub", "run-by", "same-as"} & set(block.markers))


def shell_to_run(text):
    """A sh block without its setup lines (install, CI steps), which are checked for syntax only."""
    return "\n".join(line for line in text.splitlines() if not SETUP.match(line)).strip()


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    """Run every runnable example of every page once; {page: [(block, command, shown lines, result)]}."""
    root = tmp_path_factory.mktemp("docs")
    shared_cache = root / "cache" / ".mscache"
    plan, expected = [], []
    for number, page in enumerate(PAGES):
        folder = root / f"{number:02d}-{page.stem}"
        steps = []
        for block in blocks(page):
            if not runnable(block):
                continue
            step_folder, cache = folder, shared_cache
            if "fresh" in block.markers:   # a first run: an empty folder and an empty cache
                step_folder = root / f"{number:02d}-{page.stem}-fresh-{block.line}"
                cache = step_folder / ".mscache"
            step = {"folder": str(step_folder), "cache": str(cache)}
            if block.lang == "python":
                steps.append({**step, "kind": "python", "code": block.text})
                expected.append((page, block, None, block.output))
            elif block.lang == "sh":
                code = shell_to_run(block.text)
                if code:
                    steps.append({**step, "kind": "shell", "code": code})
                    expected.append((page, block, code, block.output))
            else:
                for command, shown in console_commands(block):
                    if SETUP.match(command):
                        continue
                    steps.append({**step, "kind": "shell", "code": command})
                    expected.append((page, block, command, "\n".join(shown) + "\n" if shown else None))
        # examples/ as a page sees it, docs/examples/ as the README (read from the repository's root) does
        links = {"examples": str(EXAMPLES), "docs": str(DOCS)} if EXAMPLES.is_dir() else {}
        plan.append({"page": name(page), "folder": str(folder), "links": links, "steps": steps})
    (root / "plan.json").write_text(json.dumps(plan))
    bin_dir = os.path.dirname(sys.executable)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               # The hub's asset host, as a machine that cannot resolve it sees it: it fails at once.
               CNNCTC_ASSET_URL="https://cnnctc-docs.invalid/cnnctc_ascend_v130_mjstiiit_official_cv_acc85.97.ckpt")
    for variable in ("CNNCTC_MANIFEST", "CNNCTC_OFFLINE", "CNNCTC_ALLOW_HTTP", "CNNCTC_DEBUG"):
        env.pop(variable, None)
    run = subprocess.run([sys.executable, str(ROOT / "tests" / "docs_runner.py"), str(root / "plan.json"),
                          str(root / "results.json")], env=env, capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((root / "results.json").read_text())
    assert len(results) == len(expected)
    by_page = {}
    for (page, block, command, shown), result in zip(expected, results):
        by_page.setdefault(page, []).append((block, command, shown, result))
    return by_page


def line_pattern(line, numbers=False):
    if numbers:
        line = re.sub(r"\d+(?:\.\d+)*(?:e[-+]?\d+)?", "0", line)
    return re.compile(".*".join(re.escape(part) for part in line.split("…")), re.S)


def matches(shown, actual, numbers=False):
    if numbers:
        actual = [re.sub(r"\d+(?:\.\d+)*(?:e[-+]?\d+)?", "0", line) for line in actual]
    return len(shown) == len(actual) and all(line_pattern(s, numbers).fullmatch(a) for s, a in zip(shown, actual))


def check_result(block, command, shown, result):
    what = f"{block.where()} `{command or 'python'}`"
    if shown is None:
        assert result["status"] == 0, f"{what} failed: {result['stderr'][-2000:]}"
        return
    lines = shown.rstrip("\n").split("\n")
    shown_err = [line for line in lines if line.startswith("cnnctc: ")]
    shown_out = [line for line in lines if not line.startswith("cnnctc: ")]
    fails = any(line.startswith("cnnctc: error: ") for line in lines)
    if block.lang == "sh" or not fails:
        assert result["status"] == 0, f"{what} failed: {result['stderr'][-2000:]}"
    else:
        assert result["status"] != 0, f"{what} should fail, as its shown error line says"
    if not ALL_FONTS and any(line.startswith("fonts: ") for line in shown_out):
        return  # other fonts draw other images; the run itself is what can be checked here
    actual_out = result["stdout"].rstrip("\n").split("\n") if result["stdout"].strip() else []
    assert matches(shown_out, actual_out), f"{what} printed\n{result['stdout']}\nbut the page shows\n" + \
        "\n".join(shown_out)
    if shown_err and block.lang != "python":
        actual_err = [line for line in result["stderr"].splitlines() if line.strip()]
        assert matches(shown_err, actual_err, numbers=True), \
            f"{what} wrote to stderr\n{result['stderr']}\nbut the page shows\n" + "\n".join(shown_err)


@pytest.mark.parametrize("page", [name(p) for p in PAGES])
def test_the_examples_run_and_print_what_the_page_shows(examples, page):
    ran = examples.get(ROOT / page, [])
    for block, command, shown, result in ran:
        check_result(block, command, shown, result)
    if page in ("README.md", "docs/recognize.md", "docs/finetune.md", "docs/deploy.md", "docs/models.md"):
        assert ran, f"{page} ran no example"


@pytest.mark.skipif(not ALL_FONTS, reason="needs the nine Debian font files")
def test_with_only_dejavu_the_first_word_is_drawn_the_same(tmp_path):
    """The first-word example says: with only fonts-dejavu-core, `fonts:` names three files and the readings
    are the same. They are, because the two words are drawn with the same first two fonts: the same bytes."""
    from cnnctc.render import write_word_images
    dejavu = [path for path in FONT_CANDIDATES if "/dejavu/" in path]
    assert len(dejavu) == 3
    write_word_images(tmp_path / "all", words=["offline", "2026"])
    write_word_images(tmp_path / "dejavu", words=["offline", "2026"], fonts=dejavu)
    for image in ("00000.png", "00001.png"):
        assert (tmp_path / "all" / image).read_bytes() == (tmp_path / "dejavu" / image).read_bytes()
