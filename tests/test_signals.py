"""signals_deferred: a Ctrl-C / SIGTERM that arrives inside the block is acted on right after it, never inside."""

from __future__ import annotations

import signal
import threading

import pytest

from sam3edge.runtime.signals import signals_deferred


@pytest.fixture(autouse=True)
def python_sigint_handler():
    """Each test starts from Python's own SIGINT handler, whatever the launcher or an earlier test left."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_ctrl_c_inside_the_block_lets_it_finish_then_raises():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with signals_deferred():
            signal.raise_signal(signal.SIGINT)
            done.append("after the signal")  # still runs: the handler only recorded it
    assert done == ["after the signal"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is back in place


def test_the_handler_in_place_gets_the_signal_once_and_handlers_are_restored():
    got = []

    class Stop(Exception):
        pass

    def on_term(signum, frame):
        got.append(signum)
        raise Stop

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        with pytest.raises(Stop):
            with signals_deferred():
                signal.raise_signal(signal.SIGTERM)
                signal.raise_signal(signal.SIGTERM)
                assert got == []
        assert got == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGTERM) is on_term
        with signals_deferred():  # no signal: nothing happens
            pass
        assert got == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_an_ignored_signal_stays_ignored_and_an_error_inside_wins():
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with signals_deferred():
            signal.raise_signal(signal.SIGTERM)
        with pytest.raises(ValueError, match="disk"):
            with signals_deferred():
                signal.raise_signal(signal.SIGINT)
                raise ValueError("disk full")  # the error ends the work; the recorded Ctrl-C is not raised over it
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_outside_the_main_thread_the_block_just_runs():
    seen, errors = [], []

    def work():
        try:
            with signals_deferred():
                seen.append(signal.getsignal(signal.SIGINT))
        except Exception as e:  # signal.signal from this thread would raise ValueError
            errors.append(e)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert errors == [] and seen == [signal.default_int_handler]


def test_a_ctrl_c_after_openvino_bundles_were_swapped_is_a_keyboard_interrupt_not_a_crash(toy_bundles, tmp_path):
    """A robot that loads a new bundle and drops the old one, then gets a Ctrl-C. Each OpenVINO Core's CPU plugin
    swaps the thread's alternate signal stack and puts back the one it found when released, so Cores released
    out of order left a freed stack in place and the signal killed the process (SIGSEGV, no traceback: the full
    test suite died this way). Run in a fresh process: the bug needs the signal stack Python had before."""
    import subprocess
    import sys

    script = tmp_path / "swap.py"
    script.write_text(f"""
import faulthandler, gc, signal
faulthandler.enable()  # as under pytest or python -X faulthandler: a signal stack is in place before OpenVINO's
import numpy as np
from sam3edge.runtime.segmenter import Segmenter
frame = np.zeros((48, 64, 3), np.uint8)
old = Segmenter.load({str(toy_bundles["openvino"])!r}, backend="openvino", threads=1)
old.segment(frame)
new = Segmenter.load({str(toy_bundles["openvino"])!r}, backend="openvino", threads=1)
new.segment(frame)
del old  # released before the one loaded after it
gc.collect()
new.segment(frame)
del new
gc.collect()
signal.signal(signal.SIGINT, signal.default_int_handler)
try:
    signal.raise_signal(signal.SIGINT)
except KeyboardInterrupt:
    print("interrupted cleanly")
""")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "interrupted cleanly" in proc.stdout, \
        f"exit {proc.returncode}; stderr ends {proc.stderr[-1500:]!r}"
