"""mkdocs hook: the two reference pages are generated from the code, so they cannot drift from it.

- ``<!-- cli-reference -->`` on a page becomes the reference of every ``cnnctc`` command, read from
  the argparse parsers themselves (``cnnctc.cli.build_parser()``): a new command or option appears
  in the next build, with its help text, default and examples.
- ``<!-- python-api -->`` becomes one mkdocstrings block (``::: module.name``) per public name of
  the package (``cnnctc.__all__``), grouped by topic; mkdocstrings then renders the docstrings.

The functions are plain Python, so tests/test_docs.py checks their output without building the site.
"""
import argparse
import contextlib
import html
import os

CLI_MARKER = "<!-- cli-reference -->"
API_MARKER = "<!-- python-api -->"

# Topics of the Python API, in page order: (title, modules whose public names it lists).
API_TOPICS = (
    ("Loading a model", ("loader", "network")),
    ("Models, manifests and downloads", ("registry", "manifest", "download")),
    ("Reading words", ("recognizer", "transforms")),
    ("CTC decoding", ("decoding",)),
    ("Fine-tuning and evaluation", ("train", "evaluation")),
    ("Data", ("data", "render")),
    ("Deployment", ("export", "quantize")),
    ("Errors", ("errors",)),
)


@contextlib.contextmanager
def _columns(width):
    """argparse wraps usage lines to $COLUMNS: fix it, so the page does not depend on the terminal."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


def _cell(text):
    """One table cell (or line) of help text: one line, and no character that Markdown would read as markup."""
    text = " ".join(str(text).split())
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|").replace("*", "\\*")


def _option_rows(parser):
    formatter = parser._get_formatter()
    rows = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
            continue
        invocation = formatter._format_action_invocation(action)
        if not action.option_strings:
            invocation += " (positional)"
        meaning = formatter._expand_help(action) if action.help else ""
        code = html.escape(" ".join(invocation.split())).replace("|", "&#124;")
        rows.append(f"| <code>{code}</code> | {_cell(meaning)} |")
    return rows


def cli_reference():
    """The command-line reference in Markdown: the top-level command, then every subcommand in --help's order."""
    from cnnctc.cli import COMMANDS, build_parser
    with _columns(100):
        parser = build_parser()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        lines = ["## `cnnctc`", "", _cell(parser.description), "", "```text", parser.format_usage().strip(), "```", "",
                 "| option | meaning |", "| --- | --- |", *_option_rows(parser), "",
                 "| command | what it does |", "| --- | --- |"]
        lines += [f"| [`{c.name}`](#cnnctc-{c.name}) | {_cell(c.help)} |" for c in COMMANDS]
        for command in COMMANDS:
            p = sub.choices[command.name]
            lines += ["", f"## `cnnctc {command.name}` {{#cnnctc-{command.name}}}", "", _cell(command.help), "",
                      "```text", p.format_usage().strip(), "```", "", "| option | meaning |", "| --- | --- |",
                      *_option_rows(p)]
            if command.examples:
                lines += ["", "Examples:", "", "```sh", *command.examples, "```"]
    return "\n".join(lines) + "\n"


def api_names():
    """{topic: [dotted names]} for every public name of the package; names of no listed topic go to "Other"."""
    import cnnctc
    topics = {title: [] for title, _ in API_TOPICS}
    where = {module: title for title, modules in API_TOPICS for module in modules}
    for name in cnnctc.__all__:
        if name.startswith("__"):
            continue
        module = cnnctc._LAZY[name]
        topics.setdefault(where.get(module, "Other"), []).append(f"cnnctc.{module}.{name}")
    return {title: names for title, names in topics.items() if names}


def python_api():
    lines = []
    for title, names in api_names().items():
        lines += [f"## {title}", ""]
        for name in names:
            lines += [f"::: {name}", ""]
    return "\n".join(lines)


def on_page_markdown(markdown, page, config, files):
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    if API_MARKER in markdown:
        markdown = markdown.replace(API_MARKER, python_api())
    return markdown
