"""HTTP views of the chat."""

from django.contrib.auth.decorators import login_required
from django.shortcuts import render


@login_required
def chat(request):
    """Render the chat page for the logged-in user."""
    return render(request, "generation/chat.html")
