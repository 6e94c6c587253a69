"""Errors the user can fix. The CLI prints them as one line and exits non-zero; no traceback."""


class UserError(Exception):
    """A problem with the user's input (file, option, config), stated in one line."""
