"""Client GBNF is read by lokal before any grammar parser: what would hang, crash or starve
llama.cpp is refused with a message naming the place; ordinary grammars, and every grammar
lokal's converter writes, pass. Then llguidance runs them (``TokenMask``)."""

from __future__ import annotations

import ctypes
import re

import numpy as np
import pytest

from lokal.engine.gbnf import GbnfError, check_gbnf
from lokal.engine.grammar import choice_grammar, json_object_grammar, regex_grammar, schema_grammar
from lokal.engine.llama_model import GrammarError, LlamaModel
from lokal.engine.sampling import SamplingParams


@pytest.mark.parametrize(("grammar", "words"), [
    ('root ::= "a"{2,1}', "minimum above its maximum"),  # llama.cpp's parser never returns
    ('root ::= "a"{5000}', "above 1000"),
    ("root ::= " + "(" * 100 + '"a"' + ")" * 100, "nest deeper"),  # llama.cpp's parser overflows its stack
    ("root ::= [z-a]", "range ends below its start"),  # leaves no token to sample
    ('root ::= "\\q"', "unknown escape"),
    ('root ::= "\\x4"', "hex digits"),
    ('root ::= "open', "unterminated string"),
    ("root ::= [a-", "unexpected end"),
    ('root ::= ("a"', "expected )"),
    ("root ::= *", "follows nothing"),
    ('x ::= "a"', "no root rule"),
    ("root ::= missing", "'missing' is used but not defined"),
    ('root ::= "a" ::= "b"', "end of the rule"),
])
def test_grammars_that_would_hang_crash_or_starve_llama_cpp_are_refused(grammar: str, words: str) -> None:
    with pytest.raises(GbnfError, match=re.escape(words)):
        check_gbnf(grammar)


@pytest.mark.parametrize("grammar", [
    'root ::= "a"', "root ::= ", 'root ::= ("a"*)*', 'root ::= "a" | ',
    'root ::= [^"\\\\] "b"? # a comment\n\nx ::= "q"',
    'root ::= ( "a"\n  | "b" )\n', 'root ::= [a-z-]+ "\\u00e9" "\\n" [\\x00-\\x1F]',
    'root ::= answer "."\nanswer ::= "yes" | "no"', 'root ::= "a"{0,1000} "b"{3,} "c"{2}',
])
def test_ordinary_grammars_pass(grammar: str) -> None:
    check_gbnf(grammar)


def test_every_grammar_lokal_writes_passes() -> None:
    for grammar in (json_object_grammar(), schema_grammar({"type": "string", "pattern": "^\\d+\\.\\w$"}),
                    regex_grammar("[0-9]{3}-[a-z]+"), choice_grammar(['a "quoted"', "back\\slash", "new\nline"]),
                    schema_grammar({"type": "array", "items": {"enum": [1, 2, 3]}, "uniqueItems": True})):
        check_gbnf(grammar)


def test_check_grammar_refuses_before_anything_runs(llama: LlamaModel) -> None:
    with pytest.raises(GbnfError):
        llama.check_grammar('root ::= "a"{2,1}')
    with pytest.raises(GrammarError):  # lokal reads it, llguidance cannot: Abc and abc collide there
        llama.check_grammar('root ::= Abc abc\nAbc ::= "x"\nabc ::= "y"')


def test_the_mask_allows_exactly_the_grammars_next_tokens_then_only_an_eos(llama: LlamaModel) -> None:
    mask = llama.grammar_mask('root ::= "yes" | "no"')
    allowed = mask.allowed()
    texts = {llama.token_text(int(t)) for t in allowed.nonzero()[0]}
    assert texts and all(b"yes".startswith(t) or b"no".startswith(t) for t in texts)
    refused = int(np.flatnonzero(~allowed)[0])
    assert not mask.consume(refused) and mask.allowed().tolist() == allowed.tolist()  # a refusal changes nothing
    assert mask.consume(llama.tokenize("yes", False, False)[0]) or mask.consume(llama.tokenize("y", False, False)[0])
    while not any(llama.is_eog(int(t)) for t in mask.allowed().nonzero()[0]):
        assert mask.consume(int(mask.allowed().nonzero()[0][0]))
    assert all(llama.is_eog(int(t)) for t in mask.allowed().nonzero()[0])


def test_a_sampler_with_a_grammar_only_writes_its_sentences(llama: LlamaModel) -> None:
    rng = np.random.default_rng(1)
    for seed in range(5):
        sampler = llama.new_sampler(SamplingParams(grammar=choice_grammar(["positive", "negative"]), seed=seed), [])
        text = b""
        try:
            for _ in range(20):
                logits = (rng.standard_normal(llama.n_vocab) * 3).astype(np.float32)
                token = sampler.sample_constrained(logits.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
                if llama.is_eog(token):
                    break
                text += llama.piece(token)
        finally:
            sampler.free()
        assert text in (b"positive", b"negative")
