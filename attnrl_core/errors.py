"""The one exception type that reaches a person.

Anything raised as `AttnRLError` is a problem with the user's input (a config field, a data
file and line, a model path, an unreachable store, a NaN loss): the CLI prints its message as a
single paragraph and exits with code 2. Everything else is a bug and keeps its traceback.
"""


class AttnRLError(Exception):
    """A user-facing error: its message names what is wrong and how to fix it."""
