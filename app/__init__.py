"""svd-server's side of the house that never imports torch at import time: the web API
(`api`), the job queue and its workers (`jobs`), where finished videos live (`results`),
the command line (`cli`) and schema migrations (`migrations`). At the top level only the
app factory (`main`), the settings (`config`) and the pieces every role shares: the
backend one process runs (`backend`), readiness and draining (`runtime`), connection
limits (`http_guard`), logs, metrics, keys, webhooks and child processes."""
