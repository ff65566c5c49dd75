"""Durable generation jobs: the Job and its states (`model`), the store interface with its
SQL implementation and in-memory twin (`store`, `sql`, `memory`, `tables`, `migrate`), what
the API does with jobs (`service`, `params`), and the worker that runs them (`worker`,
`held`, `generator_call`, `finisher`, `outcomes`, `failures`), plus housekeeping
(`sweeper`) and cross-process wake-ups (`notify`). No HTTP here."""
