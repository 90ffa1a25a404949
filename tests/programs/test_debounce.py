from worker.programs.debounce import Debounce


def test_idle_has_no_deadline():
    debounce = Debounce(5, 20)
    assert debounce.deadline is None
    assert not debounce.due(1e9)


def test_fires_delay_after_the_last_event():
    debounce = Debounce(5, 20)
    debounce.touch(100)
    debounce.touch(103)
    assert debounce.deadline == 108
    assert not debounce.due(107.9)
    assert debounce.due(108)


def test_an_endless_stream_is_capped():
    debounce = Debounce(5, 20)
    for now in range(100, 200):
        debounce.touch(now)
        if debounce.due(now):
            break
    assert now == 120, "a stream of events postponed the reconcile past the cap"


def test_clear_starts_a_new_burst():
    debounce = Debounce(5, 20)
    debounce.touch(100)
    debounce.clear()
    assert debounce.deadline is None
    debounce.touch(200)
    assert debounce.deadline == 205


def test_cap_never_shorter_than_delay():
    debounce = Debounce(5, 1)
    debounce.touch(0)
    assert debounce.deadline == 5
