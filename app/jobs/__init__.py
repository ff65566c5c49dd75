"""Durable generation jobs: the state machine, its stores, the service and the worker."""
