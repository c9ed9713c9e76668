"""One SMTP conversation, blocking (run in a worker thread): STARTTLS (required unless configured off),
login if configured, one message to one recipient.

smtplib rather than aiosmtplib: aiosmtplib runs on asyncio only and the node runs on trio (docs: "One event
loop: trio"); smtplib in `trio.to_thread.run_sync` is the standard library's client, with a socket timeout
on every read and write.
"""

from __future__ import annotations

import smtplib
import ssl

from meshnode.notify.config import NotifyConfig
from protocol.errors import UnavailableError

#: authentication required, too weak, failed, encryption required: the relay's configuration, not the message
AUTH_CODES = frozenset({530, 534, 535, 538})


class EmailError(UnavailableError):
    """The relay did not take the message. `permanent`: it refused it for good (a 5xx to the recipient or
    the message); otherwise it is tried again later."""

    code = 960
    name = "email-error"

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def tls_context(config: NotifyConfig) -> ssl.SSLContext:
    """The relay's certificate is verified (against `ca` if given, else the system's CAs) and its name."""
    context = ssl.create_default_context(cafile=str(config.ca) if config.ca is not None else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def send(config: NotifyConfig, message: bytes, recipient: str) -> None:
    """Deliver `message` (as written: meshnode.notify.message) to `recipient` through the configured relay,
    or raise EmailError."""
    try:
        with smtplib.SMTP(config.host, config.port, timeout=config.timeout_seconds) as smtp:
            smtp.ehlo()
            if config.starttls:
                if not smtp.has_extn("starttls"):
                    raise EmailError(f"{config.host}:{config.port} does not offer STARTTLS (required)")
                smtp.starttls(context=tls_context(config))
                smtp.ehlo()
            if config.username:
                smtp.login(config.username, config.password)
            refused = smtp.sendmail(config.from_address, [recipient], message)
            if refused:
                code, text = next(iter(refused.values()))
                raise EmailError(f"recipient refused: {code} {_text(text)}", permanent=code >= 500)
    except EmailError:
        raise
    except smtplib.SMTPRecipientsRefused as exc:
        codes = [code for code, _ in exc.recipients.values()]
        raise EmailError(f"recipient refused: {codes}", permanent=all(c >= 500 for c in codes)) from None
    except smtplib.SMTPDataError as exc:  # the message itself refused: sending it again cannot help
        raise EmailError(f"message refused: {exc.smtp_code} {_text(exc.smtp_error)}",
                         permanent=exc.smtp_code >= 500 and exc.smtp_code not in AUTH_CODES) from None
    except smtplib.SMTPResponseException as exc:
        # login refused or required, the sender address refused: the operator fixes the configuration and
        # the email goes then (tried again with backoff up to max_attempts)
        raise EmailError(f"refused: {exc.smtp_code} {_text(exc.smtp_error)}") from None
    except (smtplib.SMTPException, OSError) as exc:  # connection refused or lost, timeout, TLS failure
        raise EmailError(f"{type(exc).__name__}: {exc}"[:300]) from None


def _text(value: bytes | str) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return " ".join(text.split())[:200]
