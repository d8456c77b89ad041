"""Command-line habits from other tools, translated before typer parses the arguments.

`lmtune train --config cfg.yaml --learning_rate 1e-4` is what a TRL or Axolotl user types:
`--config FILE` becomes the config argument, and `--KEY VALUE` / `--KEY=VALUE` for a config
alias (config_aliases.py) or a dotted key becomes the override `KEY=VALUE`. Anything else is
left for typer, which answers an unknown option as usual.
"""

from __future__ import annotations

#: Commands whose arguments are a config and key=value overrides (`config show` too).
CONFIG_COMMANDS = ("prepare", "train", "tune", "pipeline")


def _override_key(option: str) -> str | None:
    """The override key an option spells (`--learning_rate`, `--learning-rate`, `--train.lr`)."""
    from lmtune.config_aliases import KEY_ALIASES

    name = option[2:]
    if "." in name:
        return name
    name = name.replace("-", "_")
    return name if name in KEY_ALIASES else None


def rewrite_argv(argv: list[str]) -> list[str]:
    """argv with `--config FILE` and `--KEY VALUE` config flags turned into lmtune's form."""
    words = [a for a in argv if not a.startswith("-")]
    if not words:
        return argv
    command = words[0]
    at = argv.index(command) + 1
    if command == "config" and len(words) > 1 and words[1] == "show":
        at = argv.index("show", at) + 1
    elif command not in CONFIG_COMMANDS:
        return argv
    head, rest = argv[:at], argv[at:]
    config: list[str] = []
    out: list[str] = []
    i = 0
    while i < len(rest):
        arg = rest[i]
        name, eq, inline = arg.partition("=")
        key = _override_key(name) if arg.startswith("--") and len(arg) > 2 else None
        if name == "--config" or key is not None:
            if eq:
                value, i = inline, i + 1
            elif i + 1 < len(rest) and not rest[i + 1].startswith("--"):
                value, i = rest[i + 1], i + 2
            else:  # no value: leave it to typer's error
                out.append(arg)
                i += 1
                continue
            if name == "--config":
                config = [value]
            else:
                out.append(f"{key}={value}")
            continue
        out.append(arg)
        i += 1
    return head + config + out


def flags_as_flags() -> None:
    """Help shows `--resume`, not `--resume <bool>`: on/off options take no value.

    typer >= 0.2x prints a type for every option; for flags that reads as if a value were due.
    """
    try:
        from typer.core import TyperOption
    except ImportError:  # another typer layout: keep its rendering
        return
    original = getattr(TyperOption, "display_type_rich", None)
    if original is None or getattr(original, "_lmtune", False):
        return

    def display_type_rich(self, ctx):  # noqa: ANN001, ANN202 - typer's signature
        return None if getattr(self, "is_flag", False) else original(self, ctx)

    display_type_rich._lmtune = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]
