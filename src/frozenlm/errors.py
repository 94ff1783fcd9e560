"""Project exceptions. The CLI turns any `FrozenLMError` into one line on stderr and exit code 2."""


class FrozenLMError(Exception):
    """Base class: the message is one sentence naming the cause and what was expected."""


class DataError(FrozenLMError):
    """A task file or data file is missing, empty, malformed or inconsistent."""


class AssetError(FrozenLMError):
    """A packaged model or data set is not installed."""


class ConfigError(FrozenLMError):
    """An option or combination of options cannot be honoured."""


class CheckpointError(FrozenLMError):
    """A checkpoint is missing, corrupted, wrong-shaped or made for another backbone."""
