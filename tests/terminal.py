"""Running a command in a pseudo-terminal, and what a terminal would show of its output."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import termios


def run_in_terminal(cmd: list[str], cols: int = 160, **kw) -> tuple[int, str]:
    """(exit code, raw output) of ``cmd`` with a terminal of ``cols`` columns as its stdin,
    stdout and stderr."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, cols, 0, 0))
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, **kw)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: every writer closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return proc.wait(timeout=60), b"".join(chunks).decode("utf-8", "replace")


def screen(raw: str) -> list[str]:
    """The lines a terminal keeps of ``raw``: a carriage return goes back to the line's start and
    what follows overwrites; ESC[nA moves up n lines, ESC[K clears to the line's end."""
    lines: list[str] = []
    cur: list[str] = []
    col, i = 0, 0
    raw = raw.replace("\r\n", "\n")
    while i < len(raw):
        ch = raw[i]
        if ch == "\x1b" and (m := re.match(r"\x1b\[(\d*)([A-Za-z])", raw[i:])):
            if m[2] == "A":
                for _ in range(int(m[1] or 1)):
                    if lines:
                        cur, col = list(lines.pop()), 0
            elif m[2] == "K":
                del cur[col:]
            i += len(m[0])
            continue
        if ch == "\r":
            col = 0
        elif ch == "\n":
            lines.append("".join(cur).rstrip())
            cur, col = [], 0
        else:
            if col < len(cur):
                cur[col] = ch
            else:
                cur.append(ch)
            col += 1
        i += 1
    if cur:
        lines.append("".join(cur).rstrip())
    return lines
