"""The command line of `python -m grpo.trainer` and examples/countdown.py, built from GRPOConfig.

    python -m grpo.trainer --config recipes/countdown-cpu.yaml --learning_rate 2e-5

One option per GRPOConfig field, its help the docstring under the field, grouped by the
`# --- group ---` comments in the class (read from its source). Values are read as YAML reads them
(`1e-6`, `[format, countdown]`, `null`) and typed by GRPOConfig.from_dict, as a recipe's are.
Why argparse and not tyro or HfArgumentParser: docs/architecture.md, "The command line".
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import inspect
import os
import re
import sys
import textwrap
import typing
from pathlib import Path
from typing import NamedTuple

import yaml

from grpo.config import GRPOConfig


class CommandLine(NamedTuple):
    config: GRPOConfig
    verbose: bool  # --verbose: keep vLLM's INFO logging


def parse_config(argv: list[str] | None = None, prog: str | None = None) -> GRPOConfig:
    """The entry points' config. Bad input exits with status 2 and one line `error: ...` on
    stderr (no traceback, no usage); `--help` prints the options and exits with 0. Unless
    --verbose, vLLM logs only warnings and errors (set before vLLM is imported; a
    VLLM_LOGGING_LEVEL of the user's own wins)."""
    try:
        args = read_args(argv, prog)
    except ValueError as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        raise SystemExit(2) from None
    if not args.verbose:
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    return args.config


def read_args(argv: list[str] | None = None, prog: str | None = None) -> CommandLine:
    """`[--config recipe.yaml] [--key value ...]` (default: sys.argv[1:]): the recipe's values,
    then the options over them. Bad input raises ValueError, argparse's own complaints too."""
    namespace, extra = build_parser(prog).parse_known_args(argv)
    if extra:
        raise ValueError(_unexpected(extra[0]))
    given = vars(namespace)  # only the options given (argument_default=SUPPRESS)
    verbose = given.pop("verbose", False)
    given.pop("local_rank", None)
    path = given.pop("config", None)
    recipe = _recipe(path) if path else {}
    names = {f.name for f in dataclasses.fields(GRPOConfig)}
    if set(recipe) - names:  # from_dict's message, naming the file
        try:
            GRPOConfig.from_dict({k: v for k, v in recipe.items() if k not in names})
        except ValueError as e:
            raise ValueError(f"--config {path}: {e}") from None
    hints = typing.get_type_hints(GRPOConfig)
    options = {key: _read(words, hints[key]) for key, words in given.items()}
    return CommandLine(GRPOConfig.from_dict({**recipe, **options}), verbose)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's complaints (an option without a value...)
        raise ValueError(message)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog, usage="%(prog)s [--config recipe.yaml] [--key value ...]",
        allow_abbrev=False, argument_default=argparse.SUPPRESS,  # only what was given is read
        description="GRPO training. Options override the recipe's values. A list takes several "
                    "words or YAML ([a, b]); none or null is None.")
    parser.add_argument("--config", metavar="recipe.yaml", help="YAML mapping of the options below")
    parser.add_argument("--verbose", action="store_true",
                        help="keep vLLM's INFO logging (default: its warnings and errors only)")
    # deepspeed's launcher appends --local_rank=N; the rank is read from the environment
    parser.add_argument("--local_rank", help=argparse.SUPPRESS)
    docs, hints, groups = field_help(GRPOConfig), typing.get_type_hints(GRPOConfig), {}
    for f in dataclasses.fields(GRPOConfig):
        title, doc = docs[f.name]
        if title not in groups:
            groups[title] = parser.add_argument_group(title)
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        text = f"{doc} (default: {default})".replace("%", "%%")  # argparse %-formats help
        groups[title].add_argument(f"--{f.name}", help=text, **_shape(hints[f.name]))
    return parser


def field_help(cls: type) -> dict[str, tuple[str, str]]:
    """{field: (group, docstring)} from the source of a dataclass: the string literal under each
    field, and the last `# --- group ---` comment above it. A field without either is an error."""
    source = textwrap.dedent(inspect.getsource(cls))
    headers = [(number, m[1]) for number, line in enumerate(source.splitlines(), 1)
               if (m := re.fullmatch(r"\s*# --- (.+) ---\s*", line))]
    body = ast.parse(source).body[0].body
    found = {}
    for node, after in zip(body, body[1:] + [None]):
        if not isinstance(node, ast.AnnAssign):
            continue
        group = next((title for number, title in reversed(headers) if number < node.lineno), None)
        doc = after.value.value if isinstance(after, ast.Expr) and isinstance(
            after.value, ast.Constant) else None
        if group is None or not isinstance(doc, str):
            raise TypeError(f"{cls.__name__}.{node.target.id} needs a '# --- group ---' comment "
                            f"above it and a docstring under it (its --help)")
        found[node.target.id] = (group, doc)
    return found


def _base(hint):
    """X of `X | None`; any other hint as it is."""
    args = typing.get_args(hint)
    return next(t for t in args if t is not type(None)) if type(None) in args else hint


def _shape(hint) -> dict:
    """How many words an option takes and how --help names them."""
    base = _base(hint)
    if base is bool:
        return dict(nargs="?", const="true", metavar="BOOL")  # --bf16 means --bf16 true
    if base is list:
        return dict(nargs="+", metavar="ITEM")
    if typing.get_origin(base) is typing.Literal:
        return dict(metavar="{" + ",".join(map(str, typing.get_args(base))) + "}")
    return dict(metavar=base.__name__.upper())


def _read(words: str | list[str], hint):
    """An option's words as YAML reads them, except a str field's word, taken as written; a list
    field's words are its items unless there is one, which may be the whole list (or none)."""
    if isinstance(words, str):
        return words if _base(hint) is str else _yaml(words)
    items = [_yaml(word) for word in words]
    one = items[0]
    if len(items) == 1 and (one is None or isinstance(one, list) or str(one).lower() == "none"):
        return one
    return items


def _yaml(word: str):
    try:
        return yaml.safe_load(word)
    except yaml.YAMLError:
        return word  # from_dict takes it for a str field and names it for any other


def _recipe(path: str) -> dict:
    try:
        values = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise ValueError(f"--config {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ValueError(f"--config {path}: malformed YAML{where}: "
                         f"{getattr(e, 'problem', None) or e}") from None
    if not isinstance(values, dict | None):
        raise ValueError(f"--config {path}: expected a mapping of config keys, got "
                         f"{type(values).__name__}")
    return values or {}


def _unexpected(arg: str) -> str:
    if not arg.startswith("-"):
        return f"unexpected argument {arg!r} (options are --key value)"
    option = arg.split("=", 1)[0]
    known = ["--config", "--verbose", *(f"--{f.name}" for f in dataclasses.fields(GRPOConfig))]
    close = difflib.get_close_matches(option, known, n=1)
    return f"unknown option {option}" + (f" (did you mean {close[0]}?)" if close else "")
