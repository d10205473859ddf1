"""Where the options' values come from: the command line, then PREFECTFLOW_<OPTION> environment
variables, then a TOML file (--config), then the defaults. Every value, whatever its source, is read
by the one argparse table of etl/cli.py, so its type and rules are written once; an option repeated
at a higher level replaces the lower level's list."""
import argparse
import difflib
import os
import re
import tomllib
from typing import Callable, Dict, List, Mapping, Optional

ENV_PREFIX = "PREFECTFLOW_"
MAX_FILE = 2**20  # bytes: a config file is a few lines
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
# Keys a config file may not hold, and why.
NOT_IN_FILE = {
    "config": "a config file cannot name another",
    "header": 'headers are not read from a config file, which is no place for secrets: use '
              'header-env = ["NAME=ENVVAR"] and keep the value in that environment variable',
}


class Refused(Exception):
    """A value the parser refused, or a key or file it cannot read: the message says which."""


class Parser(argparse.ArgumentParser):
    """argparse, whose errors are raised as Refused while it reads a value from the environment or a
    file (so that the message can say where the value came from), and are one line whatever they quote."""

    reading = False
    report = None  # called with an error's one line instead of argparse's usage and line; exits 2

    def error(self, message: str):
        message = _printable(message)
        if self.reading:
            raise Refused(message)
        if self.report:
            self.report(message)
            self.exit(2)
        super().error(message)


def env_name(key: str) -> str:
    """The environment variable of an option: PREFECTFLOW_RETRY_DELAY for retry-delay."""
    return ENV_PREFIX + key.upper().replace("-", "_")


def options(parser: argparse.ArgumentParser) -> Dict[str, argparse.Action]:
    """The parser's options by key: each long option without its dashes."""
    return {option[2:]: action for action in parser._actions if not isinstance(action, argparse._HelpAction)
            for option in action.option_strings if option.startswith("--")}


def gather(parser: Parser, argv: Optional[List[str]], environ: Mapping[str, str]) -> argparse.Namespace:
    """The options' values from every source, each read by parser; Refused names the file or the
    variable and the key of a value that cannot be used. The command line's errors are argparse's."""
    table = options(parser)
    defaults = vars(parser.parse_args([]))
    for action in table.values():
        action.default = argparse.SUPPRESS
    from_line = vars(parser.parse_args(argv))  # only what the command line gives
    from_env = {}
    for key, action in table.items():
        if env_name(key) in environ:
            from_env.update(_read(parser, key, action, _env_value(action, environ[env_name(key)], env_name(key)),
                                  f"environment variable {env_name(key)}", defaults))
    path = from_line.get("config", from_env.get("config"))
    from_file = {}
    for key, value in (read_file(path) if path else {}).items():
        where = f"--config {path}"
        if key not in table:
            raise Refused(f"{where}: unknown key {key!r}{_hint(key, table, str)}")
        if key in NOT_IN_FILE:
            raise Refused(f"{where}: {key}: {NOT_IN_FILE[key]}")
        from_file.update(_read(parser, key, table[key], _file_value(table[key], value, f"{where}: {key}"),
                               f"{where}: {key}", defaults))
    merged = argparse.Namespace(**{**defaults, **from_file, **from_env, **from_line})
    _check_env_names(environ, table, merged)
    return merged


def read_file(path: str) -> dict:
    """The keys and values of a TOML file."""
    try:
        with open(path, "rb") as config:
            data = config.read(MAX_FILE + 1)
    except OSError as exc:
        raise Refused(f"cannot read --config {path}: {exc.strerror}") from None
    if len(data) > MAX_FILE:
        raise Refused(f"--config {path}: larger than {MAX_FILE // 2**20} MiB; is it the right file?")
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise Refused(f"--config {path}: not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise Refused(f"--config {path}: not valid TOML: {exc}") from None


def _read(parser: Parser, key: str, action: argparse.Action, value: object, where: str,
          defaults: dict) -> dict:
    """What the parser makes of one option's value (a flag's true or false, or the words a command
    line would give it), named by where in the errors."""
    if value is False:  # a flag set false here: as if it were not given, whatever a lower level says
        return {action.dest: defaults[action.dest]}
    words = [f"--{key}"] if value is True else [f"--{key}={word}" for word in value]
    parser.reading = True
    try:
        return vars(parser.parse_args(words))
    except Refused as exc:
        raise Refused(f"{where}: {str(exc).split(': ', 1)[-1]}") from None
    finally:
        parser.reading = False


def _file_value(action: argparse.Action, value: object, where: str) -> object:
    """A TOML value as a flag's bool or a list of command-line words; Refused if it is the wrong type."""
    if _is_flag(action):
        if not isinstance(value, bool):
            raise Refused(f"{where}: must be true or false")
        return value
    if _repeatable(action):
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise Refused(f'{where}: must be a list of strings, such as ["..."]')
        return value
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise Refused(f"{where}: must be a string or a number, not {_toml_type(value)}")
    return [str(value)]


def _env_value(action: argparse.Action, text: str, where: str) -> object:
    """An environment variable's text as a flag's bool or a list of command-line words: a repeatable
    option takes one value, or a TOML list of strings (["a", "b"])."""
    if _is_flag(action):
        if text.strip().lower() not in _TRUE + _FALSE:
            raise Refused(f"environment variable {where}: must be true or false (or 1 or 0, yes or no, on or off)")
        return text.strip().lower() in _TRUE
    if _repeatable(action) and text.lstrip().startswith("["):
        try:
            value = tomllib.loads(f"value = {text}")["value"]
        except tomllib.TOMLDecodeError as exc:
            raise Refused(f"environment variable {where}: not a TOML list of strings: {exc}") from None
        if not all(isinstance(item, str) for item in value):
            raise Refused(f'environment variable {where}: must be a list of strings, such as ["..."]')
        return value
    return [text]


def _check_env_names(environ: Mapping[str, str], table: Dict[str, argparse.Action],
                     args: argparse.Namespace) -> None:
    """A PREFECTFLOW_ variable that names no option is a typo, unless --header-env reads it."""
    read = {text.partition("=")[2].strip() for text in getattr(args, "header_env", None) or []}
    known = {env_name(key) for key in table}
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and name not in known and name not in read:
            key = name[len(ENV_PREFIX):].lower().replace("_", "-")
            raise Refused(f"environment variable {name} names no option{_hint(key, table, env_name)}")


def _hint(key: str, table: Dict[str, argparse.Action], name: Callable[[str], str]) -> str:
    """Which option a misspelt key or variable may mean, as name writes it."""
    close = difflib.get_close_matches(key.replace("_", "-"), list(table), n=1)
    return f"; did you mean {name(close[0])}?" if close else f"; {name('retry-delay')} is how --retry-delay is written"


def _is_flag(action: argparse.Action) -> bool:
    return action.nargs == 0


def _repeatable(action: argparse.Action) -> bool:
    return isinstance(action, argparse._AppendAction)


def _toml_type(value: object) -> str:
    if isinstance(value, bool):
        return "true or false"
    return {list: "a list", dict: "a table"}.get(type(value), type(value).__name__)


def _printable(text: str) -> str:
    """text on one line: control characters (a line break in a value) are shown escaped."""
    return re.sub(r"[\x00-\x1f\x7f]", lambda found: repr(found.group())[1:-1], text)
