#!/usr/bin/env python3
"""A scripted SMTP client built on Python's smtplib, for exosim's table tests.

usage: smtp_peer.py HOST PORT CAFILE SCRIPT_JSON

SCRIPT_JSON is a list of steps; each step is a list whose first item names it:
  ["connect"]                      connect, record the banner
  ["connect_from", ip]             connect from a chosen local address (127.0.0.x), record the banner
  ["ehlo"] / ["ehlo", name]        EHLO
  ["helo"]                         HELO
  ["starttls"]                     STARTTLS with certificate verification against CAFILE
  ["starttls_cert", cert, key]     STARTTLS presenting a client certificate (PEM files; the
                                   cert file may hold the chain)
  ["starttls_legacy"]              STARTTLS offering only TLS 1.0/1.1 (expects a failed handshake)
  ["cmd", "LINE"]                  any command line, reply recorded as is
  ["raw", "BYTES"]                 send BYTES as they are (no CRLF added), record one reply
  ["login", user, password]        smtplib's AUTH LOGIN
  ["xoauth2", user, token]         AUTH XOAUTH2 with the initial response on the AUTH line
  ["mail", addr] / ["rcpt", addr]  MAIL FROM / RCPT TO
  ["data", message]                DATA then the message (smtplib dot-stuffs and adds CRLF.CRLF)
  ["send", from, [to...], message] MAIL, RCPTs and DATA in one go; records the DATA reply
  ["repeat", n, [steps...]]        run the steps n times, recording only the last round
  ["read"]                         wait for a reply the server sends unasked (e.g. on a timeout)
  ["quit"]                         QUIT

Prints a JSON list with one [code, text] per step (multi-line texts joined with "\\n"). A
connection that drops is recorded as [-1, "disconnected"] and ends the script; a TLS failure
as [-2, message].
"""

import base64
import json
import smtplib
import ssl
import sys
import warnings

# TLS 1.0/1.1 constants are deprecated; the legacy step uses them on purpose.
warnings.filterwarnings("ignore", category=DeprecationWarning)


def text(msg):
    return msg.decode("utf-8", "replace") if isinstance(msg, bytes) else str(msg)


def main():
    host, port, cafile, script = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
    s = smtplib.SMTP(timeout=60)
    out = []

    def run(step):
        kind = step[0]
        if kind == "connect":
            return s.connect(host, port)
        if kind == "connect_from":
            s.source_address = (step[1], 0)
            return s.connect(host, port)
        if kind == "ehlo":
            return s.ehlo(step[1] if len(step) > 1 else "client.example")
        if kind == "helo":
            return s.helo("client.example")
        if kind == "starttls":
            ctx = ssl.create_default_context(cafile=cafile)
            # The certificate is for 127.0.0.1 and localhost.
            s._host = host
            return s.starttls(context=ctx)
        if kind == "starttls_cert":
            ctx = ssl.create_default_context(cafile=cafile)
            ctx.load_cert_chain(step[1], step[2])
            s._host = host
            return s.starttls(context=ctx)
        if kind == "starttls_legacy":
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.load_verify_locations(cafile)
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1
            s._host = host
            try:
                return s.starttls(context=ctx)
            except ssl.SSLError as e:
                return (-2, "TLS handshake failed: " + e.reason if e.reason else str(e))
        if kind == "cmd":
            return s.docmd(step[1])
        if kind == "raw":
            # Bytes exactly as given (no CRLF added), then one reply.
            s.send(step[1].encode())
            return s.getreply()
        if kind == "login":
            try:
                return s.login(step[1], step[2])
            except smtplib.SMTPAuthenticationError as e:
                return (e.smtp_code, e.smtp_error)
            except smtplib.SMTPNotSupportedError as e:
                return (0, "not supported: " + str(e))
        if kind == "xoauth2":
            blob = "user=%s\x01auth=Bearer %s\x01\x01" % (step[1], step[2])
            return s.docmd("AUTH", "XOAUTH2 " + base64.b64encode(blob.encode()).decode())
        if kind == "mail":
            return s.mail(step[1])
        if kind == "rcpt":
            return s.rcpt(step[1])
        if kind == "data":
            try:
                return s.data(step[1].encode())
            except smtplib.SMTPDataError as e:
                return (e.smtp_code, e.smtp_error)
        if kind == "send":
            s.mail(step[1])
            for r in step[2]:
                s.rcpt(r)
            try:
                return s.data(step[3].encode())
            except smtplib.SMTPDataError as e:
                return (e.smtp_code, e.smtp_error)
        if kind == "repeat":
            last = None
            for _ in range(step[1]):
                for sub in step[2]:
                    last = run(sub)
            return last
        if kind == "read":
            return s.getreply()
        if kind == "quit":
            return s.quit()
        raise ValueError("unknown step %r" % (kind,))

    for step in script:
        try:
            code, msg = run(step)
        except smtplib.SMTPServerDisconnected:
            out.append([-1, "disconnected"])
            break
        except (ConnectionError, ssl.SSLError, OSError) as e:
            out.append([-2, str(e)])
            break
        out.append([code, text(msg)])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
