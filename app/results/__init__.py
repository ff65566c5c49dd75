"""Result storage: where the finished videos live. `base` holds the interface every result
store keeps (keys made from job ids only, temp file then all-or-nothing commit); `files`
keeps them as files under the data directory (the embedded default), `database` as rows
beside the jobs (several machines, one PostgreSQL). Which one a process opens is decided in
app/backend.py; job rows themselves live in `app.jobs`."""
