"""How user errors are reported, in a module of its own so that anything can import it cheaply."""

import argparse


def one_line(error: BaseException | str) -> str:
    """An error's message on one line: its whitespace, newlines included, collapsed to single spaces."""
    return " ".join(str(error).split())


class ConfigError(ValueError):
    """A user error (bad flag, unknown name, unusable checkpoint); the CLIs print it as one line."""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad flags as one line on stderr with exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


class TrainingDiverged(RuntimeError):
    """Training produced a non-finite loss or parameters; the CLI prints it as one line, exit code 3."""
