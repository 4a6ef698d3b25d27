#!/usr/bin/env python3
"""A misbehaving SMTP upstream for sluice's fault tests: a small ESMTP server (asyncio, standard
library only) that does what a smarthost does on a bad day, on command.

Messages it accepts are written to OUT/<n>.json in the same format as upstream.py
(mail_from, rcpt_tos, data_b64, mail_options, rcpt_options, helo, tls, auth_login, peer), through
a temporary file, an fsync and a rename; numbering continues after the files already in OUT, so a
restarted server on the same OUT keeps counting.

What it does is read from the CONTROL file (one word; missing or empty means "none") at every
decision point, so a test switches behaviour at any moment by rewriting that file:

  none             a well-behaved server
  421-greeting     greets with "421 4.3.2 ..." and closes
  421-mail         greets and answers EHLO/STARTTLS normally, then answers MAIL with
                   "421 4.3.2 ..." and closes (the pipelined RCPT/DATA go unanswered)
  tempfail-mail    answers MAIL with "451 4.3.0 ..." (the connection stays usable)
  tempfail-data    receives the whole message, then answers "451 4.3.0 ..." and does not keep it
  drop-after-data  receives the whole message, then closes the connection without any reply
                   (and does not keep it)
  stall-greeting   accepts the connection and says nothing for --stall seconds, then closes
  stall-data       receives the whole message, then says nothing for --stall seconds and closes
                   (and does not keep it)
  reset-starttls   answers STARTTLS with 220, then resets the connection (TCP RST) instead of
                   the TLS handshake
  close            accepts the connection and closes it at once, no greeting

Each fault actually performed is appended as one line (the mode's name) to the EVENTS file, so
a test can check that the fault it meant to exercise did happen.

Options:
  --port-file PATH  write the port listened on to PATH (atomically) once listening
  --port N          listen on 127.0.0.1:N (default: a free port; then --port-file is needed)
  --out DIR         where accepted messages go (created if missing)
  --control PATH    the mode file (see above)
  --events PATH     the fault log (see above)
  --tls-cert/--tls-key PEM files: offer STARTTLS and require it before MAIL
  --stall SECONDS   how long the stall-* modes say nothing (default 5)
  --no-pipelining   do not advertise PIPELINING (default: advertise it)

SIGTERM or SIGINT stops it with exit status 0.
"""

import argparse
import asyncio
import base64
import json
import logging
import os
import signal
import socket
import ssl
import struct
import sys

log = logging.getLogger("faulty-upstream")

MAX_LINE = 1 << 20


def write_atomically(path, data):
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, ".{}.{}.tmp".format(os.path.basename(path), os.getpid()))
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


class State:
    def __init__(self, args):
        self.args = args
        existing = [
            int(name[:-5])
            for name in os.listdir(args.out)
            if name.endswith(".json") and name[:-5].isdigit()
        ]
        self.next_id = max(existing, default=0) + 1
        self.tls_context = None
        if args.tls_cert:
            self.tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.tls_context.load_cert_chain(args.tls_cert, args.tls_key)

    def mode(self):
        try:
            with open(self.args.control, "r", encoding="ascii") as f:
                return f.read().strip() or "none"
        except FileNotFoundError:
            return "none"

    def event(self, mode):
        with open(self.args.events, "a", encoding="ascii") as f:
            f.write(mode + "\n")
            f.flush()
        log.info("fault performed: %s", mode)

    def store(self, envelope, data, tls, peer):
        n = self.next_id
        self.next_id += 1
        record = {
            "mail_from": envelope["mail_from"],
            "rcpt_tos": envelope["rcpt_tos"],
            "data_b64": base64.b64encode(data).decode("ascii"),
            "mail_options": envelope["mail_options"],
            "rcpt_options": [],
            "helo": envelope["helo"],
            "tls": tls,
            "auth_login": None,
            "peer": peer,
        }
        write_atomically(
            os.path.join(self.args.out, "{}.json".format(n)),
            json.dumps(record).encode("utf-8"),
        )
        log.info("message %d from <%s> to %s, %d bytes", n, envelope["mail_from"],
                 envelope["rcpt_tos"], len(data))
        return n


def angle(arg):
    """The address inside <...> of a MAIL FROM:/RCPT TO: argument, and the parameters after it."""
    start = arg.find("<")
    end = arg.find(">", start + 1)
    if start < 0 or end < 0:
        return None, []
    return arg[start + 1:end], arg[end + 1:].split()


def reset_connection(writer):
    """Close with a TCP RST rather than a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


async def session(state, reader, writer):
    peername = writer.get_extra_info("peername")
    peer = peername[0] if peername else None
    args = state.args
    mode = state.mode()
    if mode == "close":
        state.event(mode)
        writer.transport.abort()
        return
    if mode == "421-greeting":
        state.event(mode)
        writer.write(b"421 4.3.2 upstream.test Service not available, closing transmission channel\r\n")
        await writer.drain()
        writer.close()
        return
    if mode == "stall-greeting":
        state.event(mode)
        await asyncio.sleep(args.stall)
        writer.transport.abort()
        return

    tls = False
    helo = None
    envelope = None

    async def reply(text):
        writer.write(text.encode("utf-8") + b"\r\n")
        await writer.drain()

    await reply("220 upstream.test ESMTP faulty")
    while True:
        line = await reader.readline()
        if not line:
            return
        if not line.endswith(b"\n"):
            await reply("500 5.5.2 Line too long")
            return
        text = line.decode("utf-8", "replace").rstrip("\r\n")
        verb, _, arg = text.partition(" ")
        verb = verb.upper()
        if verb in ("EHLO", "HELO"):
            helo = arg.strip()
            envelope = None
            if verb == "HELO":
                await reply("250 upstream.test")
                continue
            lines = ["upstream.test"]
            if not args.no_pipelining:
                lines.append("PIPELINING")
            lines += ["SIZE 67108864", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES"]
            if state.tls_context is not None and not tls:
                lines.append("STARTTLS")
            await reply("\r\n".join(
                "250{}{}".format("-" if i < len(lines) - 1 else " ", l) for i, l in enumerate(lines)
            ))
        elif verb == "STARTTLS":
            if state.tls_context is None or tls:
                await reply("502 5.5.1 STARTTLS not available")
                continue
            await reply("220 2.0.0 Ready to start TLS")
            if state.mode() == "reset-starttls":
                state.event("reset-starttls")
                reset_connection(writer)
                return
            try:
                await writer.start_tls(state.tls_context)
            except (ssl.SSLError, ConnectionError, OSError) as exc:
                log.info("TLS handshake failed: %s", exc)
                writer.transport.abort()
                return
            tls = True
            helo = None
            envelope = None
        elif verb == "MAIL":
            if state.tls_context is not None and not tls:
                await reply("530 5.7.0 Must issue a STARTTLS command first")
                continue
            mode = state.mode()
            if mode == "421-mail":
                state.event(mode)
                await reply("421 4.3.2 upstream.test Service not available, closing transmission channel")
                writer.close()
                return
            if mode == "tempfail-mail":
                state.event(mode)
                await reply("451 4.3.0 Temporary trouble, try again later")
                continue
            address, params = angle(arg[5:] if arg.upper().startswith("FROM:") else arg)
            if address is None:
                await reply("501 5.5.4 Syntax: MAIL FROM:<address>")
                continue
            envelope = {"mail_from": address, "rcpt_tos": [], "mail_options": params,
                        "helo": helo}
            await reply("250 2.1.0 Ok")
        elif verb == "RCPT":
            if envelope is None:
                await reply("503 5.5.1 Error: need MAIL command")
                continue
            address, _ = angle(arg[3:] if arg.upper().startswith("TO:") else arg)
            if not address:
                await reply("501 5.5.4 Syntax: RCPT TO:<address>")
                continue
            envelope["rcpt_tos"].append(address)
            await reply("250 2.1.5 Ok")
        elif verb == "DATA":
            if envelope is None or not envelope["rcpt_tos"]:
                await reply("554 5.5.1 Error: no valid recipients")
                continue
            await reply("354 End data with <CR><LF>.<CR><LF>")
            chunks = []
            while True:
                data_line = await reader.readline()
                if not data_line:
                    return
                if data_line == b".\r\n":
                    break
                if data_line.startswith(b"."):
                    data_line = data_line[1:]
                chunks.append(data_line)
            data = b"".join(chunks)
            current, envelope = envelope, None
            mode = state.mode()
            if mode == "drop-after-data":
                state.event(mode)
                writer.transport.abort()
                return
            if mode == "stall-data":
                state.event(mode)
                await asyncio.sleep(args.stall)
                writer.transport.abort()
                return
            if mode == "tempfail-data":
                state.event(mode)
                await reply("451 4.3.0 Temporary trouble, message not accepted")
                continue
            n = state.store(current, data, tls, peer)
            await reply("250 2.0.0 Ok: queued as {}".format(n))
        elif verb == "RSET":
            envelope = None
            await reply("250 2.0.0 Ok")
        elif verb == "NOOP":
            await reply("250 2.0.0 Ok")
        elif verb == "QUIT":
            await reply("221 2.0.0 Bye")
            writer.close()
            return
        else:
            await reply("502 5.5.2 Error: command not recognized")


async def serve(args):
    os.makedirs(args.out, exist_ok=True)
    state = State(args)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    tasks = set()

    async def on_client(reader, writer):
        task = asyncio.current_task()
        tasks.add(task)
        try:
            await session(state, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError) as exc:
            log.info("session ended: %s", exc)
        except asyncio.CancelledError:
            pass
        finally:
            tasks.discard(task)
            writer.transport.abort()

    server = await asyncio.start_server(on_client, host="127.0.0.1", port=args.port,
                                        limit=MAX_LINE, reuse_address=True)
    port = server.sockets[0].getsockname()[1]
    if args.port_file:
        write_atomically(args.port_file, "{}\n".format(port).encode("ascii"))
    log.info("listening on 127.0.0.1:%d (tls=%s, out=%s)", port, state.tls_context is not None,
             args.out)
    await stop.wait()
    log.info("stopping")
    server.close()
    for task in list(tasks):
        task.cancel()
    try:
        await asyncio.wait_for(server.wait_closed(), 5)
    except asyncio.TimeoutError:
        pass


def main():
    p = argparse.ArgumentParser(description="misbehaving SMTP upstream for sluice fault tests")
    p.add_argument("--port-file")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--control", required=True)
    p.add_argument("--events", required=True)
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--stall", type=float, default=5.0)
    p.add_argument("--no-pipelining", action="store_true")
    args = p.parse_args()
    if args.port_file is None and not args.port:
        p.error("give --port-file PATH or --port N")
    if bool(args.tls_cert) != bool(args.tls_key):
        p.error("--tls-cert and --tls-key go together")
    if args.tls_cert and not hasattr(asyncio.StreamWriter, "start_tls"):
        p.error("STARTTLS needs Python 3.11 or later (asyncio.StreamWriter.start_tls)")
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s faulty-upstream[%(process)d]: %(message)s",
    )
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
