"""Video generation: image + parameters -> frames -> MP4. Knows nothing of HTTP or jobs.

Importing this package is cheap; torch and diffusers are imported by the modules that need
them (`svd`, `tiny`, `loader`), never here.
"""
