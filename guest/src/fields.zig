//! Typed access to the fields of a parsed JSON request, with the OpenAI error for a missing or
//! wrong-typed field (its `param` is the field's path, e.g. `messages[2].content`).
const std = @import("std");
const Value = std.json.Value;

pub const Invalid = error{ Invalid, OutOfMemory };

/// Where a validation problem is reported; `param` and `message` live in `gpa`.
pub const Problem = struct {
    gpa: std.mem.Allocator,
    param: ?[]const u8 = null,
    message: []const u8 = "",

    pub fn fail(self: *Problem, param: ?[]const u8, comptime fmt: []const u8, args: anytype) Invalid {
        self.param = param;
        self.message = try std.fmt.allocPrint(self.gpa, fmt, args);
        return error.Invalid;
    }
};

/// A JSON object with the path it was found at, for error messages.
pub const Object = struct {
    map: std.json.ObjectMap,
    path: []const u8, // "" at the top level
    problem: *Problem,

    pub fn get(self: Object, name: []const u8) ?Value {
        const v = self.map.get(name) orelse return null;
        return if (v == .null) null else v; // an explicit null means "not given", as OpenAI's API treats it
    }

    pub fn param(self: Object, name: []const u8) error{OutOfMemory}![]const u8 {
        if (self.path.len == 0) return name;
        return std.fmt.allocPrint(self.problem.gpa, "{s}.{s}", .{ self.path, name });
    }

    fn wrong(self: Object, name: []const u8, expected: []const u8, got: Value) Invalid {
        return self.problem.fail(try self.param(name), "'{s}' must be {s}, not {s}", .{ try self.param(name), expected, typeName(got) });
    }

    pub fn string(self: Object, name: []const u8) Invalid!?[]const u8 {
        const v = self.get(name) orelse return null;
        return if (v == .string) v.string else self.wrong(name, "a string", v);
    }

    pub fn boolean(self: Object, name: []const u8) Invalid!?bool {
        const v = self.get(name) orelse return null;
        return if (v == .bool) v.bool else self.wrong(name, "a boolean", v);
    }

    pub fn integer(self: Object, name: []const u8, min: i64, max: i64) Invalid!?i64 {
        const v = self.get(name) orelse return null;
        const n: i64 = switch (v) {
            .integer => |i| i,
            // 3.0 is accepted as 3, as Python's json-based servers do
            .float => |f| if (@floor(f) != f)
                return self.wrong(name, "an integer", v)
            else if (@abs(f) < 1e15) @intFromFloat(f) else return self.outOfRange(name, min, max),
            .number_string => return self.outOfRange(name, min, max),
            else => return self.wrong(name, "an integer", v),
        };
        if (n < min or n > max)
            return self.problem.fail(try self.param(name), "'{s}' must be between {d} and {d}, got {d}", .{ try self.param(name), min, max, n });
        return n;
    }

    fn outOfRange(self: Object, name: []const u8, min: i64, max: i64) Invalid {
        return self.problem.fail(try self.param(name), "'{s}' is out of range ({d} to {d})", .{ try self.param(name), min, max });
    }

    pub fn number(self: Object, name: []const u8, min: f64, max: f64) Invalid!?f64 {
        const v = self.get(name) orelse return null;
        const x: f64 = switch (v) {
            .integer => |i| @floatFromInt(i),
            .float => |f| f,
            // std.json keeps a number past f64 (1e400) as its text
            .number_string => |text| return self.problem.fail(try self.param(name), "'{s}' must be between {d} and {d}, got {}", .{ try self.param(name), min, max, echo(text) }),
            else => return self.wrong(name, "a number", v),
        };
        if (!(x >= min and x <= max))
            return self.problem.fail(try self.param(name), "'{s}' must be between {d} and {d}, got {d}", .{ try self.param(name), min, max, x });
        return x;
    }

    pub fn object(self: Object, name: []const u8) Invalid!?Object {
        const v = self.get(name) orelse return null;
        if (v != .object) return self.wrong(name, "an object", v);
        return .{ .map = v.object, .path = try self.param(name), .problem = self.problem };
    }

    pub fn array(self: Object, name: []const u8) Invalid!?[]Value {
        const v = self.get(name) orelse return null;
        return if (v == .array) v.array.items else self.wrong(name, "an array", v);
    }
};

/// How much of a request value an error message quotes: a 5 MB model name must not give a 5 MB
/// error. Characters, not bytes, so a cut never splits one.
pub const echo_max = 100;

/// A request value quoted in an error message, format it with `{}`: its first `echo_max`
/// characters, then `…` when there were more.
pub fn echo(text: []const u8) Echo {
    return .{ .text = text };
}

pub const Echo = struct {
    text: []const u8,

    pub fn format(self: Echo, comptime _: []const u8, _: std.fmt.FormatOptions, writer: anytype) !void {
        const s = self.text;
        var i: usize = 0;
        var n: usize = 0;
        while (i < s.len and n < echo_max) : (n += 1) {
            const len = std.unicode.utf8ByteSequenceLength(s[i]) catch 1;
            i = @min(s.len, i + len);
        }
        try writer.writeAll(s[0..i]);
        if (i < s.len) try writer.writeAll("…");
    }
};

pub fn typeName(v: Value) []const u8 {
    return switch (v) {
        .null => "null",
        .bool => "a boolean",
        .integer, .float, .number_string => "a number",
        .string => "a string",
        .array => "an array",
        .object => "an object",
    };
}

pub const max_depth = 64;

/// Parses a request body. Rejects (with a Problem) invalid JSON, with its line and column,
/// invalid UTF-8 in strings, nesting deeper than `max_depth`, and a top level that is not an
/// object. Duplicate keys: the last wins, as in Python's json.
pub fn parseBody(gpa: std.mem.Allocator, body: []const u8, problem: *Problem) Invalid!Object {
    if (nestingDepth(body) > max_depth)
        return problem.fail(null, "the request body nests JSON deeper than {d} levels", .{max_depth});
    var scanner = std.json.Scanner.initCompleteInput(gpa, body);
    var diagnostics = std.json.Diagnostics{};
    scanner.enableDiagnostics(&diagnostics);
    const value = std.json.parseFromTokenSourceLeaky(Value, gpa, &scanner, .{
        .duplicate_field_behavior = .use_last,
        .max_value_len = body.len,
    }) catch |err| switch (err) {
        // A body within the host's size limit can still hold millions of tiny values; that is
        // the request's doing (a 400), and the message must not need memory.
        error.OutOfMemory => {
            problem.param = null;
            problem.message = "the request body holds more JSON values than the guest has memory to parse";
            return error.Invalid;
        },
        else => return problem.fail(null, "the request body is not valid JSON ({s} at line {d}, column {d})", .{
            if (err == error.SyntaxError and surrogateNear(body, diagnostics.getByteOffset()))
                "an unpaired UTF-16 surrogate in a \\u escape"
            else
                describe(err),
            diagnostics.getLine(),
            diagnostics.getColumn(),
        }),
    };
    if (value != .object) return problem.fail(null, "the request body must be a JSON object, not {s}", .{typeName(value)});
    return .{ .map = value.object, .path = "", .problem = problem };
}

fn describe(err: anyerror) []const u8 {
    return switch (err) {
        error.UnexpectedEndOfInput => "unexpected end of input",
        error.SyntaxError => "syntax error or invalid UTF-8",
        error.BufferUnderrun, error.ValueTooLong => "value too long",
        else => @errorName(err),
    };
}

/// Whether an unpaired `\uD800`-`\uDFFF` escape ends just before `offset` (where the scanner
/// stopped): std.json refuses unpaired surrogates as a plain syntax error.
fn surrogateNear(body: []const u8, offset: u64) bool {
    const end: usize = @intCast(@min(offset + 1, body.len));
    var i: usize = end -| 12;
    while (i + 6 <= end) : (i += 1) {
        const unit = escapeAt(body, i) orelse continue;
        if (unit >= 0xd800 and unit <= 0xdbff) { // high: paired when a low one follows
            const next = escapeAt(body, i + 6) orelse return true;
            if (next < 0xdc00 or next > 0xdfff) return true;
            i += 11;
        } else if (unit >= 0xdc00 and unit <= 0xdfff) { // low: paired when it follows a high one
            const prev = if (i >= 6) escapeAt(body, i - 6) else null;
            if (prev == null or prev.? < 0xd800 or prev.? > 0xdbff) return true;
        }
    }
    return false;
}

/// The code unit of a `\uXXXX` escape at `body[i]`.
fn escapeAt(body: []const u8, i: usize) ?u16 {
    if (i + 6 > body.len or body[i] != '\\' or body[i + 1] != 'u') return null;
    for (body[i + 2 .. i + 6]) |c| if (!std.ascii.isHex(c)) return null;
    return std.fmt.parseInt(u16, body[i + 2 .. i + 6], 16) catch null;
}

/// The deepest nesting of arrays and objects, counted without parsing (strings skipped).
pub fn nestingDepth(body: []const u8) usize {
    var depth: usize = 0;
    var deepest: usize = 0;
    var in_string = false;
    var escaped = false;
    for (body) |c| {
        if (in_string) {
            if (escaped) {
                escaped = false;
            } else if (c == '\\') {
                escaped = true;
            } else if (c == '"') {
                in_string = false;
            }
            continue;
        }
        switch (c) {
            '"' => in_string = true,
            '[', '{' => {
                depth += 1;
                deepest = @max(deepest, depth);
            },
            ']', '}' => depth -|= 1,
            else => {},
        }
    }
    return deepest;
}
