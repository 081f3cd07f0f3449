"""One line for a mistake in `--config` or its `--config.key=value` overrides.

ml_collections' config flag reports these badly: an unknown override key is an AttributeError
traceback, a value that does not parse an absl "Flags parsing error" (exit 1), an error raised
by the config file a traceback inside a flags error, and a file that does not exist nothing at
all until the config is first used. When parsing the flags fails, or the config cannot be read,
`diagnose` finds the argument at fault (by loading the file and walking each override) and
`parse` raises it as a ConfigError, which the entry point prints as `config error: ...` (exit 2).
"""

import os
import re
import sys
from collections.abc import Callable, Sequence

from absl import app, flags

from vrl import config as config_lib


def fail(kind: str, error, code: int) -> None:
    """One line `<kind>: <error>` on stderr (whitespace folded), then exit with `code`."""
    print(f"{kind}: {' '.join(str(error).split())}", file=sys.stderr, flush=True)
    sys.exit(code)


def flags_parser(kind: str = "config error") -> Callable[[list[str]], list[str]]:
    """An `app.run(flags_parser=...)`: a mistake in --config or an override is one line
    `<kind>: ...` and exit 2; other flag errors as absl reports them (exit 1)."""

    def parse_flags(argv: list[str]) -> list[str]:
        try:
            return parse(argv)
        except config_lib.ConfigError as e:
            fail(kind, e, 2)
        except Exception:  # noqa: BLE001 - absl reports its own flags' errors
            return app.parse_flags_with_usage(argv)

    return parse_flags


def parse(argv: Sequence[str], name: str = "config") -> list[str]:
    """`flags.FLAGS(argv)`, with mistakes in `--<name>` raised as a one-line ConfigError.

    Other flag errors are re-raised as they are.
    """
    try:
        rest = flags.FLAGS(list(argv))
    except Exception as error:  # noqa: BLE001 - any of them may come from the config file
        message = diagnose(argv, error, name)
        if message is None:
            raise
        raise config_lib.ConfigError(message) from None
    value = flags.FLAGS[name].value
    if value is None:
        raise config_lib.ConfigError(
            f"--{name} is required: a config file, e.g. --{name}=configs/quickstart.py"
        )
    try:
        config_lib.to_dict(value)  # a file that failed to load raises here, not while parsing
    except OSError as error:
        raise config_lib.ConfigError(diagnose(argv, error, name) or _line(error)) from None
    return rest


def diagnose(argv: Sequence[str], error: BaseException | None, name: str = "config") -> str | None:
    """What is wrong with `--<name>=FILE[:ARG]` or an override in `argv`; None if nothing is."""
    value = argument(argv, name)
    if value is None:
        return None
    path, sep, arg = value.partition(":")
    if not os.path.isfile(path):
        return f"--{name}={value}: no such config file {path!r}"
    try:
        config = config_lib.load_file(path, arg if sep else None)
    except config_lib.ConfigError as e:
        return f"--{name}={value}: {_line(e)}"
    except SyntaxError as e:
        return f"--{name}={value}: {e.filename or path} line {e.lineno}: {e.msg}"
    except Exception as e:  # noqa: BLE001 - whatever the file's get_config raised
        return f"--{name}={value}: get_config failed: {type(e).__name__}: {_line(e)}"
    for key, raw in overrides(argv, name):
        message = _check_override(config, name, key, raw, error)
        if message:
            return message
    text = _line(error) if error is not None else ""
    if re.search(rf"--(no)?{re.escape(name)}[.=\s]", text):
        return text.removeprefix("flag ")
    return None


def argument(argv: Sequence[str], name: str = "config") -> str | None:
    """The value of `--<name>=V` or `--<name> V` (the last one given), or None."""
    value = None
    for i, arg in enumerate(argv):
        if re.fullmatch(rf"--?{re.escape(name)}", arg) and i + 1 < len(argv):
            value = argv[i + 1]
        elif m := re.fullmatch(rf"--?{re.escape(name)}=(.*)", arg, re.S):
            value = m.group(1)
    return value


def overrides(argv: Sequence[str], name: str = "config") -> list[tuple[str, str | None]]:
    """(dotted key, raw value or None for a bare boolean) of each `--<name>.key=value`."""
    out = []
    for arg in argv:
        if m := re.fullmatch(rf"--?(no)?{re.escape(name)}\.([^=]+)(?:=(.*))?", arg, re.S):
            out.append((m.group(2), m.group(3)))
    return out


def _check_override(config, name: str, key: str, raw: str | None, error) -> str | None:
    node, walked = config, name
    parent, last = None, None
    for part in key.split("."):
        keys = list(node.keys()) if hasattr(node, "keys") else None
        if keys is None or part not in keys:
            if keys is None:
                return f"{walked}.{part}: unknown key; {walked} is {_kind(node)}, not a section"
            allowed = ", ".join(sorted(map(str, keys))) or "(none)"
            return f"{walked}.{part}: unknown key; allowed: {allowed}"
        parent, last, node = node, part, node[part]
        walked = f"{walked}.{part}"
    text = _line(error) if error is not None else ""
    if raw is not None and f"--{name}.{key}=" in text:  # absl could not parse the value
        expected = _kind(node)
        if hasattr(parent, "get_type"):
            try:
                expected = getattr(parent.get_type(last), "__name__", expected)
            except Exception:  # noqa: BLE001 - only for the message
                pass
        return f"{walked}: expected {expected}, got {raw!r}"
    return None


def _kind(value) -> str:
    return type(value).__name__


def _line(error: BaseException) -> str:
    """The innermost ConfigError of `error`'s chain, else `error` itself, on one line."""
    seen, cause = set(), error
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, config_lib.ConfigError):
            error = cause
            break
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return " ".join(str(error).split())
