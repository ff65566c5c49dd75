"""The HTTP API: routers that parse, authenticate and raise ApiError (`generation`, `ops`,
`playground`, `events`), the form and its limits (`forms`, `limits`), the error bodies
(`errors`), request middleware and OpenAPI shapes. Thin: the work is done in app.jobs."""
