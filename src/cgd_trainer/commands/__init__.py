"""One module per `cgd` command: `make_parser()`, `run(argv)` (returns the command's result, for scripts and tests)
and `main(argv) -> int` (the exit status).

Exit statuses, the same for every command:

- `0` (`EXIT_OK`): done;
- `2` (`EXIT_USAGE`): a usage or configuration error (a bad flag, key or value, a missing file, an optional package
  to install: `cgd_trainer.errors.USER_ERRORS`), reported in one line;
- `3` (`EXIT_INCOMPLETE`): the command ran but left work undone (e.g. `cgd generate` with failed requests, which a
  rerun retries); rerun it.

Anything else (`1`) is a bug: it comes with a traceback.
"""

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_INCOMPLETE = 3
