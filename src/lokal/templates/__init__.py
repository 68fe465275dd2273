"""Chat templates: Jinja (rendered in a sandbox) and Ollama Go templates translated into Jinja.

A leaf package: the store validates templates with it and the runtime renders prompts with it."""
