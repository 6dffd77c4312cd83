"""The command line's layout: ``python -m basinscope`` and one module per group of commands."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from basinscope.cli import (
    _export,
    _measure,
    _parser,
    _paths,
    _study,
    _train,
    build_parser,
    main,
)

COMMANDS = [
    "run",
    "train",
    "surface",
    "sharpness",
    "hessian",
    "volume",
    "path",
    "trajectory",
    "report",
    "plot",
    "export",
]


def _python_m(*argv: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *argv], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_python_m_basinscope_is_the_cli(tmp_path):
    done = _python_m("basinscope", "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: basinscope [-h] COMMAND ...")
    lines = done.stdout.splitlines()
    listed = [line.split()[0] for line in lines if line[:4] == "    " and line[4:5] != " "]
    assert listed == COMMANDS  # every command, in help order


def test_python_m_basinscope_passes_the_exit_status_through(tmp_path):
    done = _python_m("basinscope", "train", "--out", "t", "--no-such-option", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == (
        "basinscope: error: unrecognized arguments: --no-such-option (see basinscope --help)\n"
    )
    assert not (tmp_path / "t").exists()  # refused while parsing: nothing ran


def test_python_m_basinscope_cli_still_works(tmp_path):
    done = _python_m("basinscope.cli", "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == _python_m("basinscope", "--help", cwd=tmp_path).stdout


@pytest.mark.parametrize(
    "register, commands",
    [
        (_study.register_run, ["run"]),
        (_train.register, ["train"]),
        (_measure.register, ["surface", "sharpness", "hessian", "volume"]),
        (_paths.register, ["path"]),
        (_study.register_results, ["report", "plot"]),
        (_export.register, ["export"]),
    ],
    ids=["study-run", "train", "measure", "paths", "study-results", "export"],
)
def test_each_group_adds_its_own_sub_parsers(register, commands):
    sub = argparse.ArgumentParser().add_subparsers()
    register(sub)
    assert list(sub.choices) == commands
    for name, p in sub.choices.items():  # each one is runnable: a command to call
        assert callable(p.get_default("func")), name


def test_the_parser_assembles_every_group_in_help_order():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert list(sub.choices) == COMMANDS
    assert _parser.build_parser is build_parser and _parser.main is main


def test_a_refused_command_line_is_one_sentence(capsys):
    assert main(["surface"]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err == (
        "basinscope: error: the following arguments are required: checkpoint "
        "(see basinscope surface --help)\n"
    )
