//! A Jinja-subset interpreter for chat templates: renders what Hugging Face's jinja2 setup
//! renders (trim_blocks, lstrip_blocks, the HF globals), inside the sandbox.
//! Pieces: jinja/lexer.zig (tokens, whitespace control), jinja/parser.zig (AST), jinja/eval.zig
//! (rendering), jinja/builtins.zig (filters, tests, methods, globals), jinja/json.zig (tojson),
//! jinja/value.zig and jinja/pystr.zig (Python value and string semantics).
const std = @import("std");
const parser = @import("jinja/parser.zig");
const lexer = @import("jinja/lexer.zig");
const eval = @import("jinja/eval.zig");
const value = @import("jinja/value.zig");

pub const Limits = struct {
    max_output: usize = 4 << 20, // bytes of rendered text (and of any one string a template builds)
    max_steps: usize = 1_000_000, // loop iterations and macro calls
    max_depth: usize = 64, // nesting of calls and expressions
    max_items: usize = 1_000_000, // items of any one list a template builds
};

/// The message of a render that ran out of the guest's memory (static: nothing is left to
/// allocate a message with).
pub const out_of_memory_message = "the template needs more memory than the guest may use";

pub const Options = struct {
    limits: Limits = .{},
    /// Seconds since the epoch for `strftime_now` (UTC).
    now: i64 = 0,
};

/// Why a render failed; `message` is allocated in the render's allocator.
pub const Diagnostic = struct {
    message: []const u8 = "",
};

pub const Error = error{TemplateError};

/// Renders `source` with the variables of `context` (a JSON object). Returns text allocated in
/// `gpa` (an arena is expected: intermediate values are not freed one by one). On
/// error.TemplateError, `diag.message` says why (a parse error with its line, an undefined
/// variable, `raise_exception`'s message, an exceeded limit). Running out of memory is a
/// template error too (`out_of_memory_message`): the template asked for it, and no arithmetic
/// or size a template computes may trap.
pub fn render(gpa: std.mem.Allocator, source: []const u8, context: std.json.Value, options: Options, diag: *Diagnostic) Error![]u8 {
    return renderOrFail(gpa, source, context, options, diag) catch |err| switch (err) {
        error.TemplateError => error.TemplateError,
        error.OutOfMemory => {
            diag.message = out_of_memory_message;
            return error.TemplateError;
        },
    };
}

fn renderOrFail(gpa: std.mem.Allocator, source: []const u8, context: std.json.Value, options: Options, diag: *Diagnostic) error{ OutOfMemory, TemplateError }![]u8 {
    var failure: lexer.Failure = .{};
    const nodes = parser.parse(gpa, source, options.limits.max_depth, &failure) catch |err| switch (err) {
        error.OutOfMemory => return error.OutOfMemory,
        error.TemplateError => {
            diag.message = try std.fmt.allocPrint(gpa, "template syntax error on line {d}: {s}", .{ failure.line, failure.message });
            return error.TemplateError;
        },
    };
    var out: std.ArrayListUnmanaged(u8) = .{};
    var in = eval.Interp{
        .gpa = gpa,
        .limits = .{
            .max_output = options.limits.max_output,
            .max_steps = options.limits.max_steps,
            .max_depth = options.limits.max_depth,
            .max_items = options.limits.max_items,
        },
        .now = options.now,
        .out = &out,
    };
    var root = value.Scope{ .parent = null };
    if (context == .object) {
        var it = context.object.iterator();
        while (it.next()) |kv| {
            const v = value.fromJson(gpa, kv.value_ptr.*, 0) catch |err| switch (err) {
                error.OutOfMemory => return error.OutOfMemory,
                error.TooDeep => {
                    diag.message = try std.fmt.allocPrint(gpa, "the context nests deeper than {d} levels", .{value.max_data_depth});
                    return error.TemplateError;
                },
            };
            try root.set(gpa, kv.key_ptr.*, v);
        }
    }
    _ = in.renderNodes(&root, nodes) catch |err| switch (err) {
        error.OutOfMemory => return error.OutOfMemory,
        error.TemplateError => {
            diag.message = in.message;
            return error.TemplateError;
        },
    };
    return out.items;
}

fn expectRender(expected: []const u8, source: []const u8, context_json: []const u8) !void {
    var arena = std.heap.ArenaAllocator.init(std.testing.allocator);
    defer arena.deinit();
    const gpa = arena.allocator();
    const context = try std.json.parseFromSliceLeaky(std.json.Value, gpa, context_json, .{});
    var diag: Diagnostic = .{};
    const text = render(gpa, source, context, .{ .now = 1_700_000_000 }, &diag) catch |err| {
        std.debug.print("render failed: {s}\n", .{diag.message});
        return err;
    };
    try std.testing.expectEqualStrings(expected, text);
}

fn expectFailure(needle: []const u8, source: []const u8, limits: Limits) !void {
    var arena = std.heap.ArenaAllocator.init(std.testing.allocator);
    defer arena.deinit();
    var diag: Diagnostic = .{};
    try std.testing.expectError(error.TemplateError, render(arena.allocator(), source, .null, .{ .limits = limits }, &diag));
    if (std.mem.indexOf(u8, diag.message, needle) == null) {
        std.debug.print("message: {s}\n", .{diag.message});
        return error.TestUnexpectedResult;
    }
}

test "renders a chat" {
    try expectRender("<s>[user] hi\n[assistant] yo\n",
        \\{{ bos_token }}{% for m in messages %}
        \\[{{ m.role }}] {{ m['content'] | trim }}
        \\{% endfor %}
    , "{\"bos_token\": \"<s>\", \"messages\": [{\"role\": \"user\", \"content\": \" hi \"}, {\"role\": \"assistant\", \"content\": \"yo\"}]}");
    try expectRender("3|a-b|[1, 'x']|2023", "{{ 1 + 2 }}|{{ ['a', 'b'] | join('-') }}|{{ [1, 'x'] }}|{{ strftime_now('%Y') }}", "{}");
    try expectRender("{\"a\": [1, 2.0]}", "{{ {'a': [1, 2.0]} | tojson }}", "{}");
}

test "fails cleanly" {
    try expectFailure("boom", "{{ raise_exception('boom') }}", .{});
    try expectFailure("line 2", "x\n{% if %}", .{});
    try expectFailure("steps", "{% for i in range(100) %}{% for j in range(100) %}{% endfor %}{% endfor %}", .{ .max_steps = 1000 });
    try expectFailure("byte", "{% for i in range(100) %}xxxxxxxxxx{% endfor %}", .{ .max_output = 500 });
    try expectFailure("depth", "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", .{});
    try expectFailure("depth", "{{ " ++ "(" ** 10000 ++ "1" ++ ")" ** 10000 ++ " }}", .{});
    try expectFailure("is undefined", "{{ x.y }}", .{});
}

test "sizes and arithmetic a template computes never trap" {
    try expectFailure("byte limit", "{{ 'x' * 10**12 }}", .{});
    try expectFailure("byte limit", "{{ 'x' * 9223372036854775807 }}", .{});
    try expectFailure("items", "{{ [1, 2] * 10**12 }}", .{});
    try expectFailure("items", "{% set ns = namespace(l=[1]) %}{% for i in range(40) %}{% set ns.l = ns.l + ns.l %}{% endfor %}", .{});
    try expectFailure("items", "{% set l = [1] %}" ++ "{% set l = l + l %}" ** 40, .{});
    try expectFailure("items", "{{ ('x' * 2000) | list | length }}", .{ .max_items = 1000 });
    try expectFailure("byte limit", "{{ 'x' | center(10**12) }}", .{});
    try expectFailure("byte limit", "{{ 'x'.rjust(10**12) }}{{ 'x'.zfill(10**12) }}", .{});
    try expectFailure("byte limit", "{{ 'x\ny' | indent(10**12) }}", .{});
    try expectFailure("byte limit", "{{ [1] | tojson(indent=10**12) }}", .{});
    try expectFailure("byte limit", "{% set s = 'x' * 1000 %}{{ ([s] * 10000) | tojson }}", .{});
    try expectFailure("items", "{{ [1] | batch(10**12, 0) | list }}", .{});
    try expectFailure("overflow", "{{ (-9223372036854775807 - 1) | abs }}", .{});
    try expectFailure("infinity", "{{ '%d' % (1e308 * 10) }}", .{});
    try expectFailure("steps", "{{ range(-9223372036854775807 - 1, 9223372036854775807) | length }}", .{});
    try expectFailure("steps", "{{ range(9223372036854775807, -9223372036854775807 - 1, -1) | length }}", .{});
    try expectRender("0|-2|1|1", "{{ (-9223372036854775807 - 1) % -1 }}|{{ 7 % -3 }}|{{ (-9223372036854775807 - 1) % 3 }}|{{ 7 % 3 }}", "{}");
    try expectRender("[2]|[3, 1]|[1]|3|[]", "{{ [1, 2, 3][1::9223372036854775807] }}|{{ [1, 2, 3][::-9223372036854775807 - 1] + [1] }}|{{ [1, 2, 3][-9223372036854775807 - 1:1] }}|{{ [1, 2, 3][-1:9223372036854775807][0] }}|{{ '' * 10**12 }}{{ [] * 10**12 }}", "{}");
    try expectRender("[[1]]|10000000000000000000", "{{ [1] | batch(10**12) | list }}|{{ '%d' % 1e19 }}", "{}");
}

test {
    _ = @import("jinja/pystr.zig");
    _ = @import("jinja/value.zig");
    _ = @import("jinja/lexer.zig");
    _ = @import("jinja/parser.zig");
    _ = @import("jinja/json.zig");
    _ = @import("jinja/strftime.zig");
    _ = @import("jinja/builtins.zig");
    _ = @import("jinja/eval.zig");
}
