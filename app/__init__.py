"""svd-server's web layer, job queue and worker. Never imports torch at import time."""
