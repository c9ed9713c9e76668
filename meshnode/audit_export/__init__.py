"""Export of the audit trail to an external audit repository (IHE ATNA): RFC 5424 syslog over TLS
(RFC 5425) carrying DICOM PS3.15 A.5 audit messages, from a durable spool."""
