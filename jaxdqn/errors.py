"""The user-error exception, in a module of its own so that anything can import it cheaply."""


class ConfigError(ValueError):
    """A user error (bad flag, unknown name, unusable checkpoint); the CLIs print it as one line."""
