"""Suites: configuration, preparation (checks before anything is written), protocols, search, studies, the runner."""
