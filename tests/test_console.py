"""cxrlab's messages go through one channel, the standard logger ``cxrlab``: shown by default, silenced or captured
by the caller, never passed around as a parameter."""

import ast
import logging
from pathlib import Path

import cxrlab
from cxrlab.console import logger, quiet, set_prefix


def test_messages_reach_the_current_stdout_and_the_caller_can_silence_or_capture_them(capsys):
    log = logger("cxrlab.training.example")
    log.info("epoch 1/3 done")
    assert capsys.readouterr().out == "epoch 1/3 done\n"
    with quiet():
        log.info("hidden")
        log.warning("still shown")
    assert capsys.readouterr().out == "still shown\n"
    log.info("shown again")  # quiet() restored the level it found
    assert capsys.readouterr().out == "shown again\n"

    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logging.getLogger("cxrlab").addHandler(handler)
    try:
        log.info("to a handler of the caller's")
    finally:
        logging.getLogger("cxrlab").removeHandler(handler)
    assert seen == ["to a handler of the caller's"]


def test_a_worker_prefixes_every_line_with_its_run(capsys):
    log = logger("cxrlab.training.example")
    set_prefix("[densenet121-seed1] ")
    try:
        log.info("line one\nline two")
    finally:
        set_prefix("")
    assert capsys.readouterr().out == "[densenet121-seed1] line one\n[densenet121-seed1] line two\n"


def test_no_function_takes_a_message_callback():
    package = Path(cxrlab.__file__).parent
    found = [
        f"{path.relative_to(package)}:{node.lineno} {node.name}"
        for path in package.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and any(a.arg == "echo" for a in [*node.args.args, *node.args.kwonlyargs])
    ]
    assert found == [], f"messages go to console.logger(__name__), not an echo parameter: {found}"
