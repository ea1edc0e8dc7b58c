"""The node benchmarks behind ``bench/node_latency.py``, one module each.

``common``: frames, checkpoint, node start/stop (the command line of
``sfnet_ros.launch_support.node_launch``), waiting; ``latency``: end-to-end latency against the bare
network, and overload; ``delivery``: frames reaching the node with and without the Fast DDS
profile; ``backends``: the node's latency per inference backend. ``bench/node_latency.py`` parses
the command line and runs one of them.
"""
