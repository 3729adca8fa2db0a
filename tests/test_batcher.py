from worker.batcher import Batcher


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_closes_on_item_count() -> None:
    clock = FakeClock()
    b: Batcher[int] = Batcher(max_items=3, max_tokens=1000, max_wait_s=1.0, now=clock)
    for i in range(2):
        b.add(i, 1)
    assert not b.due()
    b.add(2, 1)
    assert b.due() and b.full
    assert b.take() == [0, 1, 2]
    assert len(b) == 0 and b.time_left() is None


def test_closes_on_token_budget_and_keeps_the_rest() -> None:
    clock = FakeClock()
    b: Batcher[str] = Batcher(max_items=10, max_tokens=100, max_wait_s=1.0, now=clock)
    b.add("a", 60)
    assert not b.due()
    b.add("b", 50)
    assert b.due()
    assert b.take() == ["a"]  # "b" would exceed the budget: it waits for the next batch
    assert len(b) == 1 and not b.full


def test_oversized_single_item_still_goes_out() -> None:
    b: Batcher[str] = Batcher(max_items=10, max_tokens=10, max_wait_s=1.0, now=FakeClock())
    b.add("huge", 500)
    assert b.due()
    assert b.take() == ["huge"]


def test_closes_on_age_of_oldest_item() -> None:
    clock = FakeClock()
    b: Batcher[int] = Batcher(max_items=10, max_tokens=1000, max_wait_s=0.02, now=clock)
    b.add(1, 5)
    clock.t += 0.015
    b.add(2, 5)
    assert not b.due()
    assert abs((b.time_left() or 0) - 0.005) < 1e-9
    clock.t += 0.005
    assert b.due() and b.time_left() == 0.0
    assert b.take() == [1, 2]


def test_leftover_deadline_follows_its_own_arrival() -> None:
    clock = FakeClock()
    b: Batcher[int] = Batcher(max_items=2, max_tokens=1000, max_wait_s=1.0, now=clock)
    b.add(1, 1)
    b.add(2, 1)
    clock.t += 0.5
    b.add(3, 1)
    assert b.take() == [1, 2]
    assert b.time_left() == 1.0  # 3 arrived at t+0.5; its deadline is t+1.5
    assert b.take_all() == [3]


def test_budget_counts_padded_tokens_longest_times_items() -> None:
    # Three texts of 10, 10 and 40 tokens: 60 real tokens, but one call pads all three to 40 (120).
    b: Batcher[str] = Batcher(max_items=10, max_tokens=100, max_wait_s=1.0, now=FakeClock())
    b.add("a", 10)
    b.add("b", 10)
    assert not b.due()  # 2 x 10 = 20
    b.add("long", 40)
    assert b.due()  # 3 x 40 = 120 > 100: the long one starts the next batch
    assert b.take() == ["a", "b"]
    assert b.take() == ["long"]


def test_drop_removes_queued_items() -> None:
    b: Batcher[int] = Batcher(max_items=10, max_tokens=1000, max_wait_s=1.0, now=FakeClock())
    for i in range(5):
        b.add(i, 1)
    assert b.drop(lambda i: i % 2 == 1) == 2
    assert b.take_all() == [0, 2, 4]


def test_adaptive_sends_at_once_when_idle_and_waits_when_busy() -> None:
    clock = FakeClock()
    b: Batcher[int] = Batcher(max_items=3, max_tokens=1000, max_wait_s=0.05, now=clock)
    b.add(1, 5)
    assert b.due(idle=True), "an idle batch thread should not wait for company"
    assert not b.due(idle=False)
    b.add(2, 5)
    clock.t += 0.05
    assert b.due(idle=False)  # busy: the oldest item's max wait still bounds latency
    for i in range(3, 8):
        b.add(i, 5)
    assert b.take() == [1, 2, 3]  # still bounded by the limits
