"""`python -m county.store.migrations ARGS`: the alembic command line on these migrations (for writing
new ones): `-x url=sqlite:////tmp/scratch.db` picks the database (default: a scratch file in the
current directory, created and upgraded first)."""

from __future__ import annotations

import sys

from alembic.config import CommandLine

from county.store.migrations import HERE


def main(argv: list[str]) -> None:
    cli = CommandLine(prog="python -m county.store.migrations")
    options = cli.parser.parse_args(argv)
    if not hasattr(options, "cmd"):
        cli.parser.error("too few arguments")
    from county.store.migrations import config

    cfg = config()
    cfg.cmd_opts = options
    cfg.set_main_option("script_location", str(HERE))
    cli.run_cmd(cfg, options)


if __name__ == "__main__":
    main(sys.argv[1:])
