"""Raw datasets -> normalized examples, and teacher-output parsing.

`datasets` (specs, `load_examples`), `parsing` (teacher completions ->
rationale + label), `stats` (the `distill data stats` command). Submodules
are imported on use; this package imports nothing heavy.
"""
