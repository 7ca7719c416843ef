"""The guest's Jinja interpreter (guest/src/jinja*) against jinja2 set up as Hugging Face sets it
up: small expressions and statements rendered by both must agree byte for byte; errors, limits
and hostile input must end in a clean error (never a trap)."""

from __future__ import annotations

import pytest
from jinja_oracle import NOW, GuestRenderer, render_jinja2


@pytest.fixture(scope="session")
def guest():
    renderer = GuestRenderer()
    yield renderer
    renderer.close()


CTX = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi <there> & 'you'"},
        {"role": "assistant", "content": "Hello!", "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]},
    ],
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}}],
    "n": 7,
    "x": 2.5,
    "s": "Grüße, 世界 🦙",
    "items": [3, 1, 2],
    "d": {"b": 1, "a": 2, "C": 3},
    "flag": True,
    "nothing": None,
    "empty": "",
    "schema": {"items": {"type": "string"}, "keys": 1},
}

# Each renders identically in jinja2 and the guest (with CTX as the variables).
CASES = [
    # literals and printing
    "{{ 1 }}|{{ -3 }}|{{ 1.0 }}|{{ 0.1 }}|{{ 1e-5 }}|{{ 1e16 }}|{{ 1.5e300 * 1e10 }}|{{ 123456789.125 }}",
    "{{ true }}|{{ False }}|{{ none }}|{{ None }}|{{ 'it''s' }}|{{ \"q\" 'a' }}",
    "{{ 'a\\nb\\t\\\\ \\x41 \\u00e9 \\U0001F999 \\'' }}",
    "{{ [1, 'a', none, true, 1.5, {'k': (1, 2)}, (3,), ()] }}",
    "{{ ['it\\'s', \"q\\\"\", '\\n', '\\x01', 'é'] }}",
    "{{ {'a': 1, 'b': [2]} }}{{ {} }}{{ [] }}",
    "{{ 1, 2 }}",
    "{{ 0x1F }}|{{ 0o17 }}|{{ 0b101 }}|{{ 1_000 }}",
    # arithmetic
    "{{ 1 + 2 * 3 }}|{{ (1 + 2) * 3 }}|{{ 2 ** 3 ** 2 }}|{{ -2 ** 2 }}|{{ 7 // 2 }}|{{ 7 // -2 }}|{{ -7 % 3 }}|{{ 7 % -3 }}",
    "{{ 1 / 2 }}|{{ 10 / 5 }}|{{ 7.5 // 2 }}|{{ -7.5 % 2 }}|{{ 2 ** -1 }}|{{ 2.0 ** 3 }}|{{ 1 + 1.5 }}|{{ true + 1 }}",
    "{{ 'a' + 'b' }}|{{ 'ab' * 3 }}|{{ 2 * 'x' }}|{{ [1] + [2] }}|{{ [0] * 3 }}|{{ 'a' ~ 1 ~ none ~ true ~ undefined_thing }}",
    "{{ n + 1 }}|{{ x * 2 }}|{{ n / 2 }}|{{ n % 4 }}|{{ -n }}|{{ +x }}",
    # comparisons and logic
    "{{ 1 < 2 }}|{{ 1 < 2 < 3 }}|{{ 3 > 2 > 2 }}|{{ 'a' < 'b' }}|{{ [1, 2] < [1, 3] }}|{{ 1 == 1.0 }}|{{ (1, 2) == [1, 2] }}",
    "{{ 1 and 'x' }}|{{ 0 and 'x' }}|{{ '' or 'y' }}|{{ none or 0 }}|{{ not 1 }}|{{ not '' }}|{{ 1 if 0 }}|{{ 'a' if 1 else 'b' }}",
    "{{ 'a' in 'cat' }}|{{ 1 in [1, 2] }}|{{ 'k' in {'k': 1} }}|{{ 3 not in [1] }}|{{ 'z' not in 'abc' }}|{{ 'a' in undefined_thing }}",
    "{{ undefined_thing == undefined_other }}|{{ none == none }}|{{ [1, [2]] == [1, [2]] }}|{{ {'a': 1} == {'a': 1} }}",
    # variables, attributes, subscripts, slices
    "{{ messages[0].role }}|{{ messages[-1]['content'] }}|{{ messages[5] }}|{{ d.a }}|{{ d['C'] }}|{{ d.zz }}|{{ nothing.x }}",
    "{{ s[0] }}|{{ s[-1] }}|{{ s[2:5] }}|{{ s[::-1] }}|{{ s[:3] }}|{{ s[7:] }}|{{ items[::2] }}|{{ items[-2:] }}|{{ items[1:2] }}",
    "{{ schema['items'] }}|{{ schema['keys'] }}|{{ schema.keys is callable }}|{{ schema.items is mapping }}|{{ d.items is defined }}",
    "{{ 'abc'.upper is callable }}|{{ undefined_thing }}|{{ messages[0].missing }}|{{ 'abc'.nope is defined }}",
    # whitespace control, trim_blocks, lstrip_blocks
    "a\n  {% if true %}\n    yes\n  {% endif %}\nb",
    "a  {%- if true -%}  yes  {%- endif -%}  b",
    "x\n  {#- comment -#}\n  {{- 'y' -}}\n  z",
    "  {%+ if true %}kept{% endif +%}\nnext",
    "  {# lstripped comment #}\nline\n{{ 'v' }}\n  {{ 'w' }}  \n",
    "{% for i in [1, 2] %}\n  {{ i }}\n{% endfor %}\n",
    "{% for i in [1, 2] -%}\n  {{ i }}\n{%- endfor %}",
    "text {% raw %}{{ not rendered }}{% endraw %} after",
    "line1\r\nline2\rline3\n",
    "trailing newline kept once\n\n",
    "{%- if true %}\n\n{% endif -%}\nX",
    "a {{- ' b ' -}} c",
    # for loops
    "{% for m in messages %}{{ loop.index }}/{{ loop.index0 }}/{{ loop.revindex }}/{{ loop.revindex0 }}/{{ loop.length }}/{{ loop.first }}/{{ loop.last }};{% endfor %}",
    "{% for i in items %}{{ loop.previtem }}<{{ i }}>{{ loop.nextitem }} {% endfor %}",
    "{% for i in items %}{{ loop.cycle('odd', 'even') }}{% endfor %}",
    "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}|{% for k in d %}{{ k }}{% endfor %}",
    "{% for a, b in [(1, 2), (3, 4)] %}{{ a + b }}{% endfor %}|{% for (a, b) in [[5, 6]] %}{{ a }}{{ b }}{% endfor %}",
    "{% for i in range(10) if i is odd %}{{ i }}{{ loop.last }}{% endfor %}|{% for c in 'héllo' %}{{ c }}.{% endfor %}",
    "{% for i in [] %}x{% else %}empty{% endfor %}|{% for i in undefined_thing %}x{% else %}none{% endfor %}",
    "{% for i in range(10) %}{% if i == 3 %}{% continue %}{% endif %}{% if i == 6 %}{% break %}{% endif %}{{ i }}{% endfor %}",
    "{% for i in range(3) %}{% for j in range(i) %}{{ i }}{{ j }} {% endfor %}{% endfor %}",
    "{% for i in [1, 2, 3] %}{{ x }}{% set x = i %}{% endfor %}|{{ x }}",
    "{% set y = 9 %}{% for i in [1, 2] %}{{ y }}{% set y = i %}{{ y }}{% endfor %}|{{ y }}",
    "{{ range(3) | list }}{{ range(1, 10, 3) | list }}{{ range(5, 0, -2) | list }}",
    # set, namespace, block set
    "{% set a = 1 %}{% set b, c = [2, 3] %}{{ a }}{{ b }}{{ c }}",
    "{% set ns = namespace(total=0, names=[]) %}{% for m in messages %}{% set ns.total = ns.total + 1 %}{% endfor %}{{ ns.total }}{{ ns.names }}",
    "{% set x %}  hi {{ 1 }} {% endset %}[{{ x }}]",
    "{% set x | upper %}shout{% endset %}{{ x }}",
    "{% if true %}{% set inside = 'leaks' %}{% endif %}{{ inside }}",
    # macros, call blocks, filter blocks
    "{% macro f(a, b=2) %}{{ a }}-{{ b }}-{{ varargs }}-{{ kwargs }}{% endmacro %}{{ f(1) }}|{{ f(1, 3, 4) }}|{{ f(b=5, a=0) }}|{{ f(1, c=2) }}",
    "{% macro m() %}{{ y }}{% endmacro %}{% set y = 1 %}{{ m() }}{% set y = 2 %}{{ m() }}",
    "{% macro rec(n) %}{% if n > 0 %}{{ n }}{{ rec(n - 1) }}{% endif %}{% endmacro %}{{ rec(5) }}",
    "{% macro render(x) %}{% if x is mapping %}{{ '{' }}{% for k, v in x.items() %}{{ k }}:{{ render(v) }},{% endfor %}{{ '}' }}{% else %}{{ x }}{% endif %}{% endmacro %}{{ render(tools[0]) }}",
    "{% macro outer(t) %}[{{ t }}:{{ caller() }}]{% endmacro %}{% call outer('T') %}inside{% endcall %}",
    "{% macro each(xs) %}{% for x in xs %}{{ caller(x) }}{% endfor %}{% endmacro %}{% call(v) each([1, 2]) %}<{{ v }}>{% endcall %}",
    "{% filter upper %}abc {{ 'def' }}{% endfilter %}|{% filter trim | title %}  some words  {% endfilter %}",
    "{% generation %}generated {{ 1 }}{% endgeneration %}",
    "{% macro m(a) %}{{ a is defined }}{% endmacro %}{{ m() }}{{ m(1) }}",
    # filters
    "{{ '  x  ' | trim }}|{{ 'xxhixx' | trim('x') }}|{{ s | length }}|{{ items | count }}|{{ d | length }}|{{ undefined_thing | length }}",
    "{{ undefined_thing | default('dflt') }}|{{ '' | default('e') }}|{{ '' | default('e', true) }}|{{ none | d('n', boolean=true) }}|{{ 0 | default(5) }}",
    "{{ items | join(', ') }}|{{ messages | map(attribute='role') | join('/') }}|{{ [1, none, 'a'] | join }}|{{ messages | join('-', attribute='role') }}",
    "{{ items | first }}|{{ items | last }}|{{ 'abc' | first }}|{{ [] | first }}|{{ items | reverse | list }}|{{ 'abc' | reverse }}",
    "{{ items | sort }}|{{ items | sort(reverse=true) }}|{{ ['b', 'A', 'a', 'B'] | sort }}|{{ ['b', 'A', 'a'] | sort(case_sensitive=true) }}",
    "{{ messages | sort(attribute='role') | map(attribute='role') | list }}|{{ [3, 1, 3, 1] | unique | list }}|{{ ['a', 'A', 'b'] | unique | list }}",
    "{{ d | dictsort }}|{{ d | dictsort(true) }}|{{ d | dictsort(by='value', reverse=true) }}|{{ d | items | list }}",
    "{{ items | min }}|{{ items | max }}|{{ ['b', 'A'] | min }}|{{ items | sum }}|{{ [1.5, 2] | sum }}|{{ messages | map(attribute='role') | list | length }}",
    "{{ 'hello world' | upper }}|{{ 'HeLLo' | lower }}|{{ 'hello WORLD' | capitalize }}|{{ 'hello wORLD-foo(bar [x' | title }}",
    "{{ 'a-b-c' | replace('-', '+') }}|{{ 'aaa' | replace('a', 'b', 2) }}|{{ 'ab' | replace('', '.') }}|{{ 5 | string }}{{ [1] | string }}",
    "{{ '  a\\n\\n b\\n' | indent(2) }}|{{ 'a\\nb' | indent(2, true) }}|{{ '' | indent }}|{{ 'a\\n\\nb' | indent(blank=true) }}|{{ 'x\\ny' | indent('> ') }}|",
    "{{ messages | selectattr('role', 'equalto', 'user') | map(attribute='content') | list }}|{{ messages | rejectattr('role', 'eq', 'user') | list | length }}",
    "{{ messages | selectattr('tool_calls', 'defined') | list | length }}|{{ messages | selectattr('tool_calls') | list | length }}|{{ [0, 1, 2] | select | list }}",
    "{{ [1, 2, 3, 4] | select('odd') | list }}|{{ [1, 2, 3] | reject('equalto', 2) | list }}|{{ ['a', 'B'] | map('upper') | list }}|{{ [1, 2] | select('gt', 1) | list }}",
    "{{ '3' | int }}|{{ '3.7' | int }}|{{ 3.7 | int }}|{{ 'x' | int }}|{{ 'x' | int(9) }}|{{ '0x1A' | int(base=16) }}|{{ ' 42 ' | int }}|{{ '1_000' | int }}",
    "{{ '2.5' | float }}|{{ 3 | float }}|{{ 'x' | float }}|{{ -3 | abs }}|{{ -2.5 | abs }}",
    "{{ 2.567 | round(2) }}|{{ 2.5 | round }}|{{ 3.5 | round }}|{{ 5 | round }}|{{ 2.1 | round(0, 'ceil') }}|{{ 2.9 | round(0, 'floor') }}",
    "{{ '<a href=\"x\">&\\'</a>' | e }}|{{ '<b>' | escape }}|{{ ('<i>' | safe) + '<b>' }}|{{ '<' ~ ('&' | safe) }}",
    "{{ 'a b  c' | wordcount }}|{{ [1, 2, 3, 4, 5] | batch(2) | list }}|{{ [1, 2, 3] | batch(2, 0) | list }}|{{ '<p>a <b>b</b></p>' | striptags }}",
    "{{ {'a': 1} | list }}|{{ 'ab' | list }}|{{ messages | map(attribute='nope', default='?') | list }}|{{ d | attr('a') }}",
    # tojson (HF: ensure_ascii=False, indent, separators, sort_keys)
    "{{ messages | tojson }}",
    "{{ tools | tojson(indent=2) }}",
    "{{ tools | tojson(indent=4, sort_keys=true) }}",
    "{{ {'x': 'é\\n\"\\\\', 'y': [1.0, true, none, 1e-7, 1e22, -0.0]} | tojson }}|{{ s | tojson(ensure_ascii=true) }}",
    "{{ {'a': [1, {'b': []}], 'c': {}} | tojson(separators=(',', ':')) }}|{{ [1, 2] | tojson(indent='\\t') }}|{{ [1, [2]] | tojson(indent=0) }}",
    "{{ {'b': 1, 'a': {'d': 1, 'c': 2}} | tojson(sort_keys=true) }}|{{ 'x' | tojson }}|{{ 5 | tojson }}|{{ none | tojson }}|{{ (1, 2) | tojson }}",
    "{{ {1: 'int key', true: 'b', none: 'n', 2.5: 'f'} | tojson }}",
    "{{ '\\x00\\x1f\\x7f\\u2028' | tojson }}",
    # tests
    "{{ x is defined }}|{{ undefined_thing is defined }}|{{ undefined_thing is undefined }}|{{ nothing is none }}|{{ 1 is not none }}",
    "{{ 'a' is string }}|{{ 1 is string }}|{{ d is mapping }}|{{ items is mapping }}|{{ items is iterable }}|{{ 'a' is iterable }}|{{ 1 is iterable }}",
    "{{ 1 is number }}|{{ 1.5 is number }}|{{ true is number }}|{{ 1 is integer }}|{{ true is integer }}|{{ 1.5 is float }}|{{ 1 is float }}",
    "{{ items is sequence }}|{{ 'a' is sequence }}|{{ d is sequence }}|{{ 1 is sequence }}|{{ true is boolean }}|{{ 1 is boolean }}|{{ true is true }}|{{ 0 is false }}",
    "{{ 3 is odd }}|{{ 4 is even }}|{{ 9 is divisibleby 3 }}|{{ 9 is divisibleby(2) }}|{{ 1 is eq 1 }}|{{ 1 is ne 2 }}|{{ 2 is gt 1 }}|{{ 2 is le 1 }}",
    "{{ 'a' is in 'abc' }}|{{ range is callable }}|{{ 'x' is callable }}|{{ none is sameas none }}|{{ 'ABC' is upper }}|{{ 'abc' is lower }}|{{ 'up' is filter }}",
    "{{ ('a' | safe) is escaped }}|{{ 'a' is escaped }}|{{ messages[0] is mapping }}|{{ messages[0].content is string }}",
    # string methods
    "{{ ' x '.strip() }}|{{ 'xxhixx'.strip('x') }}|{{ '  a '.lstrip() }}|{{ ' a  '.rstrip() }}|{{ 'abcba'.rstrip('ab') }}|{{ '\\n\\t x \\u3000'.strip() }}",
    "{{ 'a,b,,c'.split(',') }}|{{ ' a  b '.split() }}|{{ 'a,b,c'.split(',', 1) }}|{{ 'a b c'.split(none, 1) }}|{{ 'a,b,c'.rsplit(',', 1) }}|{{ ''.split() }}|{{ ''.split(',') }}",
    "{{ 'abc'.startswith('a') }}|{{ 'abc'.startswith(('x', 'ab')) }}|{{ 'abc'.endswith('bc') }}|{{ 'abc'.endswith(('x',)) }}",
    "{{ 'a-b'.replace('-', '+') }}|{{ 'hello'.upper() }}|{{ 'HeLLo'.lower() }}|{{ 'hello world'.title() }}|{{ \"they're 3rd\".title() }}|{{ 'hELLO'.capitalize() }}",
    "{{ 'hello'.find('l') }}|{{ 'hello'.find('z') }}|{{ 'hello'.rfind('l') }}|{{ 'hello'.count('l') }}|{{ '-'.join(['a', 'b']) }}|{{ 'a\\nb\\r\\nc'.splitlines() }}",
    "{{ '{}-{}'.format(1, 'b') }}|{{ '{0}{1}{0}'.format('x', 'y') }}|{{ '{name}!'.format(name='z') }}|{{ '{:>5}|{:<4}|{:^5}'.format('a', 'b', 'c') }}|{{ '{:.2f}'.format(3.14159) }}|{{ '{{}}{}'.format(1) }}",
    "{{ '%s-%d' % ('a', 3) }}|{{ '%5.2f|%s|%r' % (3.14159, 'a', 'b') }}|{{ '%s' % 'one' }}|{{ '100%%' % () }}|{{ '%03d' % 7 }}",
    "{{ '123'.isdigit() }}|{{ 'abc'.isalpha() }}|{{ 'ab1'.isalnum() }}|{{ '  '.isspace() }}|{{ 'ABC'.isupper() }}|{{ 'abc'.islower() }}|{{ 'x'.zfill(3) }}|{{ 'ab'.center(6, '*') }}",
    "{{ 'key=value=x'.partition('=') }}|{{ 'prefix-body'.removeprefix('prefix-') }}|{{ 'body.txt'.removesuffix('.txt') }}",
    # dict and list methods
    "{{ d.get('a') }}|{{ d.get('z') }}|{{ d.get('z', 'dflt') }}|{{ d.keys() | list }}|{{ d.values() | list }}|{{ d.items() | list }}",
    "{{ items.index(1) }}|{{ items.count(3) }}|{{ [1, 2] + items }}",
    # globals
    "{{ strftime_now('%Y-%m-%d %H:%M:%S') }}|{{ strftime_now('%d %b %Y') }}|{{ strftime_now('%A, %B %-d, %y %I%p %j') }}",
    "{% set ns = namespace() %}{% set ns.a = 1 %}{{ ns.a }}{{ ns.b }}|{{ dict(a=1, b='x') }}|{{ namespace(d).a }}",
    # real-template idioms
    "{%- if messages[0]['role'] == 'system' -%}{%- set system_message = messages[0]['content'] -%}{%- set loop_messages = messages[1:] -%}{%- else -%}{%- set loop_messages = messages -%}{%- endif -%}{{ system_message }}|{{ loop_messages | length }}",
    "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content | trim + '<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt is defined and add_generation_prompt %}<|im_start|>assistant\\n{%- endif %}",
    "{%- for m in messages -%}{%- if m.tool_calls is defined and m.tool_calls -%}{%- for tc in m.tool_calls -%}{{ tc.function.name }}({{ tc.function.arguments | tojson }}){%- endfor -%}{%- endif -%}{%- endfor -%}",
    "{{ (messages | selectattr('role', 'equalto', 'user') | list | last).content }}",
    "{%- set ns = namespace(last=-1) -%}{%- for m in messages -%}{%- if m.role == 'user' -%}{%- set ns.last = loop.index0 -%}{%- endif -%}{%- endfor -%}{{ ns.last }}",
    "{{ messages | map(attribute='content') | map('trim') | map('length') | list }}",
    "{% if tools is not none and tools | length > 0 %}{{ tools | map(attribute='function.name') | list }}{% endif %}",
    "{{ 'reasoning' in messages[0] }}|{{ messages[0].content.split('.')[0] }}|{{ (messages[1].content | string).strip().lower() }}",
]


@pytest.mark.parametrize("source", CASES)
def test_matches_jinja2(guest, source):
    want = render_jinja2(source, CTX)
    assert want.text is not None, f"the oracle failed on a case meant to render: {want.error}"
    got = guest.render(source, CTX)
    assert got.error is None, got.error
    assert got.text == want.text


# Each raises in jinja2; the guest must report an error whose message contains the text given.
ERRORS = [
    ("{{ undefined_thing.attr }}", "'undefined_thing' is undefined"),
    ("{{ undefined_thing['k'] }}", "undefined"),
    ("{{ undefined_thing() }}", "undefined"),
    ("{{ undefined_thing + 1 }}", "undefined"),
    ("{% set v = undefined_thing %}{{ v.x }}", "'undefined_thing' is undefined"),
    ("{{ d.zz.yy }}", "has no attribute 'zz'"),
    ("{{ raise_exception('Only user and assistant roles are supported!') }}", "Only user and assistant roles are supported!"),
    ("{% if true %}{{ raise_exception('inside ' ~ 1) }}{% endif %}", "inside 1"),
    ("{{ items.append(4) }}", "unsafe"),
    ("{{ d.update({'a': 1}) }}", "unsafe"),
    ("{{ d.pop('a') }}", "unsafe"),
    ("{{ 'a' + 1 }}", "concatenate"),
    ("{{ 1 / 0 }}", "division by zero"),
    ("{{ 1 < 'a' }}", "not supported"),
    ("{{ undefined_thing | tojson }}", "not JSON serializable"),
    ("{{ items | map(attribute='x') | tojson }}", "not JSON serializable"),
    ("{{ d.items() | tojson }}", "not JSON serializable"),
    ("{{ x | from_json }}", "No filter named 'from_json'"),
    ("{{ x is frobnicated }}", "No test named"),
    ("{% set d.x = 1 %}", "non-namespace"),
    ("{% for a, b in [1] %}{% endfor %}", "iterable"),
    ("{% for a, b in [[1, 2, 3]] %}{% endfor %}", "unpack"),
    ("{{ none | items | list }}", "mapping"),
    ("{% for x in none %}{% endfor %}", "not iterable"),
    ("{% break %}", "outside loop"),
    ("{{ '{}'.format() }}", "out of range"),
]


@pytest.mark.parametrize("source,needle", ERRORS)
def test_errors_like_jinja2(guest, source, needle):
    want = render_jinja2(source, CTX)
    assert want.text is None, "the oracle rendered a case meant to fail"
    got = guest.render(source, CTX)
    assert got.text is None, f"the guest rendered {got.text!r}; jinja2 raised {want.error}"
    assert needle in got.error


# Syntax errors: the message names the line.
SYNTAX_ERRORS = [
    ("line one\n{% if %}", 2),
    ("a\nb\n{{ 1 + }}", 3),
    ("{% for x in y %}\n\n{{ x }}", 3),
    ("\n{% endif %}", 2),
    ("{{ 'unterminated }}", 1),
    ("\n\n{% frobnicate %}", 3),
    ("{{ (1 }}", 1),
    ("{{ 1 ]] }}", 1),
    ("{# never closed", 1),
    ("{% macro m( %}{% endmacro %}", 1),
]


@pytest.mark.parametrize("source,line", SYNTAX_ERRORS)
def test_syntax_errors_name_the_line(guest, source, line):
    assert render_jinja2(source, CTX).text is None
    got = guest.render(source, CTX)
    assert got.text is None
    assert f"line {line}" in got.error


def test_strftime_now_uses_the_given_clock(guest):
    fmt = "{{ strftime_now('%Y-%m-%d %H:%M:%S %a') }}"
    assert guest.render(fmt, {}).text == render_jinja2(fmt, {}).text == "2023-11-14 22:13:20 Tue"
    assert guest.render(fmt, {}, now=0).text == "1970-01-01 00:00:00 Thu"
    assert guest.render(fmt, {}, now=NOW + 86400 * 366).text == "2024-11-14 22:13:20 Thu"


# Limits (the guest's defaults: 4 MiB of output, 1,000,000 steps, depth 64): each must end in
# a clean error that names the limit, never a trap and never an unbounded run.
N = 10_000
LIMITS = [
    ("{% for i in range(5000) %}{{ 'x' * 1000 }}{% endfor %}", "byte limit"),
    ("{{ 'x' * 100000000 }}", "byte limit"),
    ("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}", "byte limit"),
    ("{% for i in range(1000) %}{% for j in range(1001) %}{% endfor %}{% endfor %}", "steps"),
    ("{{ range(100000000) | length }}", "steps"),
    ("{% macro f() %}{% for i in range(100) %}x{% endfor %}{% endmacro %}{% for i in range(100000) %}{{ f() }}{% endfor %}", "steps"),
    ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "depth limit"),
    ("{% macro a(n) %}{{ b(n) }}{% endmacro %}{% macro b(n) %}{{ a(n) }}{% endmacro %}{{ a(0) }}", "depth limit"),
    ("{{ " + "(" * N + "1" + ")" * N + " }}", "depth limit"),
    ("{{ " + "[" * N + "]" * N + " }}", "depth limit"),
    ("{{ " + "{'a': " * N + "1" + "}" * N + " }}", "depth limit"),
    ("{{ " + "not " * N + "1 }}", "depth limit"),
    ("{{ " + "- " * N + "1 }}", "depth limit"),
    ("{{ " + "1 if 1 else " * N + "1 }}", "depth limit"),
    ("{% if 1 %}" * N + "{% endif %}" * N, "depth limit"),
    ("{% for i in [1] %}" * N + "{% endfor %}" * N, "depth limit"),
    ("{{ 'x'" + " | trim" * N + " }}", "depth limit"),
    ("{{ 1" + " + 1" * N + " }}", "depth limit"),
    ("{{ 'a'" + " ~ 'a'" * N + " }}", "depth limit"),
    ("{{ 1" + " and 1" * N + " }}", "depth limit"),
    ("{{ d" + ".a" * N + " }}", "depth limit"),
    ("{{ range" + "(1)" * N + " }}", "depth limit"),
    ("{% set ns = namespace(x=1) %}{% for i in range(5000) %}{% set ns.x = [ns.x] %}{% endfor %}{{ ns.x }}", "levels"),
    ("{% set ns = namespace(x=1) %}{% for i in range(5000) %}{% set ns.x = {'k': ns.x} %}{% endfor %}{{ ns.x | tojson }}", "levels"),
]


@pytest.mark.parametrize("source,needle", LIMITS, ids=[f"limit{i}" for i in range(len(LIMITS))])
def test_limits_end_in_a_clean_error(guest, source, needle):
    got = guest.render(source, CTX)  # a trap raises AssertionError in GuestRenderer
    assert got.text is None
    assert needle in got.error


def test_deep_but_legal_nesting_renders(guest):
    source = "{% macro rec(n) %}{% if n > 0 %}({{ rec(n - 1) }}){% endif %}{% endmacro %}{{ rec(20) }}"
    assert guest.render(source, {}).text == render_jinja2(source, {}).text
    source = "{{ " + "(" * 40 + "1" + ")" * 40 + " }}|{{ 1" + " + 1" * 100 + " }}"
    assert guest.render(source, {}).text == render_jinja2(source, {}).text
