#!/usr/bin/env python3
"""Send one message with Python's smtplib, for sluice's end-to-end tests.

  send.py --port N --from ADDR --to ADDR [--to ADDR ...] --file MESSAGE
          [--host 127.0.0.1] [--starttls | --tls] [--cafile CA.pem | --insecure]
          [--auth USER:PASS] [--ehlo NAME] [--timeout SECONDS]

The message file is sent as bytes, unchanged but for SMTP dot-stuffing (smtplib's
data() only rewrites line endings of str messages; give the file CRLF line endings).
--from "" sends the null sender MAIL FROM:<>.  SIZE= is declared when the server
offers SIZE.

Prints the server's final reply to DATA ("250 2.0.0 Ok: queued as ...") on stdout.
Any refusal (a recipient, MAIL, DATA, AUTH, STARTTLS, the connection) is written to
stderr as "send.py: <stage> refused: <code> <text>" and makes the exit status 1;
when some recipients are refused the message still goes to the accepted ones.
"""

import argparse
import smtplib
import socket
import ssl
import sys


def fail(stage, code, text):
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    sys.stderr.write("send.py: {} refused: {} {}\n".format(stage, code, text))


def main(argv=None):
    p = argparse.ArgumentParser(description="smtplib client for sluice tests")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--from", dest="mail_from", required=True)
    p.add_argument("--to", action="append", required=True)
    p.add_argument("--file", required=True, help="message file, '-' for stdin")
    tls = p.add_mutually_exclusive_group()
    tls.add_argument("--starttls", action="store_true")
    tls.add_argument("--tls", action="store_true", help="implicit TLS (SMTPS)")
    p.add_argument("--cafile")
    p.add_argument("--insecure", action="store_true", help="do not verify the server")
    p.add_argument("--auth", metavar="USER:PASS")
    p.add_argument("--ehlo", default="client.test")
    p.add_argument("--timeout", type=float, default=30.0)
    args = p.parse_args(argv)

    if args.file == "-":
        message = sys.stdin.buffer.read()
    else:
        with open(args.file, "rb") as f:
            message = f.read()

    context = None
    if args.starttls or args.tls:
        context = ssl.create_default_context(cafile=args.cafile)
        if args.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE

    try:
        if args.tls:
            smtp = smtplib.SMTP_SSL(args.host, args.port, local_hostname=args.ehlo,
                                    timeout=args.timeout, context=context)
        else:
            smtp = smtplib.SMTP(args.host, args.port, local_hostname=args.ehlo,
                                timeout=args.timeout)
    except smtplib.SMTPConnectError as e:
        fail("connection", e.smtp_code, e.smtp_error)
        return 1
    except (OSError, smtplib.SMTPException) as e:
        fail("connection", "-", repr(e))
        return 1

    status = 0
    try:
        code, text = smtp.ehlo()
        if code != 250:
            fail("EHLO", code, text)
            return 1
        if args.starttls:
            code, text = smtp.starttls(context=context)
            if code != 220:
                fail("STARTTLS", code, text)
                return 1
            smtp.ehlo()
        if args.auth is not None:
            user, password = args.auth.split(":", 1)
            try:
                code, text = smtp.login(user, password)
            except smtplib.SMTPAuthenticationError as e:
                fail("AUTH", e.smtp_code, e.smtp_error)
                return 1
            except smtplib.SMTPNotSupportedError as e:
                fail("AUTH", "-", "server does not offer AUTH: {}".format(e))
                return 1

        options = []
        if smtp.has_extn("size"):
            options.append("SIZE={}".format(len(message)))
        code, text = smtp.mail(args.mail_from, options)
        if code != 250:
            fail("MAIL FROM:<{}>".format(args.mail_from), code, text)
            return 1
        accepted = 0
        for rcpt in args.to:
            code, text = smtp.rcpt(rcpt)
            if code in (250, 251):
                accepted += 1
            else:
                fail("RCPT TO:<{}>".format(rcpt), code, text)
                status = 1
        if accepted == 0:
            smtp.rset()
            smtp.quit()
            return 1
        code, text = smtp.data(message)
        reply = "{} {}".format(code, text.decode("utf-8", "replace"))
        if code != 250:
            fail("DATA", code, text)
            return 1
        print(reply, flush=True)
        smtp.quit()
        return status
    except smtplib.SMTPResponseException as e:
        fail("session", e.smtp_code, e.smtp_error)
        return 1
    except (smtplib.SMTPException, OSError, socket.timeout, ssl.SSLError) as e:
        fail("session", "-", repr(e))
        return 1
    finally:
        try:
            smtp.close()
        except Exception:
            pass


if __name__ == "__main__":
    sys.exit(main())
