"""Library errors name parameters, never command-line flags: the CLI maps them to flags."""
import ast
import re
from pathlib import Path

import pytest

from headbench.cli import FLAGS, build_parser, parser_flags, with_flag
from headbench.errors import HeadbenchError

SOURCE = Path(__file__).resolve().parent.parent / "src" / "headbench"


def cli_flags() -> set[str]:
    parser = build_parser()
    flags = set(FLAGS.values())
    for sub in parser.subcommands.values():
        flags.update(parser_flags(sub).values())
    return flags


def error_texts(tree: ast.AST):
    """String pieces of every `raise` and of every function whose name says it builds an error
    message."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) or (isinstance(node, ast.FunctionDef)
                                           and "error" in node.name):
            for leaf in ast.walk(node):
                if isinstance(leaf, ast.Constant) and isinstance(leaf.value, str):
                    yield leaf.lineno, leaf.value


def test_no_library_error_message_spells_a_flag():
    flags = cli_flags()
    found = []
    for path in sorted(SOURCE.rglob("*.py")):
        if path.name == "cli.py":  # the CLI's own messages may name its flags
            continue
        for line, text in error_texts(ast.parse(path.read_text())):
            named = [f for f in re.findall(r"--[a-z][a-z0-9-]*", text) if f in flags]
            if named:
                found.append(f"{path.relative_to(SOURCE)}:{line}: {', '.join(named)}")
    assert not found, "say the parameter (param=/hints=) instead:\n" + "\n".join(found)


def test_the_cli_shows_the_flag_of_a_parameter_the_message_advises_on():
    error = HeadbenchError("diverged: lower finetune_lr", hints=["finetune_lr"])
    assert with_flag(error) == "diverged: lower --finetune-lr"


def test_a_hint_only_replaces_the_whole_parameter_name():
    error = HeadbenchError("input_size_x and input_size differ", hints=["input_size"])
    assert with_flag(error) == "input_size_x and --input-size differ"


@pytest.mark.parametrize("argv, flag", [(["export", "nowhere"], None),
                                        (["compare", "nowhere", "--epochs", "0"], "--epochs")])
def test_cli_errors_name_the_flag_the_user_typed(argv, flag, capsys):
    from headbench.cli import main
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    if flag:
        assert flag in err
