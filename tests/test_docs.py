"""The README and the command's --help agree: every command and option is documented, and the
README's commands only use options that exist."""
import argparse
import re

import pytest

from conftest import ROOT
from cnnctc.cli import build_parser

README = (ROOT / "README.md").read_text(encoding="utf-8")


def subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


COMMON = {"--help", "--manifest", "--quiet"}  # every command's, documented once


def long_options(parser):
    return {opt for action in parser._actions for opt in action.option_strings
            if opt.startswith("--") and opt not in COMMON}


def synopsis(name):
    """The lines of the README's *Command line* block that describe ``cnnctc name``."""
    section = README.split("## Command line", 1)[1]
    block = section.split("```", 2)[1]
    lines, inside = [], False
    for line in block.splitlines():
        if line.startswith("cnnctc "):
            inside = line.split()[1] == name
        if inside:
            lines.append(line)
    return "\n".join(lines)


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_every_command_and_option_is_in_the_readme_synopsis(name):
    parser = subcommands()[name]
    text = synopsis(name)
    assert text, f"`cnnctc {name}` has no synopsis in the README's Command line section"
    missing = sorted(opt for opt in long_options(parser) if not re.search(re.escape(opt) + r"\b", text))
    assert not missing, f"cnnctc {name}: options missing from its README synopsis: {missing}"
    for action in parser._actions:
        if action.option_strings and action.help is None:
            pytest.fail(f"cnnctc {name} {action.option_strings[0]} has no help text")


def test_readme_commands_use_only_options_that_exist():
    commands = subcommands()
    wrong = []
    for line in README.splitlines():
        for match in re.finditer(r"\bcnnctc ([a-z][a-z-]+)((?: +[^|&;`#]*)?)", line):
            name, rest = match.group(1), match.group(2)
            if name not in commands:
                continue
            known = long_options(commands[name]) | COMMON
            wrong += [f"{name} {opt}" for opt in re.findall(r"(--[a-z][a-z0-9-]*)", rest) if opt not in known]
    assert not wrong, f"README uses options the commands do not have: {sorted(set(wrong))}"
