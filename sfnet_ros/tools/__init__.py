"""Command-line tools over bags and the node: evaluate, play, record, live-evaluate, extract, demo.

Each module holds a tool's library functions (typed arguments) and its thin ``main``.
"""
