"""``KEY=VALUE`` settings, shared by every command (segment, video, train, evaluate).

Arguments are an omegaconf dot-list (``EPOCHS=20 LR=1e-3``); each command has a
table of :class:`Key` (default and help line) that ``--help`` prints. The same
table checks keyword arguments given from Python (``fsp.train(epochs=2)``), so
a command and its API accept exactly the same settings.
"""

from __future__ import annotations

import argparse
import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .errors import EXIT_STATUSES, ConfigError

__all__ = [
    "Key",
    "parse_dotlist",
    "merge_options",
    "help_text",
    "is_int",
    "is_number",
    "FlagParser",
    "parse_keys_and_flags",
]


@dataclass(frozen=True)
class Key:
    """One setting: its default and the line ``--help`` prints."""

    default: object
    help: str


def is_int(v) -> bool:
    """An int that is not a bool."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v) -> bool:
    """An int or float that is not a bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _unknown(name: str, keys: Mapping[str, Key]) -> ConfigError:
    close = difflib.get_close_matches(name.upper(), keys, n=1)
    hint = f"; did you mean {close[0]}?" if close else "; see --help"
    return ConfigError(f"unknown key {name!r}{hint}")


def parse_dotlist(
    argv: Sequence[str],
    keys: Mapping[str, Key],
    string_keys: Sequence[str],
    usage: str,
    verbatim: Sequence[str] = (),
) -> dict:
    """Parse ``KEY=VALUE`` arguments into ``{key: value}`` over the defaults.

    Keys in ``string_keys`` (paths, names) keep their text as typed: YAML
    would read ``~`` as null or an all-digit name as a number. Keys in
    ``verbatim`` (values with commas, such as colours) are taken as text
    before omegaconf, whose dot-list grammar reads commas as something else.

    Raises:
        ConfigError: Not KEY=VALUE, unparsable, or an unknown key (with a suggestion).
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    for arg in argv:
        if "=" not in arg:
            raise ConfigError(f"argument {arg!r} is not KEY=VALUE; {usage}")
    raw = dict(arg.split("=", 1) for arg in argv)
    listed = [a for a in argv if a.split("=", 1)[0] not in verbatim]
    try:
        given = OmegaConf.to_container(OmegaConf.from_dotlist(listed))
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot parse arguments: {str(e).splitlines()[0]}") from None
    given.update({name: raw[name] for name in verbatim if name in raw})
    cfg = {name: key.default for name, key in keys.items()}
    for name, value in given.items():
        if name not in keys:
            raise _unknown(name, keys)
        if name in string_keys and name in raw:
            text = raw[name].strip()
            value = None if text in ("", "null", "None") else text
        cfg[name] = value
    return cfg


def merge_options(options: Mapping[str, object], keys: Mapping[str, Key]) -> dict:
    """Keyword arguments from Python (any case: ``epochs=2`` or ``EPOCHS=2``) over the defaults.

    Paths may be ``pathlib.Path``; they become strings.

    Raises:
        ConfigError: An unknown key (with a suggestion).
    """
    import os

    cfg = {name: key.default for name, key in keys.items()}
    for name, value in options.items():
        upper = name.upper()
        if upper not in keys:
            raise _unknown(name, keys)
        cfg[upper] = os.fspath(value) if isinstance(value, os.PathLike) else value
    return cfg


def help_text(
    usage: str, summary: str, keys: Mapping[str, Key], example: str, statuses: Mapping[int, str] | None = None
) -> str:
    """The ``--help`` text: usage, keys with defaults and meanings, exit statuses, an example."""
    lines = [usage, "", summary, "", "keys (default, meaning):"]
    for name, key in keys.items():
        d = key.default
        default = "null" if d is None else str(d).lower() if isinstance(d, bool) else d
        lines.append(f"  {name}={default}")
        lines.append(f"      {key.help}")
    lines += ["", "exit status:"]
    lines += [f"  {code:<3} {text}" for code, text in (statuses or EXIT_STATUSES).items()]
    lines += ["", f"example: {example}"]
    return "\n".join(lines)


_KEY_ARG = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


# The older positional / --flag forms of convert and export, beside KEY=VALUE.
class FlagParser(argparse.ArgumentParser):
    """argparse for a command's older flag form, whose mistakes are one-line :class:`ConfigError`\\ s."""

    def __init__(self, usage: str, **kwargs):
        super().__init__(add_help=False, **kwargs)
        self._usage_line = usage

    def error(self, message: str):  # argparse would print its usage and exit
        raise ConfigError(f"{message}; {self._usage_line}")


def parse_keys_and_flags(
    argv: Sequence[str],
    keys: Mapping[str, Key],
    string_keys: Sequence[str],
    usage: str,
    flags: argparse.ArgumentParser,
    flag_keys: Mapping[str, str],
) -> dict:
    """Parse ``KEY=VALUE`` arguments and a command's older positional / ``--flag`` form, in any mix.

    Args:
        argv: The arguments.
        keys, string_keys, usage: As for :func:`~face_segmentation_pytorch.keys.parse_dotlist`.
        flags: The older form's parser; each of its settings defaults to ``None`` (not given).
        flag_keys: Its destination name -> the key it sets.

    Returns:
        ``{key: value}`` over the defaults.

    Raises:
        ConfigError: A malformed or unknown argument, or one setting given both ways.
    """
    keyed = [a for a in argv if _KEY_ARG.match(a)]
    cfg = parse_dotlist(keyed, keys, string_keys, usage)
    rest = [a for a in argv if not _KEY_ARG.match(a)]
    if not rest:
        return cfg
    given = {a.split("=", 1)[0] for a in keyed}
    parsed = vars(flags.parse_args(rest))
    for dest, key in flag_keys.items():
        if parsed.get(dest) is None:
            continue
        if key in given:
            raise ConfigError(f"{key} is given twice (as {key}= and in the older form); give it once")
        cfg[key] = parsed[dest]
    return cfg
