"""HTTP: routers parse, authenticate and raise ApiError; errors.py turns errors into bodies."""
