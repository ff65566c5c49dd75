"""The `svd-server` command line. `main` builds the parser from one module per command:
`serve` (the API and its workers), `worker` (workers only, one process per GPU), `db`
(schema migrations), `generate` (a video per image, here or through a server with `remote`;
odd sizes fitted by `fit`) and `doctor` (is this machine ready?). `console` holds what the
commands show and write: the progress bar, errors with exit codes, atomic output files.
Every module here imports downward only (app.config, app.main, ...), never another
command's."""
