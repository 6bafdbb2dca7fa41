"""The docs cannot drift from the code: every command line and option they show exists, every
parameter they name is one of params.yaml's (and every one of those is documented), and every
relative link (there and in BENCHMARKS.md) reaches its file and heading. Each failure names
the doc, the line and the item."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import re
import runpy
import sys
import typing
from functools import cache
from pathlib import Path
from unittest import mock

import pytest
import yaml

from segpipe.__main__ import COMMANDS
from segpipe.config import Params

from .helpers import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PARAMETERS_PAGE = REPO / "docs" / "parameters.md"
SECTIONS = ("seed", "data", "split", "model", "train", "evaluate", "plot")


def name(doc: Path) -> str:
    return doc.relative_to(REPO).as_posix()


def prose_and_code(doc: Path) -> tuple[str, list[tuple[int, str]]]:
    """The doc with its fenced code blocks blanked (line numbers kept), and the code blocks'
    lines as (line number, command), a line ending in ``\\`` joined with the next."""
    prose, code, fenced, pending = [], [], False, None
    for number, line in enumerate(doc.read_text().splitlines(), 1):
        if line.strip().startswith("```"):
            fenced = not fenced
            prose.append("")
            continue
        prose.append("" if fenced else line)
        if not fenced:
            continue
        start, text = pending or (number, "")
        text += " " + line.strip()
        pending = (start, text[:-1]) if text.endswith("\\") else None
        if pending is None:
            code.append((start, text.strip()))
    return "\n".join(prose), code


def code_snippets(doc: Path) -> list[tuple[int, str]]:
    """(line, text) of every code block line and every inline code span of ``doc``."""
    prose, snippets = prose_and_code(doc)
    for span in re.finditer(r"`([^`]+)`", prose):
        snippets.append((prose.count("\n", 0, span.start()) + 1, span[1].replace("\n", " ")))
    return snippets


def commands_in(text: str) -> list[tuple[str, list[str]]]:
    """("segpipe predict" or "stages/train.py", its --options) for each command in ``text``,
    each running to the next ``&&``, ``;``, ``|``, shell comment or the end of the text. A
    ``segpipe`` command starts the text or follows ``&&``, ``;``, ``|``, ``(`` or ``-m``: in
    an error message quoted as code, "segpipe checkpoint" is no command line."""
    found = []
    pattern = r"(?:(?:^|[;&|(]|-m)\s*(segpipe [a-z][\w-]*)|(?:^|\s)(stages/\w+\.py))"
    for command in re.finditer(pattern, text):
        rest = re.split(r"&&|;|\||\s#", text[command.end() :])[0]
        found.append((command[1] or command[2], re.findall(r"(?<![\w-])--[a-z][\w-]*", rest)))
    return found


class _Built(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def _stop_at_parse(parser: argparse.ArgumentParser, *args, **kwargs):
    raise _Built(parser)


@cache
def options_of(command: str) -> frozenset[str] | None:
    """The option strings of ``segpipe <name>`` or of a stage script's parser, as built by the
    code itself (a script runs until it parses its arguments); None: no such command."""
    if command.startswith("segpipe "):
        sub = command.split()[1]
        if sub not in COMMANDS:
            return None
        module = importlib.import_module(
            "segpipe.check" if sub == "check" else f"segpipe.commands.{sub}"
        )
        return frozenset(module.build_parser(command)._option_string_actions)
    script = REPO / command
    if not script.is_file():
        return None
    saved = sys.argv
    try:
        sys.argv = [str(script)]
        with mock.patch.object(argparse.ArgumentParser, "parse_args", _stop_at_parse):
            runpy.run_path(str(script), run_name="__main__")
    except _Built as built:
        return frozenset(built.parser._option_string_actions)
    finally:
        sys.argv = saved
    raise AssertionError(f"{command} parsed no arguments")


def test_every_command_and_option_in_the_docs_exists():
    wrong = []
    for doc in DOCS:
        for line, text in code_snippets(doc):
            for command, options in commands_in(text):
                valid = options_of(command)
                if valid is None:
                    wrong.append(f"{name(doc)}:{line}: `{command}`: no such command")
                    continue
                wrong += [
                    f"{name(doc)}:{line}: `{command} {option}`: no such option "
                    f"(valid: {', '.join(sorted(valid))})"
                    for option in options
                    if option not in valid
                ]
    assert not wrong, "commands or options the code does not have:\n" + "\n".join(wrong)


def test_the_command_reader_finds_commands_and_options():
    text = "segpipe predict --model m.pt [--overlay] && python stages/train.py --cache c # --x"
    assert commands_in("error: not a segpipe checkpoint; upgrade segpipe to use it") == []
    assert commands_in("python -m segpipe check --params p") == [("segpipe check", ["--params"])]
    assert commands_in(text) == [
        ("segpipe predict", ["--model", "--overlay"]),
        ("stages/train.py", ["--cache"]),
    ]
    assert options_of("segpipe bench") is None
    assert "--resume" in options_of("stages/train.py")


def leaf_keys(tree: dict, prefix: str = "") -> set[str]:
    """``section.key`` for every leaf of a nested mapping."""
    keys = set()
    for key, value in tree.items():
        path = f"{prefix}{key}"
        keys |= leaf_keys(value, f"{path}.") if isinstance(value, dict) else {path}
    return keys


def config_keys(cls: type = Params, prefix: str = "") -> set[str]:
    """``section.key`` for every field of the config dataclasses (a field whose type is itself
    a config dataclass is a section, as in params.yaml)."""
    keys = set()
    for field, hint in typing.get_type_hints(cls).items():
        path = f"{prefix}{field}"
        nested = dataclasses.is_dataclass(hint) and isinstance(hint, type)
        keys |= config_keys(hint, f"{path}.") if nested else {path}
    return keys


def table_parameters(doc: Path) -> list[tuple[int, str]]:
    """(line, key) for every key in the first column of a ``| key | default | ... |`` table;
    `` `data.synthetic.min_size`, `max_size` `` names two keys of one section."""
    found, in_table = [], False
    for number, line in enumerate(doc.read_text().splitlines(), 1):
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.lstrip().startswith("|"):
            in_table = False
        elif cells[:2] == ["key", "default"]:
            in_table = True
        elif in_table and not set(cells[0]) <= set("-: "):
            keys = re.findall(r"`([^`]+)`", cells[0])
            section = keys[0].rpartition(".")[0] if keys else ""
            found += [
                (number, key if "." in key or not section else f"{section}.{key}") for key in keys
            ]
    return found


def test_the_parameter_tables_match_params_yaml_and_the_config():
    in_yaml = leaf_keys(yaml.safe_load((REPO / "params.yaml").read_text()))
    in_config = config_keys()
    documented = set()
    wrong = []
    for doc in DOCS:
        for line, key in table_parameters(doc):
            documented.add(key)
            if key not in in_config:
                wrong.append(f"{name(doc)}:{line}: `{key}` is no parameter of the config")
    page = name(PARAMETERS_PAGE)
    wrong += [f"{page}: `{key}` (params.yaml) is not documented" for key in in_yaml - documented]
    wrong += [f"params.yaml: `{key}` is no field of the config" for key in in_yaml - in_config]
    assert not wrong, "parameter tables out of step:\n" + "\n".join(wrong)


def parameter_mentions(doc: Path) -> list[tuple[int, str]]:
    """(line, key) for each ``-S key=...`` and each inline ``section.key`` the doc shows."""
    found = []
    for line, text in code_snippets(doc):
        found += [(line, key) for key in re.findall(r"-S\s+'?([\w.]+)=", text)]
        if re.fullmatch(rf"(?:{'|'.join(SECTIONS)})\.[a-z_.]*[a-z_*]", text):
            if not re.search(r"\.(py|json|csv|md|yaml|png|pt|pth|txt|safetensors|onnx)$", text):
                found.append((line, text))
    return found


def test_every_parameter_the_docs_name_exists():
    in_config = config_keys()
    known = in_config | {key.rpartition(".")[0] for key in in_config}  # sections: data.coco
    wrong = []
    for doc in DOCS:
        for line, key in parameter_mentions(doc):
            stem = key.removesuffix(".*")
            if stem not in known and not any(k.startswith(f"{stem}.") for k in in_config):
                wrong.append(f"{name(doc)}:{line}: `{key}` is no parameter")
    assert not wrong, "parameters the config does not have:\n" + "\n".join(wrong)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@cache
def anchors(doc: Path) -> frozenset[str]:
    prose, _ = prose_and_code(doc)
    return frozenset(slug(m[1]) for m in re.finditer(r"^#+\s+(.*)$", prose, re.MULTILINE))


def test_every_relative_link_reaches_its_file_and_heading():
    wrong = []
    for doc in [*DOCS, REPO / "BENCHMARKS.md"]:
        prose, _ = prose_and_code(doc)
        for link in re.finditer(r"\]\(([^)\s]+)\)", prose):
            target = link[1]
            if re.match(r"[a-z]+:", target):
                continue
            line = prose.count("\n", 0, link.start()) + 1
            path, _, anchor = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            if not file.exists():
                wrong.append(f"{name(doc)}:{line}: ({target}): no file {path}")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                wrong.append(f"{name(doc)}:{line}: ({target}): no heading #{anchor} there")
    assert not wrong, "broken links:\n" + "\n".join(wrong)


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Masks: one rule per dataset", "masks-one-rule-per-dataset"),
        ("Several GPUs or processes: `torchrun`", "several-gpus-or-processes-torchrun"),
        ("Parameters (`params.yaml`)", "parameters-paramsyaml"),
    ],
)
def test_slug_is_githubs(heading, anchor):
    assert slug(heading) == anchor
