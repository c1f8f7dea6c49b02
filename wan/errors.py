"""Errors a user can fix. The command line prints them as one line and exits with code 2."""


class UserError(Exception):
    """Bad input: the message names the problem and the fix."""


class CheckpointError(UserError):
    """A checkpoint file is missing, unreadable, or does not match the model it is loaded into."""
