"""CLI flags shared by tests that run kdlab commands (imported by name: tests/ is on sys.path through conftest)."""

# A fast, deterministic run on the embedded digits data (a few seconds per epoch).
DIGITS_FAST = ["--data", "digits", "--batch-size", "128", "--quiet", "data.fraction=0.3", "threads=1",
               "deterministic=true"]
