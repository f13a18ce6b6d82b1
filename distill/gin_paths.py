"""Where the shipped gin files live, for `--gin_search_paths`.

In a source checkout they are `<repo>/gin_configs`; in an installed package
they are the `distill.gin_configs` package data (setup.py maps one onto the
other), so `--gin_file=experiments/svamp/step_by_step_gt_tiny.gin` resolves
from any working directory.
"""
import os


def gin_configs_dir() -> str:
    """Absolute path of the folder holding models/, runs/, experiments/, t5x/."""
    repo_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin_configs")
    if os.path.isdir(repo_dir):
        return repo_dir
    import distill.gin_configs  # Installed (non-editable) package data.

    return os.path.dirname(os.path.abspath(distill.gin_configs.__file__))
