"""circleci-ds: CircleCI instrumentation for da-ds / GrimoireLab style analytics."""

__version__ = "0.1.0"
