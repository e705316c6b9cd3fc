"""Errors a user can cause. The CLI prints their message on one line and exits with code 2."""


class LossctlError(Exception):
    """A usage or input error: bad option, missing folder, nothing to compare."""


class ImageReadError(Exception):
    """One image file could not be read; the pair it belongs to is reported with status 'error'."""
