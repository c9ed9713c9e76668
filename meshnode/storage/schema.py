"""The schema of the node's SQLite file (node.db), all of it in one place: numbered migrations.

The stores kept in that file each open their own connection to it with these
migrations (common.sqlite_db.open_database applies the ones a database has
not seen, each in its own transaction): the metadata store (its catalog in
sqlite_metadata.py, with sqlite_exchange.py, sqlite_identity.py and
sqlite_audit.py), the gateway (sqlite_gateway.py), users and API tokens
(sqlite_users.py); the durable retry queues (deliveries, webhooks) are part of the metadata store
(sqlite_retry_queue.py).

MIGRATIONS[i] is schema version i+1. Append only: a new migration goes at the
END, with a comment `# N: <topic>`; a released one is never edited. Every
table is STRICT (tests/meshnode/storage/test_schema.py checks both).
"""

from __future__ import annotations

MIGRATIONS = (
    """
    CREATE TABLE studies (
        study_uid TEXT PRIMARY KEY, patient_name TEXT NOT NULL, patient_id TEXT NOT NULL,
        birth_date TEXT NOT NULL, sex TEXT NOT NULL, study_date TEXT NOT NULL, study_time TEXT NOT NULL,
        description TEXT NOT NULL, accession TEXT NOT NULL, updated_ms INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX studies_by_patient ON studies (patient_id);
    CREATE INDEX studies_by_date ON studies (study_date);
    CREATE INDEX studies_by_accession ON studies (accession);
    CREATE TABLE series (
        series_uid TEXT PRIMARY KEY, study_uid TEXT NOT NULL REFERENCES studies (study_uid),
        modality TEXT NOT NULL, series_number INTEGER, description TEXT NOT NULL
    ) STRICT;
    CREATE INDEX series_by_study ON series (study_uid);
    CREATE TABLE instances (
        id INTEGER PRIMARY KEY, sop_instance_uid TEXT NOT NULL, sop_class_uid TEXT NOT NULL,
        series_uid TEXT NOT NULL REFERENCES series (series_uid),
        study_uid TEXT NOT NULL REFERENCES studies (study_uid),
        transfer_syntax TEXT NOT NULL, size INTEGER NOT NULL, digest BLOB NOT NULL,
        instance_number INTEGER, rows INTEGER, columns INTEGER, frames INTEGER,
        flags TEXT NOT NULL, source TEXT NOT NULL, added_ms INTEGER NOT NULL,
        UNIQUE (sop_instance_uid, digest)
    ) STRICT;
    CREATE INDEX instances_by_study ON instances (study_uid);
    CREATE INDEX instances_by_series ON instances (series_uid);
    CREATE TABLE blocks (
        cid BLOB PRIMARY KEY, size INTEGER NOT NULL, added_ms INTEGER NOT NULL
    ) STRICT, WITHOUT ROWID;
    CREATE TABLE instance_blocks (
        instance_id INTEGER NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
        seq INTEGER NOT NULL, cid BLOB NOT NULL, size INTEGER NOT NULL,
        PRIMARY KEY (instance_id, seq)
    ) STRICT;
    CREATE INDEX instance_blocks_by_cid ON instance_blocks (cid);
    CREATE TABLE manifests (
        manifest_id BLOB PRIMARY KEY, study_uid TEXT NOT NULL,
        direction TEXT NOT NULL CHECK (direction IN ('sent', 'received')),
        sender_org TEXT NOT NULL, recipients TEXT NOT NULL, revision INTEGER NOT NULL,
        state TEXT NOT NULL, created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, raw BLOB NOT NULL
    ) STRICT;
    CREATE TABLE manifest_blocks (
        manifest_id BLOB NOT NULL REFERENCES manifests (manifest_id) ON DELETE CASCADE,
        cid BLOB NOT NULL, PRIMARY KEY (manifest_id, cid)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX manifest_blocks_by_cid ON manifest_blocks (cid);
    CREATE TABLE transfers (
        manifest_id BLOB PRIMARY KEY, state TEXT NOT NULL, blocks_done INTEGER NOT NULL,
        bytes_done INTEGER NOT NULL, updated_ms INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE peers (peer_id TEXT PRIMARY KEY, org TEXT NOT NULL, last_seen_ms INTEGER NOT NULL) STRICT;
    CREATE TABLE roster_state (id INTEGER PRIMARY KEY CHECK (id = 1), highest_version INTEGER NOT NULL) STRICT;
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, code INTEGER NOT NULL, action TEXT NOT NULL,
        outcome INTEGER NOT NULL, actor TEXT NOT NULL, actor_org TEXT NOT NULL, study TEXT NOT NULL,
        manifest_id TEXT NOT NULL, detail TEXT NOT NULL, prev_hash BLOB NOT NULL, hash BLOB NOT NULL
    ) STRICT
    """,
    """
    CREATE TABLE deliveries (
        manifest_id BLOB NOT NULL REFERENCES manifests (manifest_id) ON DELETE CASCADE,
        org TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL, next_attempt_ms INTEGER NOT NULL,
        last_error TEXT NOT NULL, receipt BLOB, updated_ms INTEGER NOT NULL,
        PRIMARY KEY (manifest_id, org)
    ) STRICT;
    ALTER TABLE transfers ADD COLUMN served_by TEXT NOT NULL DEFAULT '{}'
    """,
    # 3: the gateway (meshnode.storage.sqlite_gateway): quiet-period announcements, forward queue
    """
    CREATE TABLE gateway_announcements (
        study_uid TEXT NOT NULL, route TEXT NOT NULL, state TEXT NOT NULL, instances INTEGER NOT NULL,
        first_ms INTEGER NOT NULL, last_instance_ms INTEGER NOT NULL, revision INTEGER NOT NULL,
        manifest_id BLOB, announced_ms INTEGER, attempts INTEGER NOT NULL, next_attempt_ms INTEGER NOT NULL,
        last_error TEXT NOT NULL,
        PRIMARY KEY (study_uid, route)
    ) STRICT;
    CREATE INDEX gateway_announcements_by_state ON gateway_announcements (state);
    CREATE TABLE forward_items (
        manifest_id BLOB NOT NULL, destination TEXT NOT NULL, seq INTEGER NOT NULL,
        sop_instance_uid TEXT NOT NULL, digest BLOB NOT NULL, study_uid TEXT NOT NULL, priority INTEGER NOT NULL,
        state TEXT NOT NULL, attempts INTEGER NOT NULL, next_attempt_ms INTEGER NOT NULL,
        last_error TEXT NOT NULL, status INTEGER, enqueued_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL,
        PRIMARY KEY (manifest_id, destination, sop_instance_uid)
    ) STRICT;
    CREATE INDEX forward_items_due ON forward_items (destination, state, priority, next_attempt_ms);
    CREATE INDEX forward_items_held ON forward_items (destination, sop_instance_uid, digest, state)
    """,
    # 4: HTTP: DICOMweb/UI users and their API tokens (hashes only), the webhook retry queue
    """
    CREATE TABLE users (
        name TEXT PRIMARY KEY, roles TEXT NOT NULL, created_ms INTEGER NOT NULL, disabled INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE api_tokens (
        token_hash BLOB PRIMARY KEY, token_id TEXT NOT NULL UNIQUE,
        user_name TEXT NOT NULL REFERENCES users (name), label TEXT NOT NULL, created_ms INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL, revoked INTEGER NOT NULL, last_used_ms INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX api_tokens_by_user ON api_tokens (user_name);
    CREATE TABLE webhook_queue (
        id INTEGER PRIMARY KEY, hook TEXT NOT NULL, event_key TEXT NOT NULL, event TEXT NOT NULL,
        body BLOB NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL, next_attempt_ms INTEGER NOT NULL,
        last_error TEXT NOT NULL, created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL,
        UNIQUE (hook, event_key)
    ) STRICT;
    CREATE INDEX webhook_queue_due ON webhook_queue (state, next_attempt_ms)
    """,
    # 5: access by provenance (protocol.access): the blocks fetched under each manifest, the sender's
    # certificate of a received manifest (to relay it to a fellow recipient), what was served to whom
    """
    CREATE TABLE obtained_blocks (
        manifest_id BLOB NOT NULL, cid BLOB NOT NULL, PRIMARY KEY (manifest_id, cid)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX obtained_blocks_by_cid ON obtained_blocks (cid);
    CREATE INDEX manifests_by_share ON manifests (study_uid, sender_org, direction);
    ALTER TABLE manifests ADD COLUMN certificate BLOB NOT NULL DEFAULT x'';
    CREATE TABLE served (
        manifest_id BLOB NOT NULL, org TEXT NOT NULL, blocks INTEGER NOT NULL, bytes INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL, PRIMARY KEY (manifest_id, org)
    ) STRICT;
    CREATE TABLE recall_tombstones (
        manifest_id BLOB PRIMARY KEY, sender_org TEXT NOT NULL, at_ms INTEGER NOT NULL
    ) STRICT
    """,
    # 6: why a received manifest failed (its content disagrees with it), for the inbox
    """
    CREATE TABLE manifest_failures (
        manifest_id BLOB PRIMARY KEY, reason TEXT NOT NULL, at_ms INTEGER NOT NULL
    ) STRICT
    """,
    # 7: tamper-evident audit: signed checkpoints of the chain, the spool for the audit repository
    """
    CREATE TABLE audit_checkpoints (
        n INTEGER PRIMARY KEY, seq INTEGER NOT NULL, hash BLOB NOT NULL, at_ms INTEGER NOT NULL,
        rebase_from INTEGER NOT NULL, rebase_to INTEGER NOT NULL, signature BLOB NOT NULL
    ) STRICT;
    CREATE INDEX audit_checkpoints_by_seq ON audit_checkpoints (seq);
    CREATE TABLE audit_tail (
        id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, hash BLOB NOT NULL, at_ms INTEGER NOT NULL,
        signature BLOB NOT NULL
    ) STRICT;
    CREATE TABLE audit_spool (
        id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL CHECK (kind IN ('entry', 'checkpoint')),
        seq INTEGER NOT NULL, payload BLOB NOT NULL, created_ms INTEGER NOT NULL, attempts INTEGER NOT NULL
    ) STRICT
    """,
    # 8: outbox: the node's deliveries (announcements, recalls, receipts) and webhook notifications as items
    # of one durable retry queue (meshnode.storage.sqlite_retry_queue) with protocol.outbox's states;
    # verified receipts kept apart
    """
    CREATE TABLE retry_queue (
        queue TEXT NOT NULL, key TEXT NOT NULL, ref TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'attempting', 'delivered', 'failed')),
        attempts INTEGER NOT NULL, next_attempt_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL,
        last_error TEXT NOT NULL, payload BLOB,
        PRIMARY KEY (queue, key)
    ) STRICT;
    CREATE INDEX retry_queue_by_ref ON retry_queue (queue, ref);
    CREATE INDEX retry_queue_by_state ON retry_queue (queue, state);
    CREATE TABLE delivery_receipts (
        manifest_id BLOB NOT NULL, org TEXT NOT NULL, receipt BLOB NOT NULL, at_ms INTEGER NOT NULL,
        PRIMARY KEY (manifest_id, org)
    ) STRICT;
    INSERT INTO retry_queue
        SELECT 'delivery', 'announce ' || lower(hex(manifest_id)) || ' ' || org, lower(hex(manifest_id)),
               CASE state WHEN 'pending' THEN 'pending' WHEN 'failed' THEN 'failed' ELSE 'delivered' END,
               attempts, next_attempt_ms, updated_ms, last_error, NULL
          FROM deliveries
         WHERE state IN ('pending', 'announced', 'delivered') OR (state = 'failed' AND receipt IS NULL);
    INSERT INTO retry_queue
        SELECT 'delivery', 'recall ' || lower(hex(manifest_id)) || ' ' || org, lower(hex(manifest_id)),
               CASE state WHEN 'recall-pending' THEN 'pending' WHEN 'recalled' THEN 'delivered' ELSE 'failed' END,
               attempts, next_attempt_ms, updated_ms, last_error, receipt
          FROM deliveries
         WHERE state IN ('recall-pending', 'recalled') OR (state = 'failed' AND receipt IS NOT NULL);
    INSERT INTO delivery_receipts
        SELECT manifest_id, org, receipt, updated_ms FROM deliveries WHERE state = 'delivered' AND receipt IS NOT NULL;
    DROP TABLE deliveries;
    INSERT INTO retry_queue
        SELECT 'webhook:' || hook, event_key, event,
               CASE state WHEN 'sent' THEN 'delivered' WHEN 'failed' THEN 'failed' ELSE 'pending' END,
               attempts, next_attempt_ms, updated_ms, last_error, body
          FROM webhook_queue;
    DROP TABLE webhook_queue
    """,
    # 9: pacs queue: the PACS forward items (forward_items) move into the shared retry queue, one queue
    # 'pacs:<destination>' (meshnode.gateway.pacs_queue); 'waiting' for a receipt already delivered becomes
    # pending (due now), waiting for one not yet delivered is not queued (the receipt's delivery queues it),
    # cancelled is removed; the payload is the manifest's priority rank (one byte)
    """
    INSERT OR IGNORE INTO retry_queue
        SELECT 'pacs:' || f.destination,
               lower(hex(f.manifest_id)) || ' ' || f.sop_instance_uid || ' ' || lower(hex(f.digest)),
               f.sop_instance_uid || ' ' || lower(hex(f.digest)),
               CASE f.state WHEN 'sent' THEN 'delivered' WHEN 'failed' THEN 'failed' ELSE 'pending' END,
               CASE f.state WHEN 'waiting' THEN 0 ELSE f.attempts END,
               CASE f.state WHEN 'waiting' THEN 0 ELSE f.next_attempt_ms END,
               f.updated_ms, f.last_error, CAST(char(f.priority) AS BLOB)
          FROM forward_items f
         WHERE f.state IN ('pending', 'sent', 'failed')
            OR (f.state = 'waiting' AND EXISTS (SELECT 1 FROM manifests m
                                                 WHERE m.manifest_id = f.manifest_id AND m.state = 'receipted'));
    DROP TABLE forward_items
    """,
    # 10: announcer queue: the gateway's pending announcements move into the shared retry queue, queue
    # 'gateway-announce', key '<study> <route>' (meshnode.gateway.announcer), attempts and error kept; announced
    # ones are stored delivered (a late instance reopens them); gateway_announcements keeps the data (counts,
    # last manifest and revision), its state and retry columns go (one state enum: protocol.outbox's)
    """
    INSERT OR IGNORE INTO retry_queue
        SELECT 'gateway-announce', study_uid || ' ' || route, study_uid,
               CASE state WHEN 'announced' THEN 'delivered' ELSE 'pending' END,
               CASE state WHEN 'announced' THEN 0 ELSE attempts END,
               max(last_instance_ms, next_attempt_ms), coalesce(announced_ms, last_instance_ms),
               CASE state WHEN 'announced' THEN '' ELSE last_error END, NULL
          FROM gateway_announcements;
    DROP INDEX gateway_announcements_by_state;
    ALTER TABLE gateway_announcements DROP COLUMN state;
    ALTER TABLE gateway_announcements DROP COLUMN attempts;
    ALTER TABLE gateway_announcements DROP COLUMN next_attempt_ms;
    ALTER TABLE gateway_announcements DROP COLUMN last_error
    """,
    # 11: patient reconciliation: the local patient lookup table the PACS team maintains (meshnode.storage.patients)
    # and the reconciliation queue of received studies (meshnode.gateway.reconciler)
    """
    CREATE TABLE patient_records (
        local_id TEXT PRIMARY KEY, issuer TEXT NOT NULL, nhs_number TEXT NOT NULL, name TEXT NOT NULL,
        birth_date TEXT NOT NULL, sex TEXT NOT NULL, updated_ms INTEGER NOT NULL, updated_by TEXT NOT NULL
    ) STRICT;
    CREATE INDEX patient_records_by_nhs_number ON patient_records (nhs_number);
    CREATE TABLE reconciliations (
        manifest_id BLOB PRIMARY KEY, study_uid TEXT NOT NULL, sender_org TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('arrived', 'waiting', 'matched', 'rejected')),
        created_ms INTEGER NOT NULL, patient_id TEXT NOT NULL, issuer TEXT NOT NULL, nhs_number TEXT NOT NULL,
        name TEXT NOT NULL, birth_date TEXT NOT NULL, sex TEXT NOT NULL, reason TEXT NOT NULL, detail TEXT NOT NULL,
        local_id TEXT NOT NULL, local_issuer TEXT NOT NULL, local_name TEXT NOT NULL, local_birth_date TEXT NOT NULL,
        local_sex TEXT NOT NULL, decided_by TEXT NOT NULL, decided_ms INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX reconciliations_by_state ON reconciliations (state, created_ms);
    CREATE INDEX reconciliations_by_study ON reconciliations (study_uid)
    """,
    # 12: research shares (issue 15 part 1): the de-identified copy's link to the original study, shares held
    # for a human (pixel risk), and each project's re-link table (pseudonym -> original), at the sender only
    """
    CREATE TABLE research_shares (
        share_id TEXT PRIMARY KEY, original_study_uid TEXT NOT NULL, project TEXT NOT NULL,
        request TEXT NOT NULL, state TEXT NOT NULL CHECK (state IN ('held', 'shared', 'refused')),
        created_ms INTEGER NOT NULL, reasons TEXT NOT NULL, research_study_uid TEXT NOT NULL,
        manifest_id BLOB, decided_by TEXT NOT NULL, decision TEXT NOT NULL, decided_ms INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX research_shares_by_state ON research_shares (state);
    CREATE INDEX research_shares_by_manifest ON research_shares (manifest_id);
    CREATE TABLE deid_relink (
        project TEXT NOT NULL, kind TEXT NOT NULL, pseudonym TEXT NOT NULL, original TEXT NOT NULL,
        PRIMARY KEY (project, kind, pseudonym)
    ) STRICT, WITHOUT ROWID
    """,
    # 13: conflict queue: instances that came with a SOP Instance UID held here with other bytes
    # (meshnode.storage.conflicts, protocol.conflict); a pending held newcomer's blocks are referenced by
    # conflict_blocks (gc keeps them), the rows stay after the decision (who decided what, when)
    """
    CREATE TABLE instance_conflicts (
        id INTEGER PRIMARY KEY, kind TEXT NOT NULL, sop_instance_uid TEXT NOT NULL, study_uid TEXT NOT NULL,
        existing_digest BLOB NOT NULL, newcomer_digest BLOB NOT NULL, policy TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'replaced', 'kept-both', 'discarded')),
        source TEXT NOT NULL, route TEXT NOT NULL, record TEXT NOT NULL, manifest_id TEXT NOT NULL,
        created_ms INTEGER NOT NULL, decided_ms INTEGER, decided_by TEXT NOT NULL, new_uid TEXT NOT NULL
    ) STRICT;
    CREATE INDEX instance_conflicts_by_uid ON instance_conflicts (sop_instance_uid, state);
    CREATE TABLE conflict_blocks (
        conflict_id INTEGER NOT NULL REFERENCES instance_conflicts (id), cid BLOB NOT NULL,
        PRIMARY KEY (conflict_id, cid)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX conflict_blocks_by_cid ON conflict_blocks (cid)
    """,
    # 14: retrieve: the transfer syntaxes the node holds per SOP class (MetadataStore.held_transfer_syntaxes),
    # so that a C-GET's storage contexts accept the syntax the instances are stored in (a few index probes)
    """
    CREATE INDEX instances_by_class_syntax ON instances (sop_class_uid, transfer_syntax)
    """,
    # 15: reconciliation review fixes: a state 'superseded' (a later revision of the same sender's study
    # replaced a waiting one), the fingerprint of what the decision used (a later revision carries a match
    # only when it is unchanged), and the instances each reconciled manifest lists (what reconciliation
    # holds back is those instances, never a whole Study UID; rows from before list the study's received
    # instances, as the Study UID rule did)
    """
    CREATE TABLE reconciliations_v2 (
        manifest_id BLOB PRIMARY KEY, study_uid TEXT NOT NULL, sender_org TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('arrived', 'waiting', 'matched', 'rejected', 'superseded')),
        created_ms INTEGER NOT NULL, patient_id TEXT NOT NULL, issuer TEXT NOT NULL, nhs_number TEXT NOT NULL,
        name TEXT NOT NULL, birth_date TEXT NOT NULL, sex TEXT NOT NULL, reason TEXT NOT NULL, detail TEXT NOT NULL,
        local_id TEXT NOT NULL, local_issuer TEXT NOT NULL, local_name TEXT NOT NULL, local_birth_date TEXT NOT NULL,
        local_sex TEXT NOT NULL, decided_by TEXT NOT NULL, decided_ms INTEGER NOT NULL, fingerprint TEXT NOT NULL
    ) STRICT;
    INSERT INTO reconciliations_v2 SELECT manifest_id, study_uid, sender_org, state, created_ms, patient_id, issuer, nhs_number, name, birth_date, sex, reason, detail, local_id, local_issuer, local_name, local_birth_date, local_sex, decided_by, decided_ms, '' FROM reconciliations;
    DROP TABLE reconciliations;
    ALTER TABLE reconciliations_v2 RENAME TO reconciliations;
    CREATE INDEX reconciliations_by_state ON reconciliations (state, created_ms);
    CREATE INDEX reconciliations_by_study ON reconciliations (study_uid);
    CREATE TABLE reconciliation_instances (
        manifest_id BLOB NOT NULL, sop_instance_uid TEXT NOT NULL, digest BLOB NOT NULL,
        PRIMARY KEY (manifest_id, sop_instance_uid, digest)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX reconciliation_instances_by_instance ON reconciliation_instances (sop_instance_uid, digest);
    INSERT OR IGNORE INTO reconciliation_instances
        SELECT r.manifest_id, i.sop_instance_uid, i.digest FROM reconciliations r
        JOIN instances i ON i.study_uid = r.study_uid AND i.source = 'received'
    """,
    # 16: research share review fixes: states 'sending' (intent written before anything is announced) and
    # 'failed' (a partial copy recorded), and the copy's study UID indexed (hidden from local queries)
    """
    CREATE TABLE research_shares_v2 (
        share_id TEXT PRIMARY KEY, original_study_uid TEXT NOT NULL, project TEXT NOT NULL,
        request TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('held', 'sending', 'shared', 'refused', 'failed')),
        created_ms INTEGER NOT NULL, reasons TEXT NOT NULL, research_study_uid TEXT NOT NULL,
        manifest_id BLOB, decided_by TEXT NOT NULL, decision TEXT NOT NULL, decided_ms INTEGER NOT NULL
    ) STRICT;
    INSERT INTO research_shares_v2 SELECT * FROM research_shares;
    DROP TABLE research_shares;
    ALTER TABLE research_shares_v2 RENAME TO research_shares;
    CREATE INDEX research_shares_by_state ON research_shares (state);
    CREATE INDEX research_shares_by_manifest ON research_shares (manifest_id);
    CREATE INDEX research_shares_by_copy ON research_shares (research_study_uid)
    """,
    # 17: conflict lineage: a received instance's sender organisation (meshnode.storage.conflicts.lineage), so
    # a received revision replaces only its own sender's earlier version of the same study; existing received
    # rows take it from the received manifest of their study that lists their blocks ('' if none does: such a
    # row matches no sender, so a newcomer with its UID is held for a human)
    """
    ALTER TABLE instances ADD COLUMN origin TEXT NOT NULL DEFAULT '';
    UPDATE instances SET origin = coalesce((
        SELECT m.sender_org FROM instance_blocks ib
          JOIN manifest_blocks mb ON mb.cid = ib.cid
          JOIN manifests m ON m.manifest_id = mb.manifest_id
         WHERE ib.instance_id = instances.id AND m.direction = 'received' AND m.study_uid = instances.study_uid
         ORDER BY m.revision DESC LIMIT 1), '')
     WHERE source = 'received'
    """,
    # 18: portal sign-in: a user's display name and email (notifications), where the account comes from
    # (local: password + TOTP, oidc: created by single sign-on), the Argon2 password hash, the TOTP secret and
    # the last TOTP time step accepted (a code is good once), when the credentials were last set (sessions
    # opened before end); for the users page's type-ahead: indexes for prefixes of display name and email, and a
    # trigram full-text index (FTS5, case-insensitive) of name, display name and email for substrings of 3+
    # characters, kept by triggers (bench/user_store.py times both over 10,000+ users)
    """
    ALTER TABLE users ADD COLUMN display_name TEXT NOT NULL DEFAULT '';
    ALTER TABLE users ADD COLUMN email TEXT NOT NULL DEFAULT '';
    ALTER TABLE users ADD COLUMN source TEXT NOT NULL DEFAULT 'local';
    ALTER TABLE users ADD COLUMN password_hash TEXT NOT NULL DEFAULT '';
    ALTER TABLE users ADD COLUMN totp_secret TEXT NOT NULL DEFAULT '';
    ALTER TABLE users ADD COLUMN totp_last_step INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE users ADD COLUMN credentials_ms INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX users_by_display_name ON users (display_name COLLATE NOCASE);
    CREATE INDEX users_by_email ON users (email COLLATE NOCASE);
    CREATE VIRTUAL TABLE users_search USING fts5(name, display_name, email, tokenize = 'trigram');
    INSERT INTO users_search (name, display_name, email) SELECT name, display_name, email FROM users;
    CREATE TRIGGER users_search_insert AFTER INSERT ON users BEGIN
        INSERT INTO users_search (name, display_name, email) VALUES (new.name, new.display_name, new.email);
    END;
    CREATE TRIGGER users_search_update AFTER UPDATE OF name, display_name, email ON users BEGIN
        DELETE FROM users_search WHERE name = old.name;
        INSERT INTO users_search (name, display_name, email) VALUES (new.name, new.display_name, new.email);
    END;
    CREATE TRIGGER users_search_delete AFTER DELETE ON users BEGIN
        DELETE FROM users_search WHERE name = old.name;
    END
    """,
    # 19: study requests (issue 13, REQUEST): what this node asked other organisations for and what they asked
    # it for (meshnode.storage.request_store), keyed by (request ID, direction) so a replay stores nothing
    """
    CREATE TABLE study_requests (
        request_id TEXT NOT NULL, direction TEXT NOT NULL CHECK (direction IN ('outgoing', 'incoming')),
        requester_org TEXT NOT NULL, holder_org TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'declined', 'expired')),
        raw BLOB NOT NULL, certificate BLOB NOT NULL, created_ms INTEGER NOT NULL, expires_at INTEGER NOT NULL,
        manifests TEXT NOT NULL, reason TEXT NOT NULL, decided_by TEXT NOT NULL, updated_ms INTEGER NOT NULL,
        response BLOB NOT NULL, response_delivered INTEGER NOT NULL,
        PRIMARY KEY (request_id, direction)
    ) STRICT;
    CREATE INDEX study_requests_by_state ON study_requests (direction, state, created_ms)
    """,
    # 20: forward reports: a recipient org's latest verified report of its PACS forward of a sent manifest
    # (protocol.forward_report; a higher seq replaces it, an equal or lower one changes nothing)
    """
    CREATE TABLE forward_reports (
        manifest_id BLOB NOT NULL, org TEXT NOT NULL, seq INTEGER NOT NULL, report BLOB NOT NULL,
        at_ms INTEGER NOT NULL,
        PRIMARY KEY (manifest_id, org)
    ) STRICT
    """,
    # 21: single sign-on identity (issue 13, AUTH review): the issuer and `sub` an OpenID Connect account was
    # created by ('' until its first sign-on), so a later sign-on with another `sub` for the name is refused
    """
    ALTER TABLE users ADD COLUMN oidc_subject TEXT NOT NULL DEFAULT ''
    """,
    # 22: request limits (issue 13, REQUEST review): pending requests counted per requesting org, the expiry
    # sweep by expiry time, listings paged newest first
    """
    CREATE INDEX study_requests_by_org ON study_requests (direction, requester_org, state);
    CREATE INDEX study_requests_by_expiry ON study_requests (state, direction, expires_at);
    CREATE INDEX study_requests_by_created ON study_requests (direction, created_ms, request_id)
    """,
    # 23: patient links (issue 14, LINKS): links for patients and people without a node (protocol.patient_link;
    # only the token's hash and the code's HMAC are kept) and each link's history the staff see
    """
    CREATE TABLE patient_links (
        link_id TEXT PRIMARY KEY, kind TEXT NOT NULL CHECK (kind IN ('share', 'upload')),
        token_hash TEXT NOT NULL UNIQUE, studies TEXT NOT NULL, person TEXT NOT NULL, email TEXT NOT NULL,
        code_channel TEXT NOT NULL CHECK (code_channel IN ('sms', 'email')), code_to TEXT NOT NULL,
        created_by TEXT NOT NULL, parent_id TEXT NOT NULL, created_at REAL NOT NULL, expires_at REAL NOT NULL,
        code_salt TEXT NOT NULL, revoked_at REAL NOT NULL, revoke_reason TEXT NOT NULL, forwards INTEGER NOT NULL,
        wrong_attempts INTEGER NOT NULL, locked_at REAL NOT NULL, code_hash TEXT NOT NULL,
        code_expires_at REAL NOT NULL, codes_sent INTEGER NOT NULL, version INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX patient_links_by_created ON patient_links (created_at, link_id);
    CREATE INDEX patient_links_by_parent ON patient_links (parent_id);
    CREATE TABLE patient_link_events (
        seq INTEGER PRIMARY KEY, link_id TEXT NOT NULL, at REAL NOT NULL, action TEXT NOT NULL,
        actor TEXT NOT NULL, client TEXT NOT NULL, detail TEXT NOT NULL
    ) STRICT;
    CREATE INDEX patient_link_events_by_link ON patient_link_events (link_id, seq)
    """,
    # 24: upload quarantine (issue 14, UPLOAD): resumable uploads through upload links (their durable offset) and
    # the verdict on every file they held; accepted ones wait in quarantine for the PACS team's decision
    """
    CREATE TABLE patient_uploads (
        upload_id TEXT PRIMARY KEY, link_id TEXT NOT NULL, name TEXT NOT NULL, length INTEGER NOT NULL,
        received INTEGER NOT NULL, state TEXT NOT NULL CHECK (state IN ('receiving', 'checked')),
        created_ms INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX patient_uploads_by_link ON patient_uploads (link_id);
    CREATE TABLE patient_upload_files (
        file_id INTEGER PRIMARY KEY, link_id TEXT NOT NULL, upload_id TEXT NOT NULL, name TEXT NOT NULL,
        outcome TEXT NOT NULL CHECK (outcome IN ('accepted', 'refused', 'skipped')), reason TEXT NOT NULL,
        sha256 TEXT NOT NULL, size INTEGER NOT NULL, study_uid TEXT NOT NULL, series_uid TEXT NOT NULL,
        sop_uid TEXT NOT NULL, patient_name TEXT NOT NULL, patient_id TEXT NOT NULL, study_date TEXT NOT NULL,
        study_description TEXT NOT NULL, modality TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('held', 'accepted', 'rejected', 'none')), decided_by TEXT NOT NULL,
        created_ms INTEGER NOT NULL, archived INTEGER NOT NULL, person TEXT NOT NULL
    ) STRICT;
    CREATE INDEX patient_upload_files_by_link ON patient_upload_files (link_id, state)
    """,
    # 25: upload link requests (issue 14): asks for an upload link from the public page /p/ask, waiting for the
    # PACS team (meshnode.patient.upload_requests)
    """
    CREATE TABLE upload_requests (
        request_id TEXT PRIMARY KEY, person TEXT NOT NULL, email TEXT NOT NULL, code_to TEXT NOT NULL,
        message TEXT NOT NULL, client TEXT NOT NULL, created_at REAL NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'declined')), decided_by TEXT NOT NULL,
        decided_at REAL NOT NULL, outcome TEXT NOT NULL
    ) STRICT;
    CREATE INDEX upload_requests_by_state ON upload_requests (state, created_at)
    """,
    # 26: instance crc32 (issue 14, MEDIA review C1): each instance's CRC-32 for the patient's ZIP (data
    # descriptors, central directory), by sha256 digest, kept across restarts (meshnode/storage/instance_crcs.py)
    """
    CREATE TABLE instance_crcs (
        digest BLOB PRIMARY KEY, size INTEGER NOT NULL CHECK (size >= 0),
        crc32 INTEGER NOT NULL CHECK (crc32 BETWEEN 0 AND 4294967295)
    ) STRICT, WITHOUT ROWID
    """,
)
