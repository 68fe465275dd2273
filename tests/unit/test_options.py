"""The one vocabulary of generation options: every surface maps through it, and a limit is
stated once and enforced alike on requests, Modelfiles, /api/create and presets."""

from __future__ import annotations

import pytest

from lokal.engine.sampling import SamplingParams
from lokal.options import (
    BY_OLLAMA,
    MAX_STOP_STRINGS,
    OPTIONS,
    SAMPLING_NAMES,
    UI_KEYS,
    OptionError,
    check_ollama,
    from_ollama,
    from_openai,
)
from lokal.store.modelfile import ModelfileError, parse_modelfile, parse_parameter
from lokal.ui.presets import PARAMETERS, PresetError, PresetStore


def test_the_samplers_fields_are_exactly_the_vocabularys_sampling_options() -> None:
    # grammar and logprobs are per request (an output constraint, what to report), never a model's option
    assert set(SamplingParams.model_fields) - {"grammar", "logprobs"} == SAMPLING_NAMES
    assert len({o.name for o in OPTIONS}) == len(OPTIONS)  # one entry per name


def test_the_samplers_bounds_come_from_the_vocabulary() -> None:
    for option in OPTIONS:
        if not option.sampling or option.le is None:
            continue
        too_big = option.le + (1 if option.kind == "int" else 0.5)
        with pytest.raises(ValueError):
            SamplingParams(**{option.name: too_big})
        with pytest.raises(OptionError):
            from_openai({option.openai[0]: too_big})


@pytest.mark.parametrize("name, value", [("temperature", 101), ("top_p", 1.5), ("seed", -5), ("top_k", 2.5)])
def test_a_bad_value_is_refused_alike_by_openai_fields_and_presets(name: str, value: float) -> None:
    with pytest.raises(OptionError) as openai_error:
        from_openai({name: value})
    assert openai_error.value.key == name
    if name in UI_KEYS:
        with pytest.raises(PresetError, match=openai_error.value.reason):
            PresetStore(db=None).save("mine", {name: value})  # type: ignore[arg-type]  # refused before the db


def test_a_modelfile_and_ollama_options_share_ranges_and_ollamas_special_values() -> None:
    with pytest.raises(ModelfileError, match="parameter temperature must be at most 100"):
        parse_parameter("temperature", "250")
    with pytest.raises(OptionError, match="options.temperature: must be at most 100"):
        from_ollama({"temperature": 250})
    assert parse_parameter("num_predict", "-1") == -1  # kept as Ollama writes it (show --modelfile)
    assert check_ollama(BY_OLLAMA["num_predict"], -1, "num_predict") == (-1, None)  # used as: no limit
    assert from_ollama({"num_predict": 0, "seed": -1, "mirostat": 2, "unknown": 1}) == \
        {"max_tokens": None, "seed": None, "mirostat": 2}


def test_the_stop_string_limit_is_one_number_everywhere() -> None:
    enough = [f"s{i}" for i in range(MAX_STOP_STRINGS)]
    assert len(SamplingParams(stop=enough).stop) == MAX_STOP_STRINGS
    assert from_openai({"stop": enough})["stop"] == tuple(enough)
    text = "FROM m\n" + "".join(f"PARAMETER stop {s}\n" for s in enough)
    assert len(parse_modelfile(text).parameters["stop"]) == MAX_STOP_STRINGS
    message = f"at most {MAX_STOP_STRINGS} stop strings"
    with pytest.raises(ValueError, match=message):
        SamplingParams(stop=[*enough, "one more"])
    with pytest.raises(OptionError, match=message):
        from_openai({"stop": [*enough, "one more"]})
    with pytest.raises(OptionError, match=message):
        from_ollama({"stop": [*enough, "one more"]})
    with pytest.raises(ModelfileError, match=f"parameter stop {message}"):
        parse_parameter("stop", [*enough, "one more"])
    with pytest.raises(ModelfileError, match=f"more than {MAX_STOP_STRINGS} stop strings"):
        parse_modelfile(text + "PARAMETER stop one-more\n")


def test_max_completion_tokens_wins_over_max_tokens_and_none_means_not_given() -> None:
    assert from_openai({"max_tokens": 10, "max_completion_tokens": 20}) == {"max_tokens": 20}
    assert from_openai({"max_completion_tokens": 20, "max_tokens": 10}) == {"max_tokens": 20}
    assert from_openai({"temperature": None, "top_k": 5}) == {"top_k": 5}


def test_logit_bias_keys_are_token_ids() -> None:
    assert from_openai({"logit_bias": {"13": 2.5}}) == {"logit_bias": {13: 2.5}}
    with pytest.raises(OptionError, match="token ids"):
        from_openai({"logit_bias": {"abc": 1}})
    with pytest.raises(OptionError, match="outside"):
        from_openai({"logit_bias": {"13": 150}})


def test_presets_use_the_vocabularys_names() -> None:
    assert PARAMETERS == UI_KEYS
    assert set(UI_KEYS) <= {o.name for o in OPTIONS}
    assert "num_ctx" in UI_KEYS and "max_tokens" in UI_KEYS


def test_huge_json_numbers_get_a_message_not_a_crash() -> None:
    with pytest.raises(OptionError, match="too large to show"):
        from_ollama({"seed": 10**400})
