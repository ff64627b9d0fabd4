"""Untrusted input to the console and the admin forms: a clear answer, nothing stored."""

import asyncio
import json
import time

import pytest

from generation import services
from generation.runtime.types import ERROR_TEXT, ErrorCode
from queueadmin import consumers
from queueadmin.models import GenerationSettings
from tests.queueadmin.conftest import LIMITS, LONG, next_answer

BAD_NUMBERS = ["1\x00", "\U0001f600", "9" * 5000, "1e400", "", "1; DROP TABLE"]


@pytest.mark.django_db(transaction=True)
async def test_console_socket_refuses_malformed_cancels(live, staff, console_socket):
    """Every malformed cancel gets `invalid` with its words for the console's
    status line, including a request id with a trailing newline; the request
    it names keeps running; the socket stays usable."""
    handle = live.submit(user_id=1, messages=LONG)
    socket = await console_socket(staff)
    frames = [
        json.dumps({"type": "cancel", "request": handle.id + "\n"}),
        json.dumps({"type": "cancel", "request": handle.id + "\x00"}),
        json.dumps({"type": "cancel", "request": "\ud800"}),
        json.dumps({"type": "cancel", "request": ["a"]}),
        json.dumps({"type": "cancel", "request": "a" * 65}),
        json.dumps({"type": "cancel", "request": "x" * 2000}),
        '{"type": "cancel", "request": "\\udfff"}',
        "not json",
        "[" * 500 + "]" * 500,
    ]
    invalid = {"type": "error", "code": "invalid", "message": ERROR_TEXT[ErrorCode.INVALID]}
    for frame in frames:
        await socket.send_to(text_data=frame)
        assert await next_answer(socket) == invalid, frame[:40]
    await socket.send_to(bytes_data=b"\x00\x01")
    assert await next_answer(socket) == invalid
    assert handle.id in live.running
    await socket.send_json_to({"type": "cancel", "request": handle.id})
    assert await next_answer(socket) == {"type": "cancel.sent", "request": handle.id}


@pytest.mark.django_db
@pytest.mark.parametrize("bad", BAD_NUMBERS)
def test_settings_forms_refuse_values_that_are_not_numbers(client, admin_user, bad):
    """The console form and the GenerationSettings admin page answer a form
    error for NUL, emoji, huge, empty and other non-numbers; nothing is saved."""
    client.force_login(admin_user)
    response = client.post("/admin/queue/", {**LIMITS, "max_new_tokens": bad})
    assert response.status_code == 400
    assert response.context["form"].errors["max_new_tokens"]
    response = client.post("/admin/queueadmin/generationsettings/add/", {**LIMITS, "max_new_tokens": bad})
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["max_new_tokens"]
    assert not GenerationSettings.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("username", "error"),
    [
        ("a%00b", "Null characters are not allowed."),
        ("%ED%A0%80", "Enter a valid username."),  # a surrogate's UTF-8 bytes: not text
        ("x" * 151, "Ensure this value has at most 150 characters"),
    ],
    ids=["NUL", "surrogate bytes", "151 characters"],
)
def test_user_admin_refuses_usernames_that_cannot_be_stored(
    client, admin_user, django_user_model, username, error
):
    """The admin's add-user form refuses NUL, invalid UTF-8 and over-long names
    with a form error; no user is created."""
    client.force_login(admin_user)
    password = "pw-long-enough-123"
    body = f"username={username}&password1={password}&password2={password}&usable_password=true"
    response = client.post("/admin/auth/user/add/", body, content_type="application/x-www-form-urlencoded")
    assert response.status_code == 200
    assert error in response.content.decode()
    assert django_user_model.objects.count() == 1


@pytest.mark.django_db
def test_conversation_admin_refuses_a_nul_title(client, admin_user):
    """The conversation admin form refuses NUL in a title; the old title stays."""
    conversation = services.conversation_create(owner=admin_user, title="old")
    client.force_login(admin_user)
    response = client.post(
        f"/admin/generation/conversation/{conversation.pk}/change/",
        {"title": "a\x00b", "owner": admin_user.pk, "messages-TOTAL_FORMS": 0, "messages-INITIAL_FORMS": 0},
    )
    assert response.status_code == 200
    assert "Null characters are not allowed." in response.content.decode()
    conversation.refresh_from_db()
    assert conversation.title == "old"


@pytest.mark.django_db(transaction=True)
async def test_console_socket_drops_a_flood_of_cancels_with_one_notice(live, staff, console_socket):
    """A console socket may not queue unbounded work either: 2,000 cancels sent
    at once are not each checked and broadcast; those over the rate limit are
    dropped with one `invalid` notice a second, and the socket still answers."""
    socket = await console_socket(staff)
    began = time.monotonic()
    for _ in range(2000):
        await socket.send_json_to({"type": "cancel", "request": "ab" * 16})
    answers = []
    while time.monotonic() - began < 3:
        try:
            answers.append(await asyncio.wait_for(next_answer(socket), 0.5))
        except TimeoutError:
            break
    elapsed = time.monotonic() - began
    allowed = consumers.FRAME_BURST + (consumers.FRAME_RATE_PER_S + 1) * (elapsed + 1)
    assert len(answers) <= allowed, (len(answers), elapsed)
    assert any(a["type"] == "error" and "slow down" in a.get("message", "") for a in answers)
    await asyncio.sleep(1.0)  # the bucket refills
    await socket.send_json_to({"type": "cancel", "request": "cd" * 16})
    assert await next_answer(socket) == {"type": "cancel.sent", "request": "cd" * 16}
