"""The README's command lines, as a user copies them: every ```sh block, by the section it
sits in, with continuation lines joined and comments dropped. Tests run them as typed;
``[...]`` marks options (dropped) and upper-case words are placeholders (filled in)."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.lakes import ROOT

README = ROOT / "README.md"


@dataclass(frozen=True)
class Block:
    section: str
    lines: tuple[str, ...]


def _strip_comment(line: str) -> str:
    """``line`` without a trailing ``# comment`` (a ``#`` outside quotes after a blank)."""
    quote = None
    for i, c in enumerate(line):
        if quote:
            if c == quote and line[i - 1] != "\\":
                quote = None
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def _open_quote(text: str) -> bool:
    try:
        shlex.split(text, comments=False)
    except ValueError as exc:  # "No closing quotation" (not a final backslash's "No escaped")
        return "quotation" in str(exc)
    return False


def blocks(text: str | None = None) -> list[Block]:
    text = README.read_text() if text is None else text
    out: list[Block] = []
    section, inside, cur, pending = "", False, [], ""
    for raw in text.splitlines():
        if not inside and raw.startswith("#"):
            section = raw.lstrip("#").strip()
        elif raw.strip() == "```sh":
            inside, cur, pending = True, [], ""
        elif inside and raw.strip() == "```":
            inside = False
            out.append(Block(section, tuple(cur)))
        elif inside:
            line = _strip_comment(raw) if not _open_quote(pending) else raw
            if pending or line.strip():
                joined = pending + line.strip() if pending else line.strip()
                if _open_quote(joined):  # a quoted string goes on: keep its line break
                    pending = joined + "\n"
                elif joined.endswith("\\"):
                    pending = joined[:-1].rstrip() + " "
                else:
                    pending = ""
                    if joined:
                        cur.append(joined)
    return out


def without_options(line: str) -> str:
    """``line`` with its ``[...]`` option groups dropped (what a user types at the least)."""
    return re.sub(r"\s*\[[^\[\]]*\]", "", line)


def fill(line: str, values: dict[str, str]) -> str:
    """Replace each upper-case placeholder (a whole word, e.g. ``REPLAY_ID``) by its value;
    a placeholder left over fails: the test must know every one the README uses."""
    for k, v in values.items():
        line = re.sub(rf"(?<![\w-]){re.escape(k)}(?![\w-])", lambda _m, v=v: v, line)
    return line


#: Commands that run until signalled when typed without a stop flag.
LONG_RUNNING = ("replay follow", "replay ingest")
_STOPS = ("--until-idle", "--max-steps", "--max-messages")


@dataclass
class Ran:
    line: str
    returncode: int
    stdout: str
    stderr: str


class Shell:
    """Runs README lines one by one as a user types them in one terminal: in ``cwd``, with
    the project's virtualenv on PATH, ``export`` and ``. FILE`` lines carried to the lines
    after them.

    A line ending in ``&`` starts in the background (stopped with SIGINT by :meth:`close`).
    A long-running command typed without a stop flag (``replay follow``) runs until
    ``until()`` says so, then gets SIGINT as a user's Ctrl-C: it must exit 0."""

    def __init__(self, cwd, env: dict[str, str] | None = None) -> None:
        self.cwd = cwd
        bin_dir = str(Path(sys.executable).parent)
        self.env = {**os.environ, **(env or {}), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
        self.exports: list[str] = []
        self.background: list[tuple[str, object]] = []
        self.ran: list[Ran] = []

    def _script(self, line: str) -> str:
        return "\n".join([*self.exports, line])

    def run(self, line: str, timeout: float = 600, until=None, settle: float = 3.0) -> Ran:
        line = line.strip()
        if line.startswith(("export ", ". ", "source ")):  # the terminal keeps them
            self.exports.append(line)
        if line.endswith("&"):
            p = subprocess.Popen(["bash", "-c", self._script(line[:-1].rstrip())], cwd=self.cwd,
                                 env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, start_new_session=True)
            self.background.append((line, p))
            r = Ran(line, 0, "", "")
        elif line.startswith(LONG_RUNNING) and not any(s in line for s in _STOPS):
            # exec: the signal reaches the command itself, as Ctrl-C would
            p = subprocess.Popen(["bash", "-c", self._script("exec " + line)], cwd=self.cwd,
                                 env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
            deadline = time.monotonic() + timeout
            time.sleep(settle)
            while until is not None and not until() and time.monotonic() < deadline \
                    and p.poll() is None:
                time.sleep(0.5)
            p.send_signal(signal.SIGINT)
            out, err = p.communicate(timeout=120)
            r = Ran(line, p.returncode, out, err)
        else:
            p = subprocess.run(["bash", "-c", self._script(line)], cwd=self.cwd, env=self.env,
                               capture_output=True, text=True, timeout=timeout)
            r = Ran(line, p.returncode, p.stdout, p.stderr)
        self.ran.append(r)
        return r

    def close(self) -> list[Ran]:
        out = []
        for line, p in self.background:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGINT)
            o, e = p.communicate(timeout=120)
            out.append(Ran(line, p.returncode, o, e))
        self.background.clear()
        return out
