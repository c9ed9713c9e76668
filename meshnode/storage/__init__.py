"""The node's storage: block files, and everything else in one SQLite file (node.db).

    blockstore.py, direct_io.py, block_stream.py   content-addressed block files, written crash-safely
    metadata.py       the MetadataStore Protocol; implementations sqlite_metadata.py and memory_metadata.py
    schema.py         every table of node.db, as numbered migrations (the one place for the schema)
    sqlite_metadata.py  the catalog (studies, instances, blocks and their provenance, manifests), composed
                      with sqlite_exchange.py (transfers, deliveries, served), sqlite_identity.py (roster
                      version, peers) and sqlite_audit.py (the audit chain in the database)
    audit.py, audit_checkpoint.py, audit_head.py   the hash-chained audit log, its signed checkpoints, its head
    gateway_store.py, users.py, webhook_queue.py, search.py   the other stores' Protocols, each with
                      a SQLite (sqlite_*.py) and a memory implementation where tests need one
    records.py        the frozen records stores return; dbthread.py the one thread that touches the database
    node_storage.py   a node's storage as one object
"""
