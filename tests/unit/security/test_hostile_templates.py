"""A GGUF's chat template is untrusted: it cannot read files, run code, loop forever or fill memory."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lokal.store.gguf_facts import read_gguf_facts
from lokal.templates.chat_template import MAX_RENDER_S, ChatTemplate, TemplateError

MESSAGES = [{"role": "user", "content": "hi"}]


def hostile_templates(secret: Path, marker: Path) -> dict[str, str]:
    return {
        "open a file": f"{{{{ open('{secret}').read() }}}}",
        "jinja loader": f"{{% include '{secret}' %}}",
        "python internals": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "globals of a helper": "{{ raise_exception.__globals__['os'].system('touch " + str(marker) + "') }}",
        "cycler globals": "{{ cycler.__init__.__globals__.os.popen('touch " + str(marker) + "').read() }}",
        "template context": "{{ self._TemplateReference__context.cycler.__init__.__globals__.os }}",
        "mutate a list": "{% set x = [] %}{{ x.append(1) }}",
        "format string": "{{ '{0.__class__}'.format(messages) }}",
    }


@pytest.mark.parametrize("name", list(hostile_templates(Path("s"), Path("m"))))
def test_a_hostile_gguf_template_cannot_read_files_or_run_code(
        name: str, tiny_gguf: Callable[..., Path], tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-VALUE")
    marker = tmp_path / "pwned"
    source = hostile_templates(secret, marker)[name]
    facts = read_gguf_facts(tiny_gguf(chat_template=source))
    assert facts.chat_template == source  # the template really comes from the GGUF's metadata
    try:
        text = ChatTemplate.for_model(facts.chat_template, "llama", "<s>", "</s>").render(MESSAGES)
    except TemplateError:
        text = ""
    assert "TOP-SECRET-VALUE" not in text
    assert not marker.exists()


@pytest.mark.parametrize("source", [
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% set ns = namespace(x=[]) %}{% for i in range(100000) %}{% set ns.x = ns.x + [i] %}{% endfor %}",
])
def test_a_template_that_loops_forever_is_stopped_at_the_deadline(source: str) -> None:
    started = time.perf_counter()
    with pytest.raises(TemplateError, match="longer than"):
        ChatTemplate(source).render(MESSAGES)
    assert time.perf_counter() - started < MAX_RENDER_S + 2


@pytest.mark.parametrize("source", [
    "{{ 'a' * 1000000000 }}",
    "{% for i in range(100000) %}{% for j in range(1000) %}{{ 'x' * 100 }}{% endfor %}{% endfor %}",
    "{{ 2 ** 100000000 }}",
])
def test_a_template_cannot_fill_memory(source: str) -> None:
    started = time.perf_counter()
    with pytest.raises(TemplateError, match="oversized"):
        ChatTemplate(source).render(MESSAGES)
    assert time.perf_counter() - started < MAX_RENDER_S + 2


def test_ordinary_templates_still_render() -> None:
    source = "{% for m in messages %}<|{{ m['role'] }}|>{{ m.content | trim }}{% endfor %}{{ 'ab' * 3 }}{{ 2 ** 10 }}"
    assert ChatTemplate(source).render(MESSAGES) == "<|user|>hiababab1024"


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("source", "error"), [
    # no call, attribute or item access in the loops: the sandbox's own checks never run
    ("{% set s = '" + "x" * 40_000 + "' %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}",
     "took longer than"),
    ("{% set c = messages[0]['content'] %}{% for a in c %}{% for b in c %}{% endfor %}{% endfor %}{{ c }}",
     "took longer than"),
    # one filter call that allocates a gigabyte before any size check
    ("{{ 'x'|center(1000000000) }}", "needed more than"),
], ids=["loops over a literal", "loops over message text", "center a billion"])
def test_a_hostile_gguf_template_is_stopped_by_the_renders_time_and_memory_budget(
        source: str, error: str, tiny_gguf: Callable[..., Path]) -> None:
    facts = read_gguf_facts(tiny_gguf(chat_template=source))
    assert facts.chat_template == source
    template = ChatTemplate.for_model(facts.chat_template, "llama", "<s>", "</s>")
    ChatTemplate("{{ 1 }}").render(MESSAGES)  # a render worker is up: what follows times the render only
    started = time.perf_counter()
    with pytest.raises(TemplateError, match=error):
        template.render([{"role": "user", "content": "y" * 40_000}])
    assert time.perf_counter() - started < MAX_RENDER_S + 1
