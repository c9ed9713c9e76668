"""meshnode: an organisation's node, the trio + py-libp2p driver of protocol/'s state machines.

Packages, one concept each:
    node/          the running node: wire handlers, fetcher, sender, receiver, deliveries, policy
    directory/     the directory client: verified answers, on-disk cache, sessions for CLI commands
    study/         a study on this node: ingest of DICOM files, manifest building, export
    dicom/         DICOM parsing, block layout, synthetic studies
    storage/       block store, metadata (MetadataStore: SQLite and memory), audit chain, users
    gateway/       hospital integration: DIMSE, study intake, routes, announcer, PACS forwarding
    web/           the HTTP listener: DICOMweb, web UI, metrics, health, webhooks
    control/       the local control API and its client
    audit_export/  the audit log exported to a syslog (ATNA) repository
    cli/           the `meshnode` command, one module per subcommand
    demo/          `make demo`: an authority, a directory and nodes as real processes

At the root only what is node-wide, used by several of those packages:
    config.py      node.toml, read and validated
    home.py        the node's folder (NodeHome): key, certificate, config, state
    asgi.py        serving the node's two ASGI apps (control API, HTTP listener) under hypercorn

What the node shares with the admin tools and the simulator (durable files, SQLite, key files,
CLI output, the libp2p host, the directory transport) is in common/.
"""
