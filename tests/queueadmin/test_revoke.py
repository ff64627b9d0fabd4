"""The console socket loses its access when its staff member does (generation.watch)."""

import asyncio

import pytest

from queueadmin.consumers import FORBIDDEN, UNAUTHENTICATED, QueueConsumer
from tests.generation.conftest import close_code
from tests.polling import wait_for
from tests.queueadmin.conftest import LONG, TIMEOUT

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def console_as_staff(websocket_logged_in):
    """Log in as the staff member and open the console socket with that session."""
    return lambda: websocket_logged_in(QueueConsumer, "/ws/queue/", "sam", "pw-sam-123")


async def test_removing_staff_status_closes_the_console_with_4403(live, staff, console_as_staff):
    """The console streams while its user is staff; once staff status is
    removed it closes with 4403 within a second."""
    _, socket = await console_as_staff()
    assert (await socket.receive_json_from(TIMEOUT))["type"] == "queue.status"
    staff.is_staff = False
    await staff.asave(update_fields=["is_staff"])
    assert await close_code(socket, within=1.0) == FORBIDDEN


async def test_a_cancel_after_staff_status_is_removed_is_refused(live, staff, console_as_staff):
    """A Cancel sent right after staff status is removed, before the watch's
    next check, does not stop another person's reply; the socket closes with 4403."""
    handle = live.submit(user_id=101, messages=LONG)
    await wait_for(lambda: handle.id in live.running, timeout=TIMEOUT)
    _, socket = await console_as_staff()
    staff.is_staff = False
    await staff.asave(update_fields=["is_staff"])
    await socket.send_json_to({"type": "cancel", "request": handle.id})
    assert await close_code(socket, within=1.0) == FORBIDDEN
    await asyncio.sleep(0.3)
    assert handle.id in live.running


async def test_logout_closes_the_console_with_4401(live, staff, console_as_staff):
    """Logging out closes the open console with 4401 within a second."""
    client, socket = await console_as_staff()
    await client.alogout()
    assert await close_code(socket, within=1.0) == UNAUTHENTICATED
