"""Errors that carry a message for the user (printed by the CLI without a traceback)."""


class UserError(Exception):
    """Bad input or configuration: the message says which file or record and what is wrong."""
