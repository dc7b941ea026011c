"""rankdecay.progress: the one progress bar and the SIGINT/SIGTERM flag every long job uses."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from rankdecay.progress import ProgressBar, StopFlag


def test_disabled_bar_shows_nothing(capfd: pytest.CaptureFixture[str]) -> None:
    bar = ProgressBar(False, 10, "steps")
    bar.update(3, text="loss 1")
    bar.update(advance=2, label="other")
    bar.close()
    assert capfd.readouterr() == ("", "")


def test_enabled_bar_writes_label_count_and_text_to_stderr(
    capfd: pytest.CaptureFixture[str],
) -> None:
    bar = ProgressBar(True, 10, "steps", completed=2)
    bar.update(5, text="loss 0.25")
    bar.update(advance=2, label="phase two")
    bar.close()
    bar.close()  # closing twice is harmless
    out, err = capfd.readouterr()
    assert out == ""
    assert "phase two" in err and "7/10" in err and "loss 0.25" in err


def test_stop_flag_turns_sigterm_into_a_flag_and_restores_the_handler() -> None:
    before = signal.getsignal(signal.SIGTERM)
    stop = StopFlag()
    with stop.installed():
        assert stop.signal is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signal == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before


def test_second_ctrl_c_aborts() -> None:
    stop = StopFlag()
    with stop.installed():
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signal == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def test_stop_flag_outside_the_main_thread_installs_nothing() -> None:
    seen: list[object] = []

    def worker() -> None:
        with StopFlag().installed() as stop:
            seen.append(stop.signal)

    before = signal.getsignal(signal.SIGINT)
    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == [None] and signal.getsignal(signal.SIGINT) is before
