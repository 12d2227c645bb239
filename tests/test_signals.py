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
