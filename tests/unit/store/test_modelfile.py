"""Modelfile parsing and rendering: every instruction, quoting, errors that name lines, hostile input."""

from __future__ import annotations

import pytest

from lokal.store.gguf_facts import GgufFacts
from lokal.store.manifest import Manifest
from lokal.store.modelfile import (
    MAX_INSTRUCTIONS,
    MAX_MODELFILE_CHARS,
    AdapterRef,
    Modelfile,
    ModelfileError,
    parse_modelfile,
    parse_parameter,
    render_modelfile,
)

DIGEST = "sha256:" + "ab" * 32


def error_of(text: str) -> str:
    with pytest.raises(ModelfileError) as info:
        parse_modelfile(text)
    return str(info.value)


# -- instructions --------------------------------------------------------------------------


def test_every_instruction_is_parsed() -> None:
    spec = parse_modelfile(
        "FROM smollm2:135m\n"
        "PARAMETER temperature 0.3\n"
        "PARAMETER num_ctx 2048\n"
        "PARAMETER stop <|im_end|>\n"
        'PARAMETER stop "User:"\n'
        "PARAMETER penalize_newline false\n"
        "SYSTEM You are a pirate.\n"
        'TEMPLATE "{% for m in messages %}{{ m.content }}{% endfor %}"\n'
        "MESSAGE user Who are you?\n"
        "MESSAGE assistant Arr, a pirate.\n"
        "LICENSE MIT\n"
    )
    assert spec == Modelfile(
        from_="smollm2:135m",
        parameters={"temperature": 0.3, "num_ctx": 2048, "stop": ["<|im_end|>", "User:"], "penalize_newline": False},
        system="You are a pirate.",
        template="{% for m in messages %}{{ m.content }}{% endfor %}",
        messages=[{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "Arr, a pirate."}],
        license="MIT",
    )


def test_parameter_values_are_typed() -> None:
    spec = parse_modelfile(
        "FROM x\nPARAMETER seed 42\nPARAMETER top_p 1\nPARAMETER top_k 40\nPARAMETER use_mmap TRUE\n"
        "PARAMETER repeat_penalty 1.1\nPARAMETER num_predict -1\n"
    )
    assert spec.parameters == {
        "seed": 42, "top_p": 1.0, "top_k": 40, "use_mmap": True, "repeat_penalty": 1.1, "num_predict": -1,
    }
    assert isinstance(spec.parameters["top_p"], float) and isinstance(spec.parameters["seed"], int)


def test_instruction_keywords_and_parameter_names_ignore_case() -> None:
    spec = parse_modelfile("from base\nParameter Temperature 0.1\nsystem hi\nMessage USER hello\nlicense x\n")
    assert spec.from_ == "base" and spec.parameters == {"temperature": 0.1} and spec.system == "hi"
    assert spec.messages == [{"role": "user", "content": "hello"}] and spec.license == "x"


def test_comments_and_blank_lines_are_skipped_and_hash_inside_values_is_kept() -> None:
    spec = parse_modelfile("# a comment\n\n   # indented comment\nFROM base\n\nSYSTEM use # as a prompt\n")
    assert spec.system == "use # as a prompt"


def test_later_system_and_template_win_and_licenses_accumulate() -> None:
    spec = parse_modelfile('FROM b\nSYSTEM one\nSYSTEM two\nLICENSE """MIT"""\nLICENSE Apache-2.0\n')
    assert spec.system == "two"
    assert spec.license == "MIT\n\nApache-2.0"


def test_from_accepts_paths_and_digests_verbatim() -> None:
    assert parse_modelfile("FROM ./models/my model.gguf").from_ == "./models/my model.gguf"
    assert parse_modelfile(f"FROM {DIGEST}").from_ == DIGEST
    assert parse_modelfile('FROM "/tmp/x.gguf"').from_ == "/tmp/x.gguf"


def test_a_second_from_is_the_vision_projector_as_in_ollama() -> None:
    mf = parse_modelfile("FROM smollm2:135m\nFROM ./mmproj.gguf\n")
    assert mf.from_ == "smollm2:135m" and mf.projector == "./mmproj.gguf"
    assert parse_modelfile("FROM smollm2:135m\n").projector is None


def test_crlf_line_endings() -> None:
    spec = parse_modelfile("FROM b\r\nSYSTEM hi\r\nPARAMETER temperature 1\r\n")
    assert spec.system == "hi" and spec.parameters == {"temperature": 1.0}


# -- quoting -------------------------------------------------------------------------------


def test_triple_quoted_values_span_lines_verbatim() -> None:
    spec = parse_modelfile('FROM b\nSYSTEM """\nLine one.\n  "Quoted" line two.\n"""\nPARAMETER seed 1\n')
    assert spec.system == '\nLine one.\n  "Quoted" line two.\n'
    assert spec.parameters == {"seed": 1}


def test_quoted_values_keep_spaces_and_unescape_quotes_and_backslashes() -> None:
    spec = parse_modelfile('FROM b\nSYSTEM "  say \\"hi\\" \\\\ ok  "\nMESSAGE user "two\nlines"\n')
    assert spec.system == '  say "hi" \\ ok  '
    assert spec.messages == [{"role": "user", "content": "two\nlines"}]


def test_empty_system_and_template_are_allowed_but_an_empty_from_is_not() -> None:
    assert parse_modelfile('FROM b\nSYSTEM ""\n').system == ""
    assert parse_modelfile('FROM b\nTEMPLATE """"""\n').template == ""
    assert "line 1: FROM needs a value" in error_of("FROM\n")


# -- errors name their line ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("FROM b\nPARAMETER bogus 1\n", 'line 2: unknown parameter "bogus"'),
        ("FROM b\n\nPARAMETER temperature hot\n", 'line 3: parameter temperature must be a number, not "hot"'),
        ("FROM b\nPARAMETER num_ctx 2.5\n", "line 2: parameter num_ctx must be an integer"),
        ("FROM b\nPARAMETER use_mmap maybe\n", "line 2: parameter use_mmap must be true or false"),
        ("FROM b\nPARAMETER temperature nan\n", "line 2: parameter temperature must be a number"),
        ("FROM b\nPARAMETER temperature\n", "line 2: PARAMETER temperature needs a value"),
        ("FROM b\nPARAMETER\n", "line 2: PARAMETER needs a name and a value"),
        ("FROM b\nADAPTER ./lora.gguf 0\n", "line 2: ADAPTER scale must be above 0 and at most 4, not 0"),
        ("FROM b\nADAPTER ./lora.gguf 4.5\n", "line 2: ADAPTER scale must be above 0 and at most 4, not 4.5"),
        ("FROM b\nADAPTER ./lora.gguf nan\n", "line 2: ADAPTER scale must be above 0"),
        ("FROM b\nADAPTER\n", "line 2: ADAPTER needs a value"),
        ("FROM b\n" + "ADAPTER a.gguf\n" * 9, "line 10: more than 8 ADAPTER lines"),
        ("FROM b\nMESSAGE tool hi\n", 'line 2: MESSAGE role must be system, user or assistant, not "tool"'),
        ("FROM b\nINSTRUCT hi\n", 'line 2: unknown instruction "INSTRUCT"'),
        ('FROM b\nSYSTEM """never\nclosed\n', 'line 2: SYSTEM: unterminated """'),
        ('FROM b\nSYSTEM "never closed\n', 'line 2: SYSTEM: unterminated "'),
        ('FROM b\nSYSTEM "a" trailing\n', "line 2: SYSTEM: unexpected text after the closing quote"),
        ('FROM b\nSYSTEM """a\nb""" trailing\n', "line 3: SYSTEM: unexpected text after the closing quote"),
        ("FROM a\nFROM b.gguf\nFROM c\n", "line 3: a third FROM"),
        ("SYSTEM hi\n", "has no FROM line"),
        ("", "has no FROM line"),
    ],
)
def test_errors_name_the_line(text: str, expected: str) -> None:
    assert expected in error_of(text)


def test_errors_are_value_errors() -> None:
    assert issubclass(ModelfileError, ValueError)


# -- hostile input -------------------------------------------------------------------------


def test_oversized_modelfile_is_refused_before_parsing() -> None:
    message = error_of("FROM b\n" + "#" * MAX_MODELFILE_CHARS)
    assert "more than the limit" in message


def test_too_many_instructions_are_refused() -> None:
    text = "FROM b\n" + "MESSAGE user x\n" * MAX_INSTRUCTIONS
    assert f"line {MAX_INSTRUCTIONS + 1}: more than {MAX_INSTRUCTIONS} instructions" in error_of(text)


def test_nul_bytes_are_refused_with_their_line() -> None:
    assert "line 2: NUL character" in error_of("FROM b\nSYSTEM a\x00b\n")


def test_too_many_stop_strings_are_refused() -> None:
    text = "FROM b\n" + "".join(f"PARAMETER stop s{i}\n" for i in range(65))
    assert "more than 64 stop strings" in error_of(text)


def test_long_unknown_names_are_truncated_in_errors() -> None:
    message = error_of("FROM b\nPARAMETER " + "x" * 10_000 + " 1\n")
    assert len(message) < 200


def test_non_text_is_refused() -> None:
    with pytest.raises(ModelfileError):
        parse_modelfile(b"FROM b")  # type: ignore[arg-type]


# -- parse_parameter (JSON values from /api/create) ----------------------------------------


def test_parse_parameter_takes_json_typed_values() -> None:
    assert parse_parameter("temperature", 1) == 1.0
    assert parse_parameter("num_ctx", 4096.0) == 4096
    assert parse_parameter("use_mmap", True) is True
    assert parse_parameter("stop", ["a", "b"]) == ["a", "b"]
    assert parse_parameter("stop", "a") == ["a"]
    for name, value in (("num_ctx", 1.5), ("stop", [1]), ("stop", ""), ("bogus", 1), ("temperature", "inf")):
        with pytest.raises(ModelfileError):
            parse_parameter(name, value)


# -- render --------------------------------------------------------------------------------


def manifest(**fields: object) -> Manifest:
    return Manifest(name="pirate:latest", digest=DIGEST, size=1, source="file:/x", facts=GgufFacts(), **fields)


def test_render_round_trips_through_the_parser() -> None:
    m = manifest(
        system='Say "arr".\nAlways.',
        template='{% for m in messages %}{{ m.content }}"{% endfor %}',
        parameters={"temperature": 0.2, "num_ctx": 2048, "stop": ["<|im_end|>", '"""'], "use_mmap": False},
        messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": 'ends in a quote"'}],
        license="MIT\n\nmore \\ text",
    )
    text = render_modelfile(m)
    assert text.splitlines()[4] == f"FROM {DIGEST}"
    assert "# FROM pirate:latest" in text
    spec = parse_modelfile(text)
    assert spec.from_ == DIGEST
    assert spec.system == m.system and spec.template == m.template and spec.license == m.license
    assert spec.parameters == m.parameters and spec.messages == m.messages


def test_render_of_a_plain_model_has_only_from() -> None:
    lines = [line for line in render_modelfile(manifest()).splitlines() if line and not line.startswith("#")]
    assert lines == [f"FROM {DIGEST}"]


def test_render_of_a_vision_model_names_its_projector_in_a_second_from() -> None:
    projector = "sha256:" + "b" * 64
    text = render_modelfile(manifest(projector=projector))
    spec = parse_modelfile(text)
    assert spec.from_ == DIGEST and spec.projector == projector


def test_adapter_lines_accumulate_with_an_optional_scale() -> None:
    parsed = parse_modelfile("FROM b\nADAPTER ./caps.gguf\nADAPTER /tmp/my lora.gguf 0.5\nadapter sha256:" + "a" * 64
                             + " 2\n")
    assert parsed.adapters == [AdapterRef("./caps.gguf"), AdapterRef("/tmp/my lora.gguf", 0.5),
                               AdapterRef("sha256:" + "a" * 64, 2.0)]


def test_render_names_the_adapters_with_their_scales() -> None:
    adapters = [{"digest": "sha256:" + "c" * 64, "size": 10},
                {"digest": "sha256:" + "d" * 64, "size": 10, "scale": 0.25}]
    spec = parse_modelfile(render_modelfile(manifest(adapters=adapters)))
    assert spec.adapters == [AdapterRef("sha256:" + "c" * 64), AdapterRef("sha256:" + "d" * 64, 0.25)]
