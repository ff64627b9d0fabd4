"""The OpenAI-compatible API at /v1/: chat completions through the same queue as the chat.

`schema` checks a request body, `errors` words refusals in OpenAI's shape,
`shapes` and `sse` build the answers (whole, or streamed as server-sent
events), `views` serves them, authenticated by the caller's API key
(generation.models.ApiKey) and never by a session. docs/api.md is the
guide for people.
"""
