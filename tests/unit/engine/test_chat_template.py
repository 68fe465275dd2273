"""Templates are untrusted: they render in a sandbox and fail with TemplateError, not worse."""

import pytest

from lokal.templates.chat_template import CHATML_TEMPLATE, ChatTemplate, TemplateError

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def test_chatml_fallback_renders_turns_and_generation_prompt():
    text = ChatTemplate.for_model(None, "llama", "", "").render(MESSAGES)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_gemma_fallback_folds_system_into_first_user_turn():
    text = ChatTemplate.for_model(None, "gemma3", "<bos>", "<eos>").render(MESSAGES)
    assert text == "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"


def test_model_template_with_bos_and_raise_exception():
    src = (
        "{{ bos_token }}{% for m in messages %}{% if m.role == 'tool' %}"
        "{{ raise_exception('no tools') }}{% endif %}[{{ m.role }}]{{ m.content }}{% endfor %}"
    )
    tpl = ChatTemplate(src, bos_token="<s>")
    assert tpl.render(MESSAGES) == "<s>[system]Be brief.[user]Hi"
    with pytest.raises(TemplateError, match="no tools"):
        tpl.render([{"role": "tool", "content": "x"}])


@pytest.mark.parametrize(
    "hostile",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ messages.__class__.__init__.__globals__ }}",
        "{{ raise_exception.__globals__['__builtins__']['open']('/etc/passwd').read() }}",
        "{% set x = cycler.__init__.__globals__.os.popen('id').read() %}{{ x }}",
        "{{ self.__init__.__globals__.__builtins__.__import__('os').system('touch /tmp/pwned') }}",
        "{% for m in messages %}{{ m.update({'role': 'x'}) }}{% endfor %}",
    ],
)
def test_hostile_template_cannot_reach_python_internals(hostile):
    try:
        out = ChatTemplate(hostile).render([{"role": "user", "content": "hi"}])
    except TemplateError:
        return
    # Rendering may "succeed" only with harmless output: no file contents, no objects leaked.
    assert "root:" not in out and "<class" not in out and "function" not in out


def test_template_that_does_not_compile_is_a_template_error():
    with pytest.raises(TemplateError, match="does not compile"):
        ChatTemplate("{% for %}")


def test_oversized_template_is_refused():
    with pytest.raises(TemplateError):
        ChatTemplate("x" * (300 * 1024))


def test_chatml_constant_is_a_valid_template():
    assert "<|im_start|>user" in ChatTemplate(CHATML_TEMPLATE).render(MESSAGES)
