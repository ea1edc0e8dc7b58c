"""Thin command-line entry points over the library (console scripts ``sfnet-*``)."""
