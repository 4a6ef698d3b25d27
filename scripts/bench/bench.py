#!/usr/bin/env python3
"""Measurement helpers for scripts/bench.sh (Python 3.8+, standard library only, Linux /proc).

Subcommands (bench.sh calls them; they are not meant to be a stable interface):

  freeport                      print a free TCP port on 127.0.0.1
  pids-by-env NAME=VALUE        list the processes with NAME=VALUE in their environment
  wait-smtp PORT SECONDS        wait until PORT answers with a 220 greeting (exit 1 on timeout)
  case ...  -- CMD ARGS...      run one load (smtp-source or latency-client) against a relay, wait until
                                the sink has every message and the relay's queue is empty, and append
                                one JSON result (rates, CPU, memory) to --results
  latency-client ...            closed-loop SMTP client timing every transaction (for the p50/p99 case)
  idle ...                      hold N idle sessions open against sluice and measure its memory
  idle-client ...               (used by idle) opens the N connections and reads each greeting
  report RESULTS.jsonl          print the Markdown tables

How the numbers are taken (also described in BENCHMARKS.md):
- accepted msg/s: messages / (time from starting the load generator to its exit).
- end-to-end msg/s: messages / (time from starting the load generator until smtp-sink's running counter
  (`smtp-sink -c`, "mesg=N", written on every ".") reaches baseline + messages).
- CPU: utime + stime of the relay's process tree from /proc/PID/stat, as a delta over the case (start of
  the load to queue empty). For Postfix the tree is the master and its live children; children that exit
  during the case are counted through the master's cutime/cstime (the master reaps them with waitpid,
  which is exactly what adds a child's CPU time there). sluice is one process (its threads included).
- memory: /proc/PID/statm resident and /proc/PID/smaps_rollup Pss summed over the tree, sampled every
  100 ms; for sluice also VmHWM (the kernel's exact peak; a fresh process per case).
"""

import argparse
import asyncio
import json
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

PAGE = os.sysconf("SC_PAGE_SIZE")
HZ = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------------
# /proc helpers


def read_file(path, mode="r"):
    with open(path, mode) as f:
        return f.read()


def proc_stat(pid):
    """(ppid, utime, stime, cutime, cstime) in clock ticks, or None if the process is gone."""
    try:
        data = read_file(f"/proc/{pid}/stat")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    rest = data[data.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state); field n is rest[n - 3].
    return (int(rest[1]), int(rest[11]), int(rest[12]), int(rest[13]), int(rest[14]))


def tree_pids(root):
    """root and all its descendants (through /proc/PID/task/TID/children)."""
    pids = [root]
    i = 0
    while i < len(pids):
        pid = pids[i]
        i += 1
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except (FileNotFoundError, ProcessLookupError):
            continue
        for tid in tids:
            try:
                children = read_file(f"/proc/{pid}/task/{tid}/children").split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            pids.extend(int(c) for c in children)
    return pids


def tree_cpu(root):
    """(user, sys) seconds of the tree: live processes' own times plus their reaped children's."""
    user = sys_ = 0
    pids = tree_pids(root)
    # Children first, root last: a child that exits in between is then counted (at worst) twice rather
    # than lost; at the end of a case the relay is idle, so this race does not happen in practice.
    for pid in reversed(pids):
        st = proc_stat(pid)
        if st is None:
            continue
        user += st[1] + st[3]
        sys_ += st[2] + st[4]
    return user / HZ, sys_ / HZ


def machine_cpu():
    """(busy, irq + softirq, steal) seconds of the whole machine since boot, from /proc/stat."""
    f = [int(x) for x in read_file("/proc/stat").splitlines()[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (f + [0] * 8)[:8]
    return (user + nice + system + irq + softirq) / HZ, (irq + softirq) / HZ, steal / HZ


def kthreads_cpu():
    """{(pid, start time): CPU ticks} of the kernel's threads (kthreadd and its children: kworkers,
    ksoftirqd, jbd2...). Some of their work is the relays' doing (writeback, discards), some is not."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            data = read_file(f"/proc/{name}/stat")
        except (FileNotFoundError, ProcessLookupError):
            continue
        rest = data[data.rindex(")") + 2 :].split()
        if rest[1] == "2" or name == "2":
            found[(name, rest[19])] = int(rest[11]) + int(rest[12])
    return found


def kthreads_delta(before, after):
    """CPU seconds the kernel threads used in between: kworkers come and go, so per thread (one that
    exited in between is missed; one born in between counts whole)."""
    return sum(t - before.get(key, 0) for key, t in after.items()) / HZ


def proc_mem(pid):
    """(rss_bytes, pss_bytes) of one process, or None."""
    try:
        rss = int(read_file(f"/proc/{pid}/statm").split()[1]) * PAGE
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return None
    pss = 0
    try:
        for line in read_file(f"/proc/{pid}/smaps_rollup").splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
                break
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return rss, pss


def status_field(pid, name):
    """A kB field of /proc/PID/status (VmHWM, VmRSS) in bytes, or a plain integer field."""
    try:
        for line in read_file(f"/proc/{pid}/status").splitlines():
            if line.startswith(name + ":"):
                parts = line.split()
                value = int(parts[1])
                return value * 1024 if len(parts) > 2 and parts[2] == "kB" else value
    except (FileNotFoundError, ProcessLookupError):
        pass
    return None


class MemMonitor(threading.Thread):
    """Samples the summed RSS and PSS of a process tree every `interval` seconds; keeps the peaks."""

    def __init__(self, root, interval=0.1):
        super().__init__(daemon=True)
        self.root = root
        self.interval = interval
        self.stop_event = threading.Event()
        self.peak_rss = 0
        self.peak_pss = 0
        self.peak_procs = 0
        self.samples = 0

    def sample(self):
        rss = pss = n = 0
        for pid in tree_pids(self.root):
            m = proc_mem(pid)
            if m is None:
                continue
            rss += m[0]
            pss += m[1]
            n += 1
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_pss = max(self.peak_pss, pss)
        self.peak_procs = max(self.peak_procs, n)
        self.samples += 1

    def run(self):
        while not self.stop_event.is_set():
            self.sample()
            self.stop_event.wait(self.interval)

    def stop(self):
        self.stop_event.set()
        self.join()
        self.sample()


# ---------------------------------------------------------------------------------------------------
# smtp-sink's counter and the relays' queues

MESG = re.compile(rb"mesg=(\d+)")


def sink_count(path):
    """The last "mesg=N" smtp-sink -c wrote (it rewrites one status line with \\r on every ".").
    A torn read can only show a prefix of the digits, i.e. a smaller number: never an early "done"."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 160))
            tail = f.read()
    except FileNotFoundError:
        return 0
    found = MESG.findall(tail)
    return int(found[-1]) if found else 0


def queue_entries(kind, root, limit=1):
    """Up to `limit` names of messages still queued (sluice: spool/queue/*.json; Postfix: the
    incoming, active, deferred, hold and maildrop queues, hashed subdirectories included)."""
    found = []
    if kind == "sluice":
        dirs = [os.path.join(root, "queue")]
    else:
        dirs = [os.path.join(root, d) for d in ("maildrop", "incoming", "active", "deferred", "hold")]
    stack = list(dirs)
    while stack and len(found) < limit:
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                for e in it:
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
                    elif kind != "sluice" or e.name.endswith(".json"):
                        found.append(os.path.relpath(e.path, root))
                        if len(found) >= limit:
                            break
        except FileNotFoundError:
            pass
    return found


def count_queue(kind, root):
    return len(queue_entries(kind, root, limit=10**9))


# ---------------------------------------------------------------------------------------------------
# case


def cmd_case(a):
    cmd = a.cmd
    if not cmd:
        print("case: no load command after --", file=sys.stderr)
        return 2
    base = sink_count(a.sink_out)
    target = base + a.expect
    mon = MemMonitor(a.pid)
    mon.sample()
    mon.start()
    cpu0 = tree_cpu(a.pid)
    machine0 = machine_cpu()
    kthreads0 = kthreads_cpu()
    sink0 = proc_stat(a.sink_pid) if a.sink_pid else None
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    out_path = os.path.join(a.workdir, f"{a.label}.{a.relay}.{a.run}.load.out")
    err_path = os.path.join(a.workdir, f"{a.label}.{a.relay}.{a.run}.load.err")
    t0 = time.monotonic()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    try:
        return run_load(a, cmd, proc, base, target, mon, cpu0, machine0, kthreads0, sink0, self0, t0, err_path)
    finally:
        if proc.returncode is None:
            try:
                proc.kill()
                proc.wait()
            except (ProcessLookupError, ChildProcessError):
                pass


def run_load(a, cmd, proc, base, target, mon, cpu0, machine0, kthreads0, sink0, self0, t0, err_path):
    t_accept = t_e2e = None
    status = "ok"
    problems = []
    last_count, last_progress = base, t0
    rc = None
    load_cpu = 0.0
    while True:
        now = time.monotonic()
        if rc is None:
            pid, wstatus, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                rc = os.WEXITSTATUS(wstatus) if os.WIFEXITED(wstatus) else -os.WTERMSIG(wstatus)
                proc.returncode = rc
                load_cpu = usage.ru_utime + usage.ru_stime
                t_accept = now
        count = sink_count(a.sink_out)
        if count != last_count:
            last_count, last_progress = count, now
        if t_e2e is None and count >= target:
            t_e2e = now
        if rc is not None and t_e2e is not None and not queue_entries(a.queue_kind, a.queue_dir):
            break
        if rc is not None and now - max(last_progress, t_accept) > a.stall:
            status = "stalled"
            problems.append(
                f"no message reached the sink for {a.stall:.0f}s after the load ended: "
                f"sink got {count - base} of {a.expect}"
            )
            break
        if now - t0 > a.timeout:
            status = "timeout"
            problems.append(f"case exceeded {a.timeout:.0f}s: sink got {count - base} of {a.expect}")
            if rc is None:
                proc.kill()
                proc.wait()
                rc = "killed"
            load_cpu = None
            break
        time.sleep(0.01)
    t_done = time.monotonic()
    cpu1 = tree_cpu(a.pid)
    machine1 = machine_cpu()
    kthreads1 = kthreads_cpu()
    sink1 = proc_stat(a.sink_pid) if a.sink_pid else None
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    mon.stop()
    hwm = status_field(a.pid, "VmHWM") if a.relay == "sluice" else None
    time.sleep(0.3)
    final = sink_count(a.sink_out) - base
    if rc != 0:
        status = "failed" if status == "ok" else status
        problems.append(f"load generator exit status {rc}")
    if final != a.expect and status == "ok":
        status = "mismatch"
    if final != a.expect:
        problems.append(f"sink received {final} messages, expected {a.expect}")
    left = count_queue(a.queue_kind, a.queue_dir)
    if left:
        problems.append(f"{left} messages still queued in {a.queue_dir}")
    err_text = read_file(err_path, "rb").decode("utf-8", "replace").strip()
    if err_text:
        problems.append("load generator stderr: " + err_text[-2000:])
    user, sys_ = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    # Everything else the machine did meanwhile: busy time minus the relay, the load generator, the sink,
    # this process, kernel threads and interrupts. That rest is other people's jobs: shown so that a noisy
    # run can be recognised as such.
    wall = t_done - t0
    busy = machine1[0] - machine0[0]
    irq = machine1[1] - machine0[1]
    kthreads = kthreads_delta(kthreads0, kthreads1)
    sink_cpu = (sum(sink1[1:3]) - sum(sink0[1:3])) / HZ if sink0 and sink1 else 0.0
    self_cpu = (self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime)
    others = busy - (user + sys_) - (load_cpu or 0.0) - sink_cpu - self_cpu - kthreads - irq
    res = {
        "label": a.label,
        "title": a.title,
        "relay": a.relay,
        "run": a.run,
        "messages": a.expect,
        "status": status,
        "problems": problems,
        "accept_s": (t_accept - t0) if t_accept else None,
        "e2e_s": (t_e2e - t0) if t_e2e else None,
        "done_s": t_done - t0,
        "accepted_per_s": a.expect / (t_accept - t0) if t_accept and rc == 0 else None,
        "e2e_per_s": a.expect / (t_e2e - t0) if t_e2e else None,
        "cpu_user_s": user,
        "cpu_sys_s": sys_,
        "cpu_s_per_1000": (user + sys_) * 1000 / a.expect,
        "load_generator_cpu_s": load_cpu,
        "sink_cpu_s": sink_cpu,
        "machine_busy_cores": busy / wall,
        "background_cores": max(0.0, others) / wall,
        "kthreads_cpu_s": kthreads,
        "irq_cpu_s": irq,
        "steal_cores": (machine1[2] - machine0[2]) / wall,
        "loadavg_1m": float(read_file("/proc/loadavg").split()[0]),
        "peak_rss": max(mon.peak_rss, hwm or 0),
        "peak_pss": mon.peak_pss,
        "vmhwm": hwm,
        "peak_procs": mon.peak_procs,
        "mem_samples": mon.samples,
        "command": cmd,
    }
    if a.latency_file and os.path.exists(a.latency_file):
        res["latency"] = json.loads(read_file(a.latency_file))
    with open(a.results, "a") as f:
        f.write(json.dumps(res) + "\n")
    print_case(res)
    return 0 if status == "ok" else 3


def fmt(v, spec, none="-"):
    return none if v is None else format(v, spec)


def print_case(r):
    line = (
        f"  {r['relay']:8} {r['status']:8} accepted {fmt(r['accepted_per_s'], '8.0f')}/s"
        f"  end-to-end {fmt(r['e2e_per_s'], '8.0f')}/s"
        f"  CPU {r['cpu_s_per_1000']:.3f} s/1000 (usr {r['cpu_user_s']:.2f} s, sys {r['cpu_sys_s']:.2f} s)"
        f"  peak RSS {r['peak_rss'] / 2**20:.1f} MiB, PSS {r['peak_pss'] / 2**20:.1f} MiB"
        f" ({r['peak_procs']} procs); other load {r['background_cores']:.2f} cores"
    )
    print(line, flush=True)
    lat = r.get("latency")
    if lat:
        print(
            f"           accept latency (MAIL..250 after '.'): p50 {lat['tx_ms']['p50']:.2f} ms"
            f"  p99 {lat['tx_ms']['p99']:.2f} ms  max {lat['tx_ms']['max']:.2f} ms;"
            f" '.'..250: p50 {lat['dot_ms']['p50']:.2f} ms  p99 {lat['dot_ms']['p99']:.2f} ms",
            flush=True,
        )
    for p in r["problems"]:
        print(f"           ! {p}", flush=True)


# ---------------------------------------------------------------------------------------------------
# SMTP clients


def make_body(size, seq=0):
    """Headers and a body of `size` payload bytes in 80-character lines, like smtp-source -l."""
    head = (
        "From: <bench@client.bench.test>\r\n"
        "To: <rcpt@example.net>\r\n"
        "Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
        f"Message-Id: <{os.getpid()}.{seq}@client.bench.test>\r\n"
        "Subject: sluice benchmark\r\n\r\n"
    ).encode()
    lines = []
    left = size
    n = 0
    while left > 0:
        n += 1
        chunk = min(78, left)
        text = (str(n) + "X" * 78)[:chunk]
        lines.append(text.encode() + b"\r\n")
        left -= chunk
    return head + b"".join(lines) + b".\r\n"


async def read_reply(reader):
    lines = []
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed by the server")
        lines.append(line)
        if len(line) < 4 or line[3:4] != b"-":
            return int(line[:3]), b"".join(lines)


def percentiles(values):
    if not values:
        return {}
    s = sorted(values)

    def pct(p):
        return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]

    return {
        "n": len(s),
        "p50": pct(50),
        "p90": pct(90),
        "p99": pct(99),
        "p99.9": pct(99.9),
        "max": s[-1],
        "mean": statistics.fmean(s),
    }


async def latency_main(a):
    body = make_body(a.size)
    tx_ms, dot_ms = [], []
    errors = []
    rcpts = [f"RCPT TO:<{i}rcpt@example.net>\r\n".encode() for i in range(a.rcpts)]

    async def expect(reader, code, what):
        got, text = await asyncio.wait_for(read_reply(reader), a.reply_timeout)
        if got != code:
            raise RuntimeError(f"{what}: {text.decode(errors='replace').strip()}")

    loop = asyncio.get_running_loop()
    start = [0.0]

    async def session(i):
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", a.port), a.reply_timeout
        )
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await expect(reader, 220, "greeting")
            writer.write(b"EHLO client.bench.test\r\n")
            await expect(reader, 250, "EHLO")
            for k in range(a.messages):
                if a.rate:
                    # Paced (open loop per client): message k of client i is due at a fixed time, the
                    # clients staggered evenly; total offered load a.rate messages/s.
                    due = start[0] + (k * a.clients + i) / a.rate
                    delay = due - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                t0 = time.perf_counter()
                writer.write(b"MAIL FROM:<bench@client.bench.test>\r\n")
                await expect(reader, 250, "MAIL")
                for r in rcpts:
                    writer.write(r)
                    await expect(reader, 250, "RCPT")
                writer.write(b"DATA\r\n")
                await expect(reader, 354, "DATA")
                t1 = time.perf_counter()
                writer.write(body)
                await expect(reader, 250, "end of data")
                t2 = time.perf_counter()
                tx_ms.append((t2 - t0) * 1000)
                dot_ms.append((t2 - t1) * 1000)
            writer.write(b"QUIT\r\n")
            await writer.drain()
            try:
                await asyncio.wait_for(read_reply(reader), 5)
            except Exception:
                pass
        finally:
            writer.close()

    t0 = time.perf_counter()
    start[0] = loop.time() + 0.5  # paced mode: time for all sessions to connect and say EHLO
    results = await asyncio.gather(*(session(i) for i in range(a.clients)), return_exceptions=True)
    elapsed = time.perf_counter() - t0
    if a.rate:
        elapsed -= 0.5
    for r in results:
        if isinstance(r, BaseException):
            errors.append(f"{type(r).__name__}: {r}")
    summary = {
        "clients": a.clients,
        "rate": a.rate,
        "messages": len(tx_ms),
        "elapsed_s": elapsed,
        "accepted_per_s": len(tx_ms) / elapsed if elapsed else None,
        "tx_ms": percentiles(tx_ms),
        "dot_ms": percentiles(dot_ms),
        "errors": errors,
    }
    with open(a.out, "w") as f:
        json.dump(summary, f)
    for e in errors[:10]:
        print(f"latency-client: session error: {e}", file=sys.stderr)
    return 1 if errors or len(tx_ms) != a.clients * a.messages else 0


def cmd_latency_client(a):
    return asyncio.run(latency_main(a))


async def idle_client_main(a):
    sem = asyncio.Semaphore(a.parallel)
    conns = []
    codes = {}

    async def one(i):
        async with sem:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", a.port), a.connect_timeout
            )
            line = await asyncio.wait_for(reader.readline(), a.connect_timeout)
            conns.append(writer)
            return line[:3].decode(errors="replace") or "EOF"

    t0 = time.perf_counter()
    results = await asyncio.gather(*(one(i) for i in range(a.sessions)), return_exceptions=True)
    elapsed = time.perf_counter() - t0
    errors = []
    for r in results:
        if isinstance(r, BaseException):
            key = type(r).__name__
            errors.append(f"{key}: {r}")
        else:
            key = r
        codes[key] = codes.get(key, 0) + 1
    print(
        json.dumps(
            {
                "sessions": a.sessions,
                "greeted_220": codes.get("220", 0),
                "replies": codes,
                "open_s": elapsed,
                "errors": errors[:5],
            }
        ),
        flush=True,
    )
    # Hold every connection open, silent, until told to stop (stdin closes).
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    for w in conns:
        w.close()
    return 0


def cmd_idle_client(a):
    return asyncio.run(idle_client_main(a))


def cmd_idle(a):
    """Opens N sessions against sluice, reads each greeting, and measures sluice's memory."""
    pid = a.pid
    time.sleep(0.5)
    before = status_field(pid, "VmRSS")
    client = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "idle-client", "--port", str(a.port),
         "--sessions", str(a.sessions)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    result = {"label": "idle", "relay": "sluice", "sessions": a.sessions, "rss_before": before}
    try:
        line = [None]

        def reader():
            line[0] = client.stdout.readline()

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        t.join(a.timeout)
        if not line[0]:
            result["status"] = "timeout"
            result["problems"] = [f"the idle client did not report within {a.timeout}s"]
        else:
            opened = json.loads(line[0])
            result.update(opened)
            time.sleep(3)  # let the sessions settle into their idle wait
            result["rss_idle"] = status_field(pid, "VmRSS")
            m = proc_mem(pid)
            result["pss_idle"] = m[1] if m else None
            result["threads"] = status_field(pid, "Threads")
            try:
                result["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
            except FileNotFoundError:
                result["fds"] = None
            result["status"] = "ok" if opened["greeted_220"] == a.sessions else "failed"
            result["problems"] = [] if result["status"] == "ok" else [
                f"only {opened['greeted_220']} of {a.sessions} sessions got a 220 greeting: "
                f"{opened['replies']} {opened['errors']}"
            ]
    finally:
        try:
            client.stdin.close()
        except BrokenPipeError:
            pass
        try:
            client.wait(30)
        except subprocess.TimeoutExpired:
            client.kill()
            client.wait()
    time.sleep(2)
    result["rss_after_close"] = status_field(pid, "VmRSS")
    result["vmhwm"] = status_field(pid, "VmHWM")
    if result.get("rss_idle") and before:
        result["per_session_kib"] = (result["rss_idle"] - before) / 1024 / a.sessions
    with open(a.results, "a") as f:
        f.write(json.dumps(result) + "\n")
    mib = lambda v: "-" if v is None else f"{v / 2**20:.1f} MiB"  # noqa: E731
    print(
        f"  sluice   {result['status']:8} {result.get('greeted_220', 0)} of {a.sessions} sessions greeted;"
        f" RSS before {mib(before)}, with the sessions {mib(result.get('rss_idle'))}"
        f" ({result.get('per_session_kib', 0):.1f} KiB/session), after closing {mib(result['rss_after_close'])};"
        f" {result.get('threads')} threads, {result.get('fds')} fds",
        flush=True,
    )
    for p in result.get("problems", []):
        print(f"           ! {p}", flush=True)
    return 0 if result["status"] == "ok" else 3


# ---------------------------------------------------------------------------------------------------
# small tools


def cmd_freeport(a):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])
    s.close()
    return 0


def cmd_pids_by_env(a):
    """Processes whose environment holds exactly NAME=VALUE (the Postfix processes of one instance carry
    MAIL_CONFIG=<its config directory>): how bench.sh finds what is left of an instance it started."""
    want = a.assignment.encode()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            env = read_file(f"/proc/{name}/environ", "rb").split(b"\0")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if want in env:
            print(name)
    return 0


def cmd_wait_smtp(a):
    deadline = time.monotonic() + a.seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", a.port), timeout=2) as s:
                s.settimeout(5)
                data = s.recv(512)
                if data.startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    try:
                        s.recv(512)
                    except OSError:
                        pass
                    return 0
        except OSError:
            pass
        time.sleep(0.1)
    print(f"nothing answered 220 on 127.0.0.1:{a.port} within {a.seconds}s", file=sys.stderr)
    return 1


# ---------------------------------------------------------------------------------------------------
# report


def cmd_report(a):
    rows = [json.loads(line) for line in open(a.results) if line.strip()]
    cases = [r for r in rows if r["label"] != "idle"]
    idle = [r for r in rows if r["label"] == "idle"]
    order = []
    runs = {}
    for r in cases:
        if r["label"] not in order:
            order.append(r["label"])
        runs.setdefault((r["label"], r["relay"]), []).append(r)

    def best(label, relay):
        """The least disturbed of a case's runs: the fastest end to end (other jobs on the machine only
        ever slow a run down); for the latency cases the lowest p99."""
        rs = runs.get((label, relay))
        if not rs:
            return None
        ok = [r for r in rs if r["status"] == "ok"] or rs
        if ok[0].get("latency"):
            return min(ok, key=lambda r: (r["latency"].get("tx_ms") or {}).get("p99", float("inf")))
        return max(ok, key=lambda r: r["e2e_per_s"] or -1)

    def ratio(x, y):
        if x is None or y is None or y == 0:
            return "-"
        return f"{x / y:.2f}×"

    mib = lambda v: "-" if v is None else f"{v / 2**20:.1f}"  # noqa: E731
    nruns = max((r.get("run", 1) for r in cases), default=1)
    out = []
    throughput = [label for label in order if not (best(label, "sluice") or best(label, "postfix")).get("latency")]
    latency = [label for label in order if label not in throughput]
    if throughput:
        if nruns > 1:
            out.append(f"Best of {nruns} runs per relay and case (fastest end to end; all runs are listed below).")
            out.append("")
        out.append(
            "| case | relay | messages | accepted msg/s | end-to-end msg/s | CPU s / 1000 msgs (user + sys) "
            "| peak RSS MiB | peak PSS MiB | other load (cores) | status |"
        )
        out.append("|---|---|--:|--:|--:|--:|--:|--:|--:|---|")
    for label in throughput:
        s, p = best(label, "sluice"), best(label, "postfix")
        title = (s or p)["title"]
        first = True
        for r, name in ((s, "sluice"), (p, "Postfix")):
            if r is None:
                continue
            out.append(
                f"| {title if first else ''} | {name} | {r['messages']} | {fmt(r['accepted_per_s'], '.0f')} "
                f"| {fmt(r['e2e_per_s'], '.0f')} "
                f"| {r['cpu_s_per_1000']:.2f} ({r['cpu_user_s'] * 1000 / r['messages']:.2f} + "
                f"{r['cpu_sys_s'] * 1000 / r['messages']:.2f}) "
                f"| {mib(r['peak_rss'])} | {mib(r['peak_pss'])} | {r.get('background_cores', 0):.2f} "
                f"| {r['status']} |"
            )
            first = False
        if s and p:
            out.append(
                f"| | **sluice / Postfix** | | **{ratio(s['accepted_per_s'], p['accepted_per_s'])}** "
                f"| **{ratio(s['e2e_per_s'], p['e2e_per_s'])}** "
                f"| {ratio(s['cpu_s_per_1000'], p['cpu_s_per_1000'])} "
                f"| {ratio(s['peak_rss'], p['peak_rss'])} | {ratio(s['peak_pss'], p['peak_pss'])} | | |"
            )
    if latency:
        out.append("")
        out.append(
            "| accept latency (MAIL sent → 250 after the data) | relay | transactions | accepted msg/s "
            "| p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | '.' → 250 p50 / p99 ms | CPU s / 1000 msgs "
            "| other load (cores) | status |"
        )
        out.append("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|")
        for label in latency:
            for relay, name in (("sluice", "sluice"), ("postfix", "Postfix")):
                r = best(label, relay)
                if r is None:
                    continue
                L = r["latency"]
                t, d = L["tx_ms"], L["dot_ms"]
                if not t:
                    out.append(f"| {r['title']} | {name} | 0 | | | | | | | | | | {r['status']} |")
                    continue
                out.append(
                    f"| {r['title'] if relay == 'sluice' else ''} | {name} | {t['n']} "
                    f"| {fmt(L['accepted_per_s'], '.0f')} | {t['p50']:.1f} "
                    f"| {t['p90']:.1f} | {t['p99']:.1f} | {t['p99.9']:.1f} | {t['max']:.1f} "
                    f"| {d['p50']:.1f} / {d['p99']:.1f} | {r['cpu_s_per_1000']:.2f} "
                    f"| {r.get('background_cores', 0):.2f} | {r['status']} |"
                )
    for r in idle:
        out.append("")
        out.append("| idle sessions (sluice) | greeted | RSS before | RSS with the sessions | per session "
                   "| RSS after they closed | threads | status |")
        out.append("|---|--:|--:|--:|--:|--:|--:|---|")
        out.append(
            f"| {r['sessions']} connected, greeting read, then silent | {r.get('greeted_220', 0)} "
            f"| {mib(r.get('rss_before'))} MiB | {mib(r.get('rss_idle'))} MiB "
            f"| {fmt(r.get('per_session_kib'), '.1f')} KiB | {mib(r.get('rss_after_close'))} MiB "
            f"| {r.get('threads', '-')} | {r['status']} |"
        )
    if nruns > 1 or any(len(v) > 1 for v in runs.values()):
        out.append("")
        out.append("All runs (in the order they ran):")
        out.append("")
        out.append("| case | run | relay | accepted msg/s | end-to-end msg/s | p99 ms | CPU s / 1000 msgs "
                   "| other load (cores) | load average | status |")
        out.append("|---|--:|---|--:|--:|--:|--:|--:|--:|---|")
        for r in cases:
            L = r.get("latency") or {}
            p99 = (L.get("tx_ms") or {}).get("p99")
            acc = L.get("accepted_per_s") if L else r["accepted_per_s"]
            out.append(
                f"| {r['title']} | {r.get('run', 1)} | {r['relay']} | {fmt(acc, '.0f')} "
                f"| {fmt(r['e2e_per_s'], '.0f')} | {fmt(p99, '.1f')} | {r['cpu_s_per_1000']:.2f} "
                f"| {r.get('background_cores', 0):.2f} | {r.get('loadavg_1m', 0):.1f} | {r['status']} |"
            )
    problems = [(r.get("title", r["label"]), r["relay"], r.get("run", 1), p)
                for r in rows for p in r.get("problems", [])]
    if problems:
        out.append("")
        out.append("Problems seen:")
        for title, relay, run, p in problems:
            out.append(f"- {title}, {relay}, run {run}: {p}")
    print("\n".join(out))
    return 0


# ---------------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)

    sub.add_parser("freeport").set_defaults(func=cmd_freeport)

    p = sub.add_parser("pids-by-env")
    p.add_argument("assignment", help="NAME=VALUE")
    p.set_defaults(func=cmd_pids_by_env)

    p = sub.add_parser("wait-smtp")
    p.add_argument("port", type=int)
    p.add_argument("seconds", type=float)
    p.set_defaults(func=cmd_wait_smtp)

    p = sub.add_parser("case")
    p.add_argument("--label", required=True)
    p.add_argument("--title", required=True)
    p.add_argument("--relay", choices=["sluice", "postfix"], required=True)
    p.add_argument("--pid", type=int, required=True, help="the relay's (root) process")
    p.add_argument("--queue-kind", choices=["sluice", "postfix"], required=True)
    p.add_argument("--queue-dir", required=True)
    p.add_argument("--sink-out", required=True)
    p.add_argument("--sink-pid", type=int)
    p.add_argument("--expect", type=int, required=True)
    p.add_argument("--results", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--latency-file")
    p.add_argument("--run", type=int, default=1, help="repetition number (the report keeps the best)")
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--stall", type=float, default=30)
    p.set_defaults(func=cmd_case)

    p = sub.add_parser("latency-client")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--messages", type=int, default=100, help="per client")
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--rcpts", type=int, default=1)
    p.add_argument("--rate", type=float, default=0, help="total messages/s, paced (0: as fast as possible)")
    p.add_argument("--reply-timeout", type=float, default=120)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_latency_client)

    p = sub.add_parser("idle")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--sessions", type=int, default=10000)
    p.add_argument("--timeout", type=float, default=180)
    p.add_argument("--results", required=True)
    p.set_defaults(func=cmd_idle)

    p = sub.add_parser("idle-client")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--sessions", type=int, required=True)
    p.add_argument("--parallel", type=int, default=256)
    p.add_argument("--connect-timeout", type=float, default=60)
    p.set_defaults(func=cmd_idle_client)

    p = sub.add_parser("report")
    p.add_argument("results")
    p.set_defaults(func=cmd_report)

    argv = sys.argv[1:]
    cmd = []
    if "--" in argv:  # everything after the first "--" is the load command, taken verbatim
        i = argv.index("--")
        argv, cmd = argv[:i], argv[i + 1 :]
    a = ap.parse_args(argv)
    a.cmd = cmd
    # bench.sh stops its helpers with SIGTERM: exit through SystemExit so that `finally` blocks stop the
    # children (load generators, the idle client) too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(a.func(a))


if __name__ == "__main__":
    main()
