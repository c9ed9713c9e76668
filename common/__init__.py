"""common: what the node, the admin tools and the simulator share, with no node concepts in it.

    files.py                durable writes (temp, fsync, rename, fsync of the directory), bounded reads,
                            DiskFullError
    sqlite_db.py            opening and migrating SQLite databases (WAL, synchronous=FULL, STRICT)
    keyfile.py              Ed25519 seeds at rest, mode 0600 (node and directory keys)
    describe.py             readable views of any signed document (`meshadmin inspect`, CLI output)
    directory_transport.py  one request to the directory and its answer, over libp2p
    p2p/                    the libp2p host (TCP + Noise + Yamux), dialling, framed request/response
    cli/                    CLI plumbing: one-line errors and exit codes, JSON or text output, progress

Layers (tests/test_layering.py): common/ imports protocol/ and third-party libraries only, never
meshnode/, tools/ or simulations/; tools/ and simulations/ take from common/, never from meshnode/.
"""
