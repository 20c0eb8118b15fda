"""Shared code of the cthulhu-sft scripts: prompt format, data loading, Wikipedia crawling."""

from .logs import quiet_library_notices

quiet_library_notices()  # first: a submodule's imports load the libraries that would say them
