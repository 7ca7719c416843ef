"""Grammars and JSON schemas that crashed, hung or stalled the server (llama.cpp's recursive GBNF
parser, its stack expansion, the schema converter's nested groups) are refused with a 400
`invalid_grammar` naming the field and the limit, and the server goes on; grammars just under
the limits still work; random grammars and schemas never take the server down (hypothesis)."""

from __future__ import annotations

import json
import re
import string
import threading

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from live import Server
from llama_host.engine import grammar as G
from llama_host.engine import lib
from llama_host.engine.context import Batch, Context
from llama_host.engine.sampling import Sampler, SamplingParams, grammar_from_json_schema
from llama_host.errors import InvalidGrammar

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FUZZ_CHECKER = settings(FUZZ, max_examples=300)  # in-process: about 5 ms an example


@pytest.fixture(scope="module")
def servers(model_path):
    """One server for the module; a test that kills it fails, and the next gets a new one."""
    args = [f"--nn-preload=default:GGML:CPU:{model_path('tiny')}", "--ctx-size", "256", "--parallel", "2",
            "default", "chatml"]
    live = [Server(args)]

    def get() -> Server:
        if live[-1].proc.poll() is not None:
            live.append(Server(args))
        return live[-1]

    yield get
    codes = [s.stop() for s in live]
    assert codes == [0], [s.output[-2000:] for s in live]


@pytest.fixture
def server(servers):
    return servers()


def chat_schema(schema, **extra) -> dict:
    return {"model": "default", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}, **extra}


def completion_grammar(grammar: str, **extra) -> dict:
    return {"model": "default", "prompt": "hi", "max_tokens": 4, "grammar": grammar, **extra}


def post(server, body: dict) -> httpx.Response:
    route = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    return httpx.post(server.url + route, json=body, timeout=120)


def assert_serves(server) -> None:
    assert server.proc.poll() is None, server.log()
    r = post(server, {"model": "default", "prompt": "Hello", "max_tokens": 2, "ignore_eos": True})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2


NESTED = "root ::= " + "(" * 20000 + '"a"' + ")" * 20000
DOUBLING = "root ::= r0\n" + "".join(f'r{i} ::= r{i + 1} | r{i + 1} "x"\n' for i in range(22)) + 'r22 ::= "a"\n'
CHAIN = "root ::= r0\n" + "".join(f'r{i} ::= r{i + 1} "x"\n' for i in range(10000)) + 'r10000 ::= "a"\n'
WALK = 'root ::= x\nx ::= "' + "a" * 100_000 + '"\n' + "".join(f"r{i} ::= x\n" for i in range(10000))

# (request, param, words in the message); each of these crashed or hung the server, or stalled it
REFUSED = [
    (chat_schema({"type": "string", "pattern": "^a{1,100000}$"}), "response_format.json_schema.schema", "{1,100000}"),
    (chat_schema({"type": "string", "maxLength": 100000}), "response_format.json_schema.schema", "'maxLength' is 100000"),
    (chat_schema({"type": "array", "items": {"type": "integer"}, "maxItems": 1000000}), "response_format.json_schema.schema",
     "'maxItems' is 1000000"),
    (chat_schema({"enum": [f"value-{i}" for i in range(10000)]}), "response_format.json_schema.schema", "enum has 10000 values"),
    (chat_schema({"type": "string", "minLength": 600}), "response_format.json_schema.schema", "'minLength' is 600"),
    (chat_schema({"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(300)}}),
     "response_format.json_schema.schema", "300 properties"),
    (chat_schema({"type": "object", "properties": {"r": {"$ref": "#/$defs/d0"}}, "$defs": {  # deep through $ref
        f"d{i}": {"type": "object", "properties": {"x": {"$ref": f"#/$defs/d{i + 1}"}}} for i in range(40)}}),
     "response_format.json_schema.schema", "deeper"),
    (completion_grammar(NESTED), "grammar", "nest deeper"),
    (completion_grammar('root ::= "a"{3,2}'), "grammar", "maximum under its minimum"),  # endless rules
    (completion_grammar('root ::= "a"{2001}'), "grammar", "limit of 2000"),
    (completion_grammar(DOUBLING), "grammar", "grammar stacks"),  # init took minutes
    (completion_grammar(CHAIN), "grammar", "steps"),  # 3.5 s, 400 MB at init
    (completion_grammar(WALK), "grammar", "left recursion"),  # 2.4 s in the left-recursion walk
    (completion_grammar("root ::= " + " | ".join(f'"w{i}"' for i in range(10000))), "grammar", "grammar stacks"),
    # left recursion llama.cpp misses: at init, then at the first character (memory runs out)
    (completion_grammar('root ::= c\nc ::= "x" | g1 g2\ng1 ::= opt\nopt ::= "a" | ""\ng2 ::= "" | c* "y"'),
     "grammar", "left-recursive"),
    (completion_grammar('root ::= "x" a\na ::= b\nb ::= c b? "y" | "z"\nc ::= d\nd ::= "" | "q"'), "grammar",
     "left-recursive"),
    (completion_grammar("root ::= " + "x" * 300_000), "grammar", "bytes"),
    # one class of 50,000 characters: 95 s for 16 tokens, every other sequence stalled meanwhile
    (completion_grammar("root ::= [" + "".join(chr(0x100 + i) for i in range(50_000)) + "]+"), "grammar",
     "character class of 50000"),
]


@pytest.mark.parametrize("body, param, words", REFUSED, ids=range(len(REFUSED)))
def test_grammar_past_a_limit_is_400_and_the_server_goes_on(server, body, param, words):
    r = post(server, body)
    assert r.status_code == 400, r.text[:300]
    error = r.json()["error"]
    assert error["code"] == "invalid_grammar" and error["param"] == param, error
    assert words in error["message"], error["message"]
    assert_serves(server)


@pytest.mark.parametrize("body", [
    completion_grammar('root ::= "a"', ignore_eos=True),  # complete, and EOS banned: llama.cpp aborted
    completion_grammar('root ::= "\\x00"'),  # no token can match: llama.cpp aborted
    completion_grammar('root ::= "\\x00"', ignore_eos=True, temperature=0.9),
    chat_schema({"const": 1}, ignore_eos=True),
])
def test_a_grammar_that_allows_no_token_ends_the_answer(server, body):
    r = post(server, body)
    assert r.status_code == 200, r.text[:300]
    assert_serves(server)


AT_THE_LIMITS = [
    completion_grammar("root ::= " + "(" * G.MAX_GRAMMAR_NESTING + '"a"' + ")" * G.MAX_GRAMMAR_NESTING),
    completion_grammar("root ::= " + "(" * 400 + '"a" "b"' + ")" * 400 + ' [a-z]{0,2000} "." [0-9]{2000}'),
    completion_grammar("root ::= " + " | ".join(f'"w{i}"' for i in range(G.MAX_GRAMMAR_BRANCHES))),
    completion_grammar("root ::= r0\n" + "".join(f'r{i} ::= r{i + 1} "x"\n' for i in range(900))
                       + 'r900 ::= "a"\n'),
    completion_grammar('root ::= ("a"?)* x* "b"\nx ::= y\ny ::= "c" | '),  # left recursion llama.cpp handles
    completion_grammar("root ::= [" + "".join(chr(0x100 + i) for i in range(G.MAX_GRAMMAR_CLASS_CHARS)) + "]+"),
    chat_schema({"type": "string", "maxLength": G.MAX_SCHEMA_REPETITION}),
    chat_schema({"type": "string", "minLength": 10, "maxLength": G.MAX_SCHEMA_REPETITION}),
    chat_schema({"type": "array", "items": {"type": "integer"}, "maxItems": G.MAX_SCHEMA_REPETITION}),
    chat_schema({"type": "string", "pattern": f"^[a-z]{{1,{G.MAX_SCHEMA_REPETITION}}}$"}),
    chat_schema({"enum": [f"value-{i}" for i in range(G.MAX_SCHEMA_ENUM)]}),
    chat_schema({"type": "object",
                 "properties": {f"p{i}": {"type": "integer"} for i in range(G.MAX_SCHEMA_PROPERTIES)}}),
    chat_schema({"type": "object", "properties": {"root": {"$ref": "#/$defs/node"}},
                 "$defs": {"node": {"type": "object", "properties": {"v": {"type": "integer"}, "kids": {
                     "type": "array", "items": {"$ref": "#/$defs/node"}}}, "required": ["v"]}}}),
]


@pytest.mark.parametrize("body", AT_THE_LIMITS, ids=range(len(AT_THE_LIMITS)))
def test_grammars_just_under_the_limits_work(server, body):
    r = post(server, body)
    assert r.status_code == 200, r.text[:300]
    assert_serves(server)


# --- the checker against llama.cpp's own parser ---------------------------------------------------


def test_limits_are_named_in_one_place():
    names = G.limits()
    for name in ("MAX_GRAMMAR_BYTES", "MAX_GRAMMAR_NESTING", "MAX_GRAMMAR_RULES", "MAX_GRAMMAR_ELEMENTS",
                 "MAX_GRAMMAR_BRANCHES", "MAX_GRAMMAR_EXPANSION", "MAX_GRAMMAR_WALK", "GRAMMAR_STACK_BYTES",
                 "MAX_SCHEMA_BYTES", "MAX_SCHEMA_DEPTH", "MAX_SCHEMA_VALUES", "MAX_SCHEMA_REPETITION",
                 "MAX_SCHEMA_ENUM", "MAX_SCHEMA_PROPERTIES"):
        assert isinstance(names[name], int) and names[name] > 0


def llama_parses(model, text: str) -> bool:
    """llama.cpp's verdict, on a thread with as much stack as the sampler gives it."""
    out = {}

    def work():
        with lib.errors():
            p = lib.C.llama_sampler_init_grammar(model.vocab, text.encode(), b"root")
        out["ok"] = bool(p)
        if p:
            lib.C.llama_sampler_free(p)

    _run_with_stack(work, G.GRAMMAR_STACK_BYTES)
    return out["ok"]


def _run_with_stack(work, stack_bytes: int) -> None:
    """Runs ``work`` on a thread with a stack of ``stack_bytes`` and waits for it."""
    previous = threading.stack_size(stack_bytes)
    try:
        t = threading.Thread(target=work)
        t.start()
    finally:
        threading.stack_size(previous)
    t.join()


_ITEMS = ['"ab"', '"\\n"', '"\\x41"', '"\\u00e9"', '""', '"\\q"', '"\\x4"', "[a-z]", "[^\\n]", "[\\]-]", "[a-]",
          "[^]", "[]", "[a-\\]]", ".", "<[3]>", "!<[5]>", "a", "b", "root", "x-1"]
_GLUE = [" ", "", "\t", "\n", "\r\n", "# c\n", "|", " | ", "(", ")", "*", "+", "?", "{2}", "{0,3}", "{1,}",
         "{ 1 , 2 }", "{3,1}", '"', "[", "]", "\\", "::=", "{", "}"]


@st.composite
def gbnf(draw, depth=0):
    """Near-valid GBNF: rules of items and groups, with random glue spliced in."""
    def alternatives(d):
        seqs = []
        for _ in range(draw(st.integers(1, 3))):
            parts = []
            for _ in range(draw(st.integers(0, 4))):
                if d < 4 and draw(st.integers(0, 5)) == 0:
                    parts.append("(" + alternatives(d + 1) + ")" + draw(st.sampled_from(["", "*", "?", "{1,3}"])))
                else:
                    suffix = draw(st.sampled_from(["", "", "*", "+", "?", "{2,3}"]))
                    parts.append(draw(st.sampled_from(_ITEMS)) + suffix)
                if draw(st.integers(0, 9)) == 0:
                    parts.append(draw(st.sampled_from(_GLUE)))
            seqs.append(" ".join(parts))
        return draw(st.sampled_from([" | ", "|", " |\n  "])).join(seqs)

    names = ["root"] + draw(st.lists(st.sampled_from(["a", "b", "x-1"]), max_size=3, unique=True))
    return "\n".join(f"{n} ::= {alternatives(depth)}" for n in names) + draw(st.sampled_from(["", "\n", "\r\n"]))


def noise():
    return st.lists(st.sampled_from(list('()|"[]\\-^{},*+? \n\r\t#<>!.:=a0é') + ["root ::= ", "\\x"]),
                    max_size=40).map("".join)


@FUZZ_CHECKER
@given(text=st.one_of(gbnf(), noise(), st.tuples(gbnf(), noise()).map("".join)))
def test_the_checker_refuses_only_what_llama_cpp_refuses(tiny_model, text):
    """A grammar the checker refuses for its syntax, an undefined rule or no root, llama.cpp
    refuses too; one it accepts, llama.cpp parses without crashing (it may still refuse a
    `<token>` that is not one token, or left recursion the checker lets through as harmless)."""
    try:
        G.check_gbnf(text)
    except InvalidGrammar as e:
        if re.search(r"limit|left-recursive|maximum under", str(e)):
            return  # llama.cpp would crash, hang or take long: not tried
        assert not llama_parses(tiny_model, text), (text, str(e))
        return
    llama_parses(tiny_model, text)


def test_checked_grammars_parse_and_sample_in_a_small_stack(tiny_model):
    """At the nesting limit the parse fits GRAMMAR_STACK_BYTES with room to spare, and sampling
    (in the scheduler thread: the caller's stack) does not recurse with the nesting."""
    text = "root ::= " + "(" * G.MAX_GRAMMAR_NESTING + '"a" [b-z]' + ")" * G.MAX_GRAMMAR_NESTING
    assert G.check_gbnf(text).nesting == G.MAX_GRAMMAR_NESTING
    out = {}
    with Context(tiny_model, n_ctx=64, n_batch=16) as ctx, Batch(16) as batch:
        tokens = tiny_model.tokenize("hi")
        for i, t in enumerate(tokens):
            batch.add(t, i, 0, logits=i == len(tokens) - 1)
        ctx.decode(batch)

        def work():
            with Sampler(tiny_model, SamplingParams(temperature=0.0, grammar=text), context=64) as sampler:
                out["token"] = sampler.sample(ctx, len(tokens) - 1)

        _run_with_stack(work, 256 * 1024)
    assert tiny_model.piece(out["token"]).startswith(b"a")


# names of the converter's built-in rules: a $def named so is converted again at each use
BUILT_IN = ["number", "integer", "boolean", "null", "string", "object", "array", "value", "char", "date", "time",
            "uuid", "dot", "root", "date-time"]


@pytest.mark.parametrize("schema, words", [
    ({"type": "string", "pattern": "^x{1_000}$"}, "repeats 1000"),  # int() reads 1_000, as the converter does
    ({"type": "object", "properties": {"x" * 50000: {"type": "array", "items": {}, "maxItems": 400}}}, "bytes"),
    ({"type": "object", "properties": {"r": {"$ref": "#/$defs/number"}}, "$defs": {  # re-converted at each use
        n: {"type": "array", "items": [{"$ref": f"#/$defs/{m}"}, {"$ref": f"#/$defs/{m}"}]}
        for n, m in zip(BUILT_IN, BUILT_IN[1:] + ["leaf"])} | {"leaf": {"type": "string"}}}, "values"),
])
def test_schema_limits(schema, words):
    with pytest.raises(InvalidGrammar, match=re.escape(words)):
        grammar_from_json_schema(json.dumps(schema))


def test_shared_definitions_are_counted_once():
    defs = {f"d{i}": {"type": "object", "properties": {"x": {"$ref": f"#/$defs/d{i + 1}"},
                                                       "y": {"$ref": f"#/$defs/d{i + 1}"}}} for i in range(20)}
    defs["d20"] = {"type": "string"}
    schema = {"type": "object", "properties": {"r": {"$ref": "#/$defs/d0"}}, "$defs": defs}
    G.check_gbnf(grammar_from_json_schema(json.dumps(schema)))


# --- fuzzing the live server ----------------------------------------------------------------------

_names = st.text(string.ascii_lowercase + "_-", min_size=1, max_size=6)


def schemas():
    count = st.integers(0, 700)
    leaves = st.one_of(
        st.fixed_dictionaries({"type": st.sampled_from(["string", "integer", "number", "boolean", "null"])}),
        st.fixed_dictionaries({"type": st.just("string")}, optional={"minLength": count, "maxLength": count}),
        st.builds(lambda a, b, c: {"type": "string", "pattern": f"^[a-z]{{{a},{a + b}}}(x|y){{{c}}}$"},
                  st.integers(0, 300), st.integers(0, 400), st.integers(0, 30)),
        st.builds(lambda n: {"enum": [f"v{i}" for i in range(n)]}, st.integers(0, 700)),
        st.builds(lambda v: {"const": v}, st.one_of(st.integers(), st.text(max_size=5))),
        st.just({"$ref": "#/$defs/leaf"}),
    )

    def extend(children):
        return st.one_of(
            st.builds(lambda items, extra: {"type": "array", "items": items, **extra}, children,
                      st.fixed_dictionaries({}, optional={"minItems": st.integers(0, 40), "maxItems": count})),
            st.builds(lambda props, req: {"type": "object", "properties": props,
                                          "required": [k for k in props if req]},
                      st.dictionaries(_names, children, max_size=5), st.booleans()),
            st.builds(lambda alts: {"anyOf": alts}, st.lists(children, min_size=1, max_size=4)),
        )

    return st.builds(lambda s: {"type": "object", "properties": {"a": s}, "$defs": {"leaf": {"type": "integer"}}},
                     st.recursive(leaves, extend, max_leaves=12))


@FUZZ
@given(body=st.one_of(
    st.builds(lambda s, t, e: chat_schema(s, temperature=t, ignore_eos=e), schemas(), st.sampled_from([0.0, 0.8]),
              st.booleans()),
    st.builds(lambda g, t, e: completion_grammar(g, temperature=t, ignore_eos=e),
              st.one_of(gbnf(), noise(), st.tuples(gbnf(), noise()).map("".join)), st.sampled_from([0.0, 0.8]),
              st.booleans()),
))
def test_random_grammars_and_schemas_never_take_the_server_down(servers, body):
    server = servers()
    r = post(server, body)
    assert r.status_code in (200, 400), (r.status_code, r.text[:300], body)
    if r.status_code == 400:
        assert r.json()["error"]["code"] == "invalid_grammar", r.text[:300]
    assert server.proc.poll() is None, (body, server.log()[-2000:])
