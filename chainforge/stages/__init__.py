"""Stages of the pipeline: each module has `run(opts)`, called by the CLI."""
