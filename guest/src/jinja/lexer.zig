//! Splits a template into tokens with jinja2's whitespace rules as Hugging Face configures
//! them (trim_blocks, lstrip_blocks, `-`/`+` modifiers), mirroring jinja2/lexer.py so that
//! the text between tags comes out byte for byte the same. Comments vanish here and raw
//! blocks become plain text.
const std = @import("std");
const pystr = @import("pystr.zig");
const Allocator = std.mem.Allocator;

pub const Kind = enum { data, var_begin, var_end, block_begin, block_end, name, string, int, float, op, eof };

pub const Token = struct {
    kind: Kind,
    /// Source text; for `string` the decoded value, for `op` the operator.
    text: []const u8,
    line: u32,
    int: i64 = 0,
    float: f64 = 0,
};

pub const Error = error{ OutOfMemory, TemplateError };

/// Where a syntax error is reported: the parser turns it into the diagnostic.
pub const Failure = struct {
    message: []const u8 = "",
    line: u32 = 0,
};

/// Tokenizes `source`; tokens and decoded strings are allocated in `gpa` (caller owns them).
pub fn tokenize(gpa: Allocator, source: []const u8, failure: *Failure) Error![]Token {
    var lx = Lexer{ .gpa = gpa, .src = try normalize(gpa, source), .failure = failure };
    try lx.run();
    try lx.tokens.append(gpa, .{ .kind = .eof, .text = "", .line = lx.line });
    return lx.tokens.items;
}

/// jinja2 treats \r\n and \r as \n and drops one trailing newline (keep_trailing_newline=False).
fn normalize(gpa: Allocator, source: []const u8) Allocator.Error![]const u8 {
    var src = source;
    if (std.mem.indexOfScalar(u8, source, '\r') != null) {
        var out = try std.ArrayListUnmanaged(u8).initCapacity(gpa, source.len);
        var i: usize = 0;
        while (i < source.len) : (i += 1) {
            if (source[i] == '\r') {
                out.appendAssumeCapacity('\n');
                if (i + 1 < source.len and source[i + 1] == '\n') i += 1;
            } else out.appendAssumeCapacity(source[i]);
        }
        src = out.items;
    }
    if (src.len > 0 and src[src.len - 1] == '\n') src = src[0 .. src.len - 1];
    return src;
}

fn isWs(s: []const u8, i: usize) usize {
    const d = pystr.decode(s, i);
    return if (pystr.isSpace(d.cp)) d.len else 0;
}

fn skipWs(s: []const u8, start: usize) usize {
    var i = start;
    while (i < s.len) {
        const n = isWs(s, i);
        if (n == 0) break;
        i += n;
    }
    return i;
}

fn allWs(s: []const u8) bool {
    return skipWs(s, 0) == s.len;
}

const Lexer = struct {
    gpa: Allocator,
    src: []const u8,
    failure: *Failure,
    pos: usize = 0,
    line: u32 = 1,
    /// jinja2's `line_starting`: the previous match ended with a newline (or nothing came yet).
    line_starting: bool = true,
    tokens: std.ArrayListUnmanaged(Token) = .{},

    fn fail(lx: *Lexer, comptime fmt: []const u8, args: anytype) Error {
        lx.failure.* = .{ .message = try std.fmt.allocPrint(lx.gpa, fmt, args), .line = lx.line };
        return error.TemplateError;
    }

    fn emit(lx: *Lexer, kind: Kind, text: []const u8) Allocator.Error!void {
        try lx.tokens.append(lx.gpa, .{ .kind = kind, .text = text, .line = lx.line });
    }

    /// Advances to `end`, counting lines.
    fn advance(lx: *Lexer, end: usize) void {
        lx.line += @intCast(std.mem.count(u8, lx.src[lx.pos..end], "\n"));
        lx.pos = end;
    }

    /// Applies `-` (strip all trailing whitespace) or lstrip_blocks to the text before a tag.
    fn stripText(lx: *Lexer, text: []const u8, sign: u8, is_variable: bool) []const u8 {
        if (sign == '-') return pystr.strip(text, null, false, true);
        if (sign != '+' and !is_variable) {
            const l_pos = if (std.mem.lastIndexOfScalar(u8, text, '\n')) |i| i + 1 else 0;
            if ((l_pos > 0 or lx.line_starting) and l_pos < text.len and allWs(text[l_pos..])) return text[0..l_pos];
        }
        return text;
    }

    fn run(lx: *Lexer) Error!void {
        const src = lx.src;
        while (lx.pos < src.len) {
            const start = findTag(src, lx.pos) orelse {
                try lx.emit(.data, src[lx.pos..]);
                lx.advance(src.len);
                return;
            };
            const kind = src[start + 1];
            var after = start + 2;
            var sign: u8 = 0;
            if (after < src.len and (src[after] == '-' or src[after] == '+')) {
                sign = src[after];
                after += 1;
            }
            const raw_end: ?usize = if (kind == '%') matchRaw(src, after, "raw", false) else null;
            const text = lx.stripText(src[lx.pos..start], sign, kind == '{');
            if (text.len > 0) try lx.emit(.data, text);
            lx.advance(start);
            lx.line_starting = false;
            if (raw_end) |end| {
                lx.line_starting = src[end - 1] == '\n';
                lx.advance(end);
                try lx.raw();
                continue;
            }
            lx.advance(after);
            switch (kind) {
                '#' => try lx.comment(),
                '%' => try lx.tag(.block_begin, .block_end),
                else => try lx.tag(.var_begin, .var_end),
            }
        }
    }

    fn comment(lx: *Lexer) Error!void {
        const src = lx.src;
        var j = lx.pos;
        while (j < src.len) : (j += 1) {
            if (std.mem.startsWith(u8, src[j..], "#}")) break;
            if ((src[j] == '+' or src[j] == '-') and std.mem.startsWith(u8, src[j + 1 ..], "#}")) break;
        } else return lx.fail("Missing end of comment tag", .{});
        var end = j;
        if (src[j] == '-') {
            end = skipWs(src, j + 3);
        } else if (src[j] == '+') {
            end = j + 3;
        } else {
            end = j + 2;
            if (end < src.len and src[end] == '\n') end += 1;
        }
        lx.line_starting = src[end - 1] == '\n';
        lx.advance(end);
    }

    /// Matches `\s*<word>\s*(-%}\s*|%}...)` at `i`; returns the end. `trim` adds the
    /// `+%}`/`%}\n?` forms of an end tag (a raw *begin* tag takes `%}` without trim_blocks).
    fn matchRaw(src: []const u8, i: usize, word: []const u8, trim: bool) ?usize {
        var p = skipWs(src, i);
        if (!std.mem.startsWith(u8, src[p..], word)) return null;
        p = skipWs(src, p + word.len);
        if (trim and std.mem.startsWith(u8, src[p..], "+%}")) return p + 3;
        if (std.mem.startsWith(u8, src[p..], "-%}")) return skipWs(src, p + 3);
        if (std.mem.startsWith(u8, src[p..], "%}")) {
            if (trim and p + 2 < src.len and src[p + 2] == '\n') return p + 3;
            return p + 2;
        }
        return null;
    }

    fn raw(lx: *Lexer) Error!void {
        const src = lx.src;
        var j = lx.pos;
        while (std.mem.indexOfPos(u8, src, j, "{%")) |at| : (j = at + 1) {
            var after = at + 2;
            var sign: u8 = 0;
            if (after < src.len and (src[after] == '-' or src[after] == '+')) {
                sign = src[after];
                after += 1;
            }
            const end = matchRaw(src, after, "endraw", true) orelse continue;
            const text = lx.stripText(src[lx.pos..at], sign, false);
            if (text.len > 0) try lx.emit(.data, text);
            lx.line_starting = src[end - 1] == '\n';
            lx.advance(end);
            return;
        }
        return lx.fail("Missing end of raw directive", .{});
    }

    fn tag(lx: *Lexer, begin: Kind, end: Kind) Error!void {
        const src = lx.src;
        try lx.emit(begin, "");
        var balance: std.ArrayListUnmanaged(u8) = .{};
        while (true) {
            const p = lx.pos;
            if (p >= src.len) return lx.fail("unexpected end of template, expected '{s}'", .{if (end == .block_end) "%}" else "}}"});
            if (balance.items.len == 0) {
                if (matchEnd(src, p, end == .block_end)) |stop| {
                    try lx.emit(end, "");
                    lx.line_starting = src[stop - 1] == '\n';
                    lx.advance(stop);
                    return;
                }
            }
            const ws = skipWs(src, p);
            if (ws > p) {
                lx.advance(ws);
                continue;
            }
            const c = src[p];
            if (std.ascii.isDigit(c)) {
                try lx.number();
            } else if (std.ascii.isAlphabetic(c) or c == '_') {
                var i = p + 1;
                while (i < src.len and (std.ascii.isAlphanumeric(src[i]) or src[i] == '_')) i += 1;
                try lx.emit(.name, src[p..i]);
                lx.pos = i;
            } else if (c == '\'' or c == '"') {
                try lx.string();
            } else {
                const op = matchOperator(src[p..]) orelse return lx.fail("unexpected char '{c}' at {d}", .{ c, p });
                switch (op[0]) {
                    '(' => try balance.append(lx.gpa, ')'),
                    '[' => try balance.append(lx.gpa, ']'),
                    '{' => try balance.append(lx.gpa, '}'),
                    ')', ']', '}' => {
                        const expected = balance.pop() orelse return lx.fail("unexpected '{s}'", .{op});
                        if (expected != op[0]) return lx.fail("unexpected '{s}', expected '{c}'", .{ op, expected });
                    },
                    else => {},
                }
                try lx.emit(.op, op);
                lx.pos += op.len;
            }
        }
    }

    fn matchEnd(src: []const u8, p: usize, block: bool) ?usize {
        const close = if (block) "%}" else "}}";
        if (block and src[p] == '+' and std.mem.startsWith(u8, src[p + 1 ..], close)) return p + 3;
        if (src[p] == '-' and std.mem.startsWith(u8, src[p + 1 ..], close)) return skipWs(src, p + 3);
        if (std.mem.startsWith(u8, src[p..], close)) {
            if (block and p + 2 < src.len and src[p + 2] == '\n') return p + 3;
            return p + 2;
        }
        return null;
    }

    fn digits(src: []const u8, start: usize) usize {
        var i = start;
        while (i < src.len and (std.ascii.isDigit(src[i]) or (src[i] == '_' and i + 1 < src.len and std.ascii.isDigit(src[i + 1]) and i > start))) i += 1;
        return i;
    }

    fn number(lx: *Lexer) Error!void {
        const src = lx.src;
        const p = lx.pos;
        if (src[p] == '0' and p + 1 < src.len and std.mem.indexOfScalar(u8, "bBoOxX", src[p + 1]) != null) {
            var i = p + 2;
            while (i < src.len and (std.ascii.isHex(src[i]) or src[i] == '_')) i += 1;
            const v = std.fmt.parseInt(i64, src[p..i], 0) catch return lx.fail("invalid integer literal '{s}'", .{src[p..i]});
            try lx.tokens.append(lx.gpa, .{ .kind = .int, .text = src[p..i], .line = lx.line, .int = v });
            lx.pos = i;
            return;
        }
        var i = digits(src, p);
        var is_float = false;
        if (p == 0 or src[p - 1] != '.') {
            if (i + 1 < src.len and src[i] == '.' and std.ascii.isDigit(src[i + 1])) {
                i = digits(src, i + 1);
                is_float = true;
            }
            if (i < src.len and (src[i] == 'e' or src[i] == 'E')) {
                var k = i + 1;
                if (k < src.len and (src[k] == '+' or src[k] == '-')) k += 1;
                if (k < src.len and std.ascii.isDigit(src[k])) {
                    i = digits(src, k);
                    is_float = true;
                }
            }
        }
        const text = src[p..i];
        var clean: std.ArrayListUnmanaged(u8) = .{};
        for (text) |ch| if (ch != '_') try clean.append(lx.gpa, ch);
        if (is_float) {
            const f = std.fmt.parseFloat(f64, clean.items) catch return lx.fail("invalid float literal '{s}'", .{text});
            try lx.tokens.append(lx.gpa, .{ .kind = .float, .text = text, .line = lx.line, .float = f });
        } else {
            const v = std.fmt.parseInt(i64, clean.items, 10) catch return lx.fail("integer literal '{s}' is too large", .{text});
            try lx.tokens.append(lx.gpa, .{ .kind = .int, .text = text, .line = lx.line, .int = v });
        }
        lx.pos = i;
    }

    fn string(lx: *Lexer) Error!void {
        const src = lx.src;
        const p = lx.pos;
        const quote = src[p];
        var i = p + 1;
        while (i < src.len and src[i] != quote) : (i += 1) {
            if (src[i] == '\\') i += 1;
        }
        if (i >= src.len) return lx.fail("unexpected char '{c}' at {d}", .{ quote, p });
        const value = try unescape(lx.gpa, src[p + 1 .. i]);
        try lx.tokens.append(lx.gpa, .{ .kind = .string, .text = value, .line = lx.line });
        lx.advance(i + 1);
    }
};

/// The first `{{`, `{%` or `{#` at or after `from`.
fn findTag(src: []const u8, from: usize) ?usize {
    var i = from;
    while (std.mem.indexOfScalarPos(u8, src, i, '{')) |at| : (i = at + 1) {
        if (at + 1 < src.len and (src[at + 1] == '{' or src[at + 1] == '%' or src[at + 1] == '#')) return at;
    }
    return null;
}

fn matchOperator(s: []const u8) ?[]const u8 {
    const two = [_][]const u8{ "//", "**", "==", "!=", ">=", "<=" };
    for (two) |op| if (std.mem.startsWith(u8, s, op)) return op;
    const one = "+-/*%~[](){}><=.:|,;";
    if (std.mem.indexOfScalar(u8, one, s[0])) |i| return one[i .. i + 1];
    return null;
}

/// Python's "unicode-escape" decoding of a string literal's body, as jinja2 applies it.
fn unescape(gpa: Allocator, body: []const u8) Allocator.Error![]const u8 {
    if (std.mem.indexOfScalar(u8, body, '\\') == null) return body;
    var out: std.ArrayListUnmanaged(u8) = .{};
    var i: usize = 0;
    while (i < body.len) {
        const c = body[i];
        if (c != '\\' or i + 1 >= body.len) {
            try out.append(gpa, c);
            i += 1;
            continue;
        }
        const e = body[i + 1];
        i += 2;
        switch (e) {
            '\n' => {},
            '\\', '\'', '"' => try out.append(gpa, e),
            'a' => try out.append(gpa, 0x07),
            'b' => try out.append(gpa, 0x08),
            'f' => try out.append(gpa, 0x0c),
            'n' => try out.append(gpa, '\n'),
            'r' => try out.append(gpa, '\r'),
            't' => try out.append(gpa, '\t'),
            'v' => try out.append(gpa, 0x0b),
            '0'...'7' => {
                var v: u21 = e - '0';
                var n: usize = 1;
                while (n < 3 and i < body.len and body[i] >= '0' and body[i] <= '7') : (n += 1) {
                    v = v * 8 + (body[i] - '0');
                    i += 1;
                }
                try pystr.appendCodepoint(gpa, &out, v);
            },
            'x', 'u', 'U' => {
                const n: usize = switch (e) {
                    'x' => 2,
                    'u' => 4,
                    else => 8,
                };
                const cp = if (i + n <= body.len) std.fmt.parseInt(u21, body[i .. i + n], 16) catch null else null;
                if (cp) |v| {
                    try pystr.appendCodepoint(gpa, &out, v);
                    i += n;
                } else {
                    try out.append(gpa, '\\');
                    try out.append(gpa, e);
                }
            },
            else => {
                try out.append(gpa, '\\');
                try out.append(gpa, e);
            },
        }
    }
    return out.items;
}

fn expectTokens(source: []const u8, expected: []const Kind) !void {
    var arena = std.heap.ArenaAllocator.init(std.testing.allocator);
    defer arena.deinit();
    var failure: Failure = .{};
    const tokens = try tokenize(arena.allocator(), source, &failure);
    try std.testing.expectEqual(expected.len, tokens.len);
    for (expected, tokens) |k, t| try std.testing.expectEqual(k, t.kind);
}

test "lexes tags and whitespace control" {
    try expectTokens("a {{ x }} b", &.{ .data, .var_begin, .name, .var_end, .data, .eof });
    try expectTokens("  {% if x %}\n  y", &.{ .block_begin, .name, .name, .block_end, .data, .eof });
    try expectTokens("{# c #}{{ {'a': 1} }}", &.{ .var_begin, .op, .string, .op, .int, .op, .var_end, .eof });
    var arena = std.heap.ArenaAllocator.init(std.testing.allocator);
    defer arena.deinit();
    var failure: Failure = .{};
    const tokens = try tokenize(arena.allocator(), "x  {%- raw -%}  {{ y }}  {%- endraw %}\nz", &failure);
    try std.testing.expectEqualStrings("x", tokens[0].text);
    try std.testing.expectEqualStrings("{{ y }}", tokens[1].text);
    try std.testing.expectEqualStrings("z", tokens[2].text);
}
