#!/usr/bin/env python3
"""An SMTP upstream (smarthost stand-in) for sluice's end-to-end tests, built on aiosmtpd.

Every accepted message is written to OUT/<n>.json (n = 1, 2, ...) as

    {"mail_from": "a@b" (or "" for the null sender <>), "rcpt_tos": [...],
     "data_b64": <message content exactly as received, dot-unstuffed, base64>,
     "mail_options": [...], "rcpt_options": [...], "helo": "...",
     "tls": true/false, "auth_login": "user" or null, "peer": "127.0.0.1"}

through a temporary file and a rename, so a reader never sees a half-written file.

Options:
  --port-file PATH   write the port listened on to PATH (atomically) once listening;
                     without --port, listen on 127.0.0.1 port 0 (a free port)
  --port N           listen on 127.0.0.1:N (with --port-file too: a readiness signal)
  --out DIR          where the messages go (created if missing)
  --tls-cert/--tls-key PEM files: offer STARTTLS, and refuse MAIL before it
                     with "530 5.7.0 Must issue a STARTTLS command first"
  --auth USER:PASS   offer AUTH PLAIN/LOGIN (only after STARTTLS when TLS is configured)
                     and require it before MAIL ("530 5.7.0 Authentication required")
  --reject-rcpt ADDR   RCPT TO:<ADDR> gets "550 5.1.1 <ADDR>: Recipient address
                       rejected: User unknown" (repeatable, case-insensitive)
  --tempfail-rcpt ADDR RCPT TO:<ADDR> gets "451 4.2.0 ..." (repeatable)
  --max-size BYTES   SIZE limit (default 64 MiB)

SIGTERM or SIGINT stops it with exit status 0.
"""

import argparse
import asyncio
import base64
import json
import logging
import os
import signal
import ssl
import sys

try:
    from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword
except ImportError as exc:  # pragma: no cover - environment problem
    sys.stderr.write(
        "upstream.py: cannot import aiosmtpd ({}): install the Python package "
        "'aiosmtpd' (pip install aiosmtpd) for {}\n".format(exc, sys.executable)
    )
    sys.exit(3)

log = logging.getLogger("upstream")


def write_atomically(path, data):
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, ".{}.{}.tmp".format(os.path.basename(path), os.getpid()))
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


class Handler:
    def __init__(self, out_dir, reject, tempfail):
        self.out_dir = out_dir
        self.reject = {a.lower() for a in reject}
        self.tempfail = {a.lower() for a in tempfail}
        existing = [
            int(name[:-5])
            for name in os.listdir(out_dir)
            if name.endswith(".json") and name[:-5].isdigit()
        ]
        self.next_id = max(existing, default=0) + 1

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        key = address.lower()
        if key in self.reject:
            log.info("rejecting recipient %s", address)
            return "550 5.1.1 <{}>: Recipient address rejected: User unknown".format(address)
        if key in self.tempfail:
            log.info("temporarily failing recipient %s", address)
            return "451 4.2.0 <{}>: Recipient address rejected: Try again later".format(address)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        n = self.next_id
        self.next_id += 1
        mail_from = envelope.mail_from
        if mail_from == "<>":
            mail_from = ""
        login = getattr(session.auth_data, "login", None)
        if isinstance(login, bytes):
            login = login.decode("utf-8", "replace")
        record = {
            "mail_from": mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "data_b64": base64.b64encode(envelope.original_content).decode("ascii"),
            "mail_options": list(envelope.mail_options),
            "rcpt_options": list(envelope.rcpt_options),
            "helo": session.host_name,
            "tls": session.ssl is not None,
            "auth_login": login,
            "peer": session.peer[0] if session.peer else None,
        }
        write_atomically(
            os.path.join(self.out_dir, "{}.json".format(n)),
            json.dumps(record).encode("utf-8"),
        )
        log.info(
            "message %d from <%s> to %s, %d bytes",
            n, mail_from, envelope.rcpt_tos, len(envelope.original_content),
        )
        return "250 2.0.0 Ok: queued as {}".format(n)


class UpstreamSMTP(SMTP):
    def __init__(self, *args, require_tls=False, **kwargs):
        self._require_tls = require_tls
        super().__init__(*args, **kwargs)

    async def smtp_MAIL(self, arg):
        # aiosmtpd's own require_starttls answers without an enhanced status code;
        # a smarthost such as Microsoft 365 answers 530 5.7.0.
        if self._require_tls and self._tls_protocol is None:
            await self.push("530 5.7.0 Must issue a STARTTLS command first")
            return
        await super().smtp_MAIL(arg)


def make_authenticator(user, password):
    user_b = user.encode("utf-8")
    password_b = password.encode("utf-8")

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == user_b
            and auth_data.password == password_b
        )
        log.info("AUTH %s as %r: %s", mechanism,
                 getattr(auth_data, "login", None), "ok" if ok else "refused")
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    return authenticator


def parse_args(argv):
    p = argparse.ArgumentParser(description="aiosmtpd upstream for sluice tests")
    p.add_argument("--port-file")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--out", required=True)
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--auth", metavar="USER:PASS")
    p.add_argument("--reject-rcpt", action="append", default=[])
    p.add_argument("--tempfail-rcpt", action="append", default=[])
    p.add_argument("--max-size", type=int, default=64 * 1024 * 1024)
    p.add_argument("--hostname", default="upstream.test")
    args = p.parse_args(argv)
    if args.port_file is None and not args.port:
        p.error("give --port-file PATH (port 0, chosen port written there) or --port N")
    if bool(args.tls_cert) != bool(args.tls_key):
        p.error("--tls-cert and --tls-key go together")
    if args.auth is not None and ":" not in args.auth:
        p.error("--auth takes USER:PASS")
    return args


async def serve(args):
    os.makedirs(args.out, exist_ok=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    tls_context = None
    if args.tls_cert:
        tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls_context.load_cert_chain(args.tls_cert, args.tls_key)

    authenticator = None
    if args.auth is not None:
        user, password = args.auth.split(":", 1)
        authenticator = make_authenticator(user, password)

    handler = Handler(args.out, args.reject_rcpt, args.tempfail_rcpt)

    def factory():
        return UpstreamSMTP(
            handler,
            hostname=args.hostname,
            data_size_limit=args.max_size,
            enable_SMTPUTF8=True,
            tls_context=tls_context,
            require_tls=tls_context is not None,
            authenticator=authenticator,
            auth_required=authenticator is not None,
            # Without TLS configured, AUTH has to work in plaintext or not at all.
            auth_require_tls=tls_context is not None,
            loop=loop,
        )

    server = await loop.create_server(
        factory, host=args.host, port=args.port
    )
    port = server.sockets[0].getsockname()[1]
    if args.port_file:
        write_atomically(args.port_file, "{}\n".format(port).encode("ascii"))
    log.info(
        "listening on %s:%d (tls=%s, auth=%s, out=%s)",
        args.host, port, tls_context is not None, authenticator is not None, args.out,
    )

    await stop.wait()
    log.info("stopping")
    server.close()
    close_clients = getattr(server, "close_clients", None)  # Python >= 3.13
    if close_clients is not None:
        close_clients()
    try:
        await asyncio.wait_for(server.wait_closed(), 5)
    except asyncio.TimeoutError:
        pass


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s upstream[%(process)d] %(name)s: %(message)s",
    )
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
