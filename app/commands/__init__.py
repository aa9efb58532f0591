"""The `ppchat` subcommands, one module per area; each has `register(subparsers)`.

Handlers import their heavy modules (mlx, textual, sounddevice) inside the function, so
that building the parser, and `ppchat --help`, stays instant.
"""
