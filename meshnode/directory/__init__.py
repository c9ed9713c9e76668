"""The node's side of the directory: a client that verifies everything the directory says
(client.py), the verified on-disk cache it answers from while the directory is down (cache.py),
and the short-lived session CLI commands open from a node's folder (session.py).

The request/response transport itself is shared with `meshadmin` (common/directory_transport.py).
"""
