"""Progress of key jobs (``keys rotate | reindex | rotate-master``): a bar redrawn in place on
a terminal; plain lines, never carriage returns, when stderr is a file or a pipe."""

from __future__ import annotations

import io

from kyc_host.crypto.jobs import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_without_a_terminal_is_one_plain_line() -> None:
    out = io.StringIO()
    bar = Progress("customers", 3, out)
    for _ in range(3):
        bar.advance()
    bar.close()
    text = out.getvalue()
    assert "\r" not in text
    [line] = text.splitlines()
    assert line.startswith("customers")
    assert "[" + "#" * 30 + "] 3/3" in line
    assert text.endswith("\n")


def test_progress_without_a_terminal_logs_a_line_now_and_then() -> None:
    out = io.StringIO()
    bar = Progress("files", 10, out)
    bar.LOG_INTERVAL = 0.0  # every advance is "a while later"
    for _ in range(10):
        bar.advance()
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert [line.split("] ")[1].split()[0] for line in lines] == [
        *(f"{n}/10" for n in range(1, 10)), "10/10"]  # the final count once, by close()


def test_progress_on_a_terminal_is_redrawn_in_place() -> None:
    out = Terminal()
    bar = Progress("customers", 2, out)
    bar.advance(2)
    bar.close()
    text = out.getvalue()
    assert text.startswith("\rcustomers")
    assert text.endswith("\n")
    assert text.count("\n") == 1


def test_quiet_progress_writes_nothing() -> None:
    out = io.StringIO()
    bar = Progress("customers", 2, out, enabled=False)
    bar.advance(2)
    bar.close()
    assert out.getvalue() == ""
