"""Shared code of the cthulhu-sft scripts: prompt format, data loading, Wikipedia crawling."""
