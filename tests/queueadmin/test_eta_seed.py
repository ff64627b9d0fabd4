"""A restarted process remembers the site's run times: its first waiting
request gets a start estimate from the replies recorded before it started."""

import datetime

import pytest

from generation.runtime.types import Queued
from queueadmin.models import GenerationRecord
from tests.polling import wait_for
from tests.queueadmin.conftest import LONG, TIMEOUT

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def recorded_replies():
    """Three replies that ran 20 s each, completed before the service starts,
    and one cancelled after 300 s (not a run time to expect)."""
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=10)
    for index, (outcome, run_s) in enumerate([("completed", 20)] * 3 + [("cancelled", 300)]):
        started = start + datetime.timedelta(seconds=30 * index)
        GenerationRecord.objects.create(
            request_id=f"before-{index}",
            worker="earlier:1",
            enqueued_at=started,
            started_at=started,
            finished_at=started + datetime.timedelta(seconds=run_s),
            outcome=outcome,
        )


@pytest.fixture
def one_slot(settings):
    settings.GENERATION_MAX_CONCURRENCY = 1
    settings.GENERATION_MAX_NEW_TOKENS = 4000


async def test_a_new_service_estimates_from_the_recorded_run_times(recorded_replies, one_slot, live):
    """One slot, a reply just started, replies that took 20 s: the next in
    line starts in about 20 s, the one after in about 40 s."""
    await wait_for(lambda: live.run_times.mean() == 20, timeout=TIMEOUT)
    running = live.submit(user_id=1, messages=LONG)
    waiting = [live.submit(user_id=user, messages=LONG) for user in (2, 3)]
    first = waiting[0].request.events.get_nowait()
    assert first == Queued(position=1, waiting=1, model_state="ready", eta_s=20)
    assert waiting[1].request.events.get_nowait().eta_s == 40
    for handle in (running, *waiting):
        handle.cancel()
