"""OpenAI's Responses API under /v1/responses: stateful, stored in the UI's SQLite file."""
