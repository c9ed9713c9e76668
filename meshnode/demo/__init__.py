"""The node's demo (`make demo`, `python -m meshnode.demo`) and the process runner its end-to-end tests share.

It lives with the node because it drives real nodes: every party (authority, directory, nodes) is a
process started through its CLI, and the node is asked through its control API.
"""
