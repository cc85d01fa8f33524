"""One module per ``skygrade`` command, loaded by :mod:`skygrade.streamer.cli` only when it is used.

Each module defines ``EXAMPLES`` (the epilog of its ``--help``), ``add_arguments(parser)``
and ``command(args, cfg) -> int`` (the exit code); the one-line help of each command is in
the registry of :mod:`skygrade.streamer.cli`, so that ``skygrade --help`` imports none of them. The
work itself is in the modules these call (:mod:`skygrade.streamer.pipelines`,
:mod:`skygrade.streamer.backfill`,
:mod:`skygrade.streamer.report`...); exit codes, the usage error and the shared options are in
:mod:`skygrade.streamer.cli_common`.
"""
