from worker.programs.guard import ESSENTIAL_PROGRAMS, CrashCounter, verdict


def test_fatal_stops_supervisord_at_once():
    reason = verdict("PROCESS_STATE_FATAL", {"processname": "rotator"}, CrashCounter(), 0.0)
    assert reason and "rotator" in reason and "FATAL" in reason


def test_a_crash_loop_is_caught_before_it_would_become_fatal():
    counter = CrashCounter(limit=5, window_s=60)
    fields = {"processname": "reader", "expected": "0"}
    results = [verdict("PROCESS_STATE_EXITED", fields, counter, t) for t in range(0, 50, 10)]
    assert results[:4] == [None] * 4
    assert results[4] and "crash loop" in results[4]


def test_spread_out_crashes_are_not_a_loop():
    counter = CrashCounter(limit=5, window_s=60)
    fields = {"processname": "reader", "expected": "0"}
    assert all(verdict("PROCESS_STATE_EXITED", fields, counter, t) is None
               for t in range(0, 1000, 30))


def test_programs_are_counted_apart_and_expected_exits_count_too():
    """reader and rotator start with startsecs=0: one that exits 0 at once is started again
    at once, never FATAL; only the guard's count stops that loop."""
    counter = CrashCounter(limit=2, window_s=60)

    def exited(name, expected, now):
        fields = {"processname": name, "expected": expected}
        return verdict("PROCESS_STATE_EXITED", fields, counter, now)

    assert exited("reader", "0", 1) is None
    assert exited("rotator", "1", 2) is None
    assert exited("reader", "1", 3)


def test_a_model_server_that_cannot_stay_up_never_ends_the_container():
    """Issue 18, item 1: a flood of clients made the model server crash five times and the
    guard then shut supervisord down: nothing was published any more."""
    counter = CrashCounter(limit=5, window_s=60)
    fields = {"processname": "model-server", "expected": "0"}
    assert all(verdict("PROCESS_STATE_EXITED", fields, counter, t) is None for t in range(10))
    assert verdict("PROCESS_STATE_FATAL", fields, counter, 10.0) is None
    assert ESSENTIAL_PROGRAMS == ("reader", "rotator")
