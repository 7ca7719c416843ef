//! jinja2's filters and tests, the Python methods templates call on strings, dicts and lists,
//! and the globals HF provides, each with the semantics of jinja2/filters.py, jinja2/tests.py
//! and the ImmutableSandboxedEnvironment (mutating methods are refused).
const std = @import("std");
const value = @import("value.zig");
const pystr = @import("pystr.zig");
const json = @import("json.zig");
const eval = @import("eval.zig");
const strftime = @import("strftime.zig");
const Allocator = std.mem.Allocator;
const Value = value.Value;
const Interp = eval.Interp;
const Error = eval.Error;

pub const Args = struct {
    positional: []const Value = &.{},
    keyword: []const Keyword = &.{},

    pub const Keyword = struct { name: []const u8, value: Value };

    /// The argument at `index` (after the filtered value) or passed as `name=`.
    pub fn get(a: Args, index: usize, name: []const u8) ?Value {
        if (index < a.positional.len) return a.positional[index];
        for (a.keyword) |k| if (std.mem.eql(u8, k.name, name)) return k.value;
        return null;
    }

    pub fn rest(a: Args, from: usize) Args {
        return .{ .positional = if (from < a.positional.len) a.positional[from..] else &.{}, .keyword = a.keyword };
    }
};

fn eq(a: []const u8, b: []const u8) bool {
    return std.mem.eql(u8, a, b);
}

fn oneOf(name: []const u8, comptime names: []const []const u8) bool {
    inline for (names) |n| if (eq(name, n)) return true;
    return false;
}

// --- filters ------------------------------------------------------------------------------

/// jinja2's default filters plus HF's tojson: a known name parses; the unsupported few fail
/// when run.
const filter_names = [_][]const u8{
    "abs",       "attr",      "batch",     "capitalize",     "center",  "count",      "d",           "default",
    "dictsort",  "e",         "escape",    "filesizeformat", "first",   "float",      "forceescape", "format",
    "groupby",   "indent",    "int",       "join",           "last",    "length",     "list",        "lower",
    "items",     "map",       "min",       "max",            "pprint",  "random",     "reject",      "rejectattr",
    "replace",   "reverse",   "round",     "safe",           "select",  "selectattr", "slice",       "sort",
    "string",    "striptags", "sum",       "title",          "trim",    "truncate",   "unique",      "upper",
    "urlencode", "urlize",    "wordcount", "wordwrap",       "xmlattr", "tojson",
};

pub fn isFilter(name: []const u8) bool {
    for (filter_names) |n| if (eq(n, name)) return true;
    return false;
}

pub fn filter(in: *Interp, name: []const u8, v_in: Value, args: Args) Error!Value {
    const gpa = in.gpa;
    if (eq(name, "safe")) return if (v_in == .markup) v_in else .{ .markup = try in.toStr(v_in) };
    if (oneOf(name, &.{ "escape", "e" }) and v_in == .markup) return v_in;
    if (oneOf(name, &.{ "escape", "e", "forceescape" })) return .{ .markup = try escape(in, try in.toStr(v_in)) };
    const v = if (eq(name, "default") or eq(name, "d")) v_in else v_in.plain();
    if (oneOf(name, &.{ "default", "d" })) {
        const fallback = args.get(0, "default_value") orelse Value.str("");
        const boolean = value.truthy(args.get(1, "boolean") orelse .{ .boolean = false });
        if (v == .undefined or (boolean and !value.truthy(v))) return fallback;
        return v;
    }
    if (eq(name, "tojson")) return tojson(in, v, args);
    if (oneOf(name, &.{ "length", "count" })) return .{ .int = @intCast(try length(in, v)) };
    if (eq(name, "string")) return Value.str(try in.toStr(v));
    if (eq(name, "trim")) {
        const chars = try optStr(in, args.get(0, "chars"));
        return Value.str(pystr.strip(try in.toStr(v), chars, true, true));
    }
    if (eq(name, "upper")) return Value.str(try pystr.changeCase(gpa, try in.toStr(v), .upper));
    if (eq(name, "lower")) return Value.str(try pystr.changeCase(gpa, try in.toStr(v), .lower));
    if (eq(name, "capitalize")) return Value.str(try pystr.changeCase(gpa, try in.toStr(v), .capitalize));
    if (eq(name, "title")) return Value.str(try titleFilter(in, try in.toStr(v)));
    if (eq(name, "join")) return join(in, v, args);
    if (eq(name, "items")) {
        if (v == .undefined) return in.newLazy(&.{}, .generator);
        if (v != .dict) return in.fail("Can only get item pairs from a mapping.", .{});
        return in.newLazy((try itemsOf(in, v.dict)).list.items, .generator);
    }
    if (eq(name, "list")) return in.newList(try in.iterate(v), false);
    if (eq(name, "first")) {
        const items = try in.iterate(v);
        return if (items.len > 0) items[0] else .{ .undefined = .{ .name = "first" } };
    }
    if (eq(name, "last")) {
        if (v == .list and v.list.lazy == .generator) return in.fail("'generator' object is not reversible", .{});
        const items = try in.iterate(v);
        return if (items.len > 0) items[items.len - 1] else .{ .undefined = .{ .name = "last" } };
    }
    if (eq(name, "reverse")) {
        const items = try in.iterate(v);
        const out = try gpa.alloc(Value, items.len);
        for (items, 0..) |item, i| out[items.len - 1 - i] = item;
        if (v == .string) {
            var buf: std.ArrayListUnmanaged(u8) = .{};
            for (out) |c| try buf.appendSlice(gpa, c.string);
            return Value.str(buf.items);
        }
        return in.newLazy(out, .generator); // reversed() is an iterator
    }
    if (eq(name, "replace")) {
        const s = try in.toStr(v);
        const old = try in.toStr(args.get(0, "old") orelse return in.fail("replace() missing argument 'old'", .{}));
        const new = try in.toStr(args.get(1, "new") orelse return in.fail("replace() missing argument 'new'", .{}));
        const count = if (args.get(2, "count")) |c| value.asInt(c) orelse -1 else -1;
        return Value.str(try replace(in, s, old, new, count));
    }
    if (oneOf(name, &.{ "indent", "int", "float", "dictsort" }) and v == .undefined) return in.failUndefined(v.undefined);
    if (eq(name, "indent")) return indent(in, v, args);
    if (oneOf(name, &.{ "selectattr", "rejectattr", "select", "reject" })) return select(in, name, v, args);
    if (eq(name, "map")) return map(in, v, args);
    if (eq(name, "int")) return toInt(in, v, args);
    if (eq(name, "float")) return toFloat(v, args.get(0, "default") orelse .{ .float = 0 });
    if (eq(name, "abs")) return switch (v) {
        .int => |i| .{ .int = if (i >= 0) i else std.math.negate(i) catch return in.fail("integer overflow", .{}) },
        .boolean => |b| .{ .int = @intFromBool(b) },
        .float => |f| .{ .float = @abs(f) },
        else => in.fail("bad operand type for abs(): '{s}'", .{value.typeName(v)}),
    };
    if (eq(name, "round")) return round(in, v, args);
    if (oneOf(name, &.{ "sort", "unique", "min", "max" })) return sortLike(in, name, v, args);
    if (eq(name, "dictsort")) return dictsort(in, v, args);
    if (eq(name, "sum")) {
        var total = args.get(1, "start") orelse Value{ .int = 0 };
        const attr = try optStr(in, args.get(0, "attribute"));
        for (try in.iterate(v)) |item| {
            const x = if (attr) |a| try attrPath(in, item, a) else item;
            total = try in.binary(.add, total, x);
        }
        return total;
    }
    if (eq(name, "attr")) { // getattr() only: no fallback to dict keys
        const attr = try in.toStr(args.get(0, "name") orelse Value.str(""));
        if (v == .undefined) return in.failUndefined(v.undefined);
        if (v == .namespace or v == .loop or methodKind(v, attr) != null) return in.getAttr(v, attr);
        return .{ .undefined = .{ .name = attr, .owner = value.typeName(v) } };
    }
    if (eq(name, "format")) {
        const s = try in.toStr(v);
        return percentFormat(in, s, try in.newList(args.positional, true));
    }
    if (eq(name, "wordcount")) {
        const s = try in.toStr(v);
        var n: i64 = 0;
        var in_word = false;
        for (s) |c| {
            const w = std.ascii.isAlphanumeric(c) or c == '_' or c >= 0x80;
            if (w and !in_word) n += 1;
            in_word = w;
        }
        return .{ .int = n };
    }
    if (eq(name, "batch")) {
        const size = value.asInt(args.get(0, "linecount") orelse .{ .int = 1 }) orelse 1;
        if (size <= 0) return in.fail("batch size must be positive", .{});
        const fill = args.get(1, "fill_with");
        const items = try in.iterate(v);
        var batches: std.ArrayListUnmanaged(Value) = .{};
        var i: usize = 0;
        // Unfilled, a batch never holds more than the items there are; filled, it is `size` long.
        const n: usize = if (fill != null) try in.sizeArg(size, .items) else @min(std.math.cast(usize, size) orelse std.math.maxInt(usize), @max(items.len, 1));
        while (i < items.len) : (i += n) {
            var chunk: std.ArrayListUnmanaged(Value) = .{};
            try chunk.appendSlice(gpa, items[i..@min(i + n, items.len)]);
            if (fill) |f| while (chunk.items.len < n) try chunk.append(gpa, f);
            try batches.append(gpa, try in.newList(chunk.items, false));
        }
        return in.newLazy(batches.items, .generator);
    }
    if (eq(name, "striptags")) return Value.str(try striptags(in, try in.toStr(v)));
    if (eq(name, "center")) {
        const s = try in.toStr(v);
        const width = try in.sizeArg(value.asInt(args.get(0, "width") orelse .{ .int = 80 }) orelse 80, .bytes);
        return Value.str(try pad(in, s, width, .center));
    }
    if (isFilter(name)) return in.fail("the '{s}' filter is not supported", .{name});
    return in.fail("No filter named '{s}'.", .{name});
}

fn optStr(in: *Interp, v: ?Value) Error!?[]const u8 {
    const x = v orelse return null;
    if (x == .none) return null;
    return try in.toStr(x);
}

pub fn length(in: *Interp, v: Value) Error!usize {
    return switch (v) {
        .string => |s| pystr.length(s),
        .list => |l| if (l.lazy == .generator) in.fail("object of type 'generator' has no len()", .{}) else l.items.len,
        .dict => |d| d.entries.len,
        .undefined => 0,
        else => in.fail("object of type '{s}' has no len()", .{value.typeName(v)}),
    };
}

fn itemsOf(in: *Interp, d: *const value.Dict) Error!Value {
    const out = try in.gpa.alloc(Value, d.entries.len);
    for (d.entries, out) |e, *o| o.* = try in.newList(try in.gpa.dupe(Value, &.{ e.key, e.value }), true);
    return in.newList(out, false);
}

fn tojson(in: *Interp, v: Value, args: Args) Error!Value {
    var options = json.Options{};
    if (args.get(0, "ensure_ascii")) |x| options.ensure_ascii = value.truthy(x);
    if (args.get(1, "indent")) |x| switch (x) {
        .none => {},
        .int, .boolean => {
            const n = try in.sizeArg(value.asInt(x).?, .bytes);
            const text = try in.gpa.alloc(u8, n);
            @memset(text, ' ');
            options.indent = text;
        },
        .string => |s| options.indent = s,
        else => return in.fail("indent must be an integer or a string", .{}),
    };
    if (args.get(2, "separators")) |x| if (x != .none) {
        if (x != .list or x.list.items.len != 2 or x.list.items[0] != .string or x.list.items[1] != .string)
            return in.fail("separators must be a pair of strings", .{});
        options.item_separator = x.list.items[0].string;
        options.key_separator = x.list.items[1].string;
    };
    if (args.get(3, "sort_keys")) |x| options.sort_keys = value.truthy(x);
    var out: std.ArrayListUnmanaged(u8) = .{};
    var w = json.Writer{ .gpa = in.gpa, .out = &out, .options = options, .max_len = in.limits.max_output };
    w.write(v, 0) catch |err| return switch (err) {
        error.OutOfMemory => error.OutOfMemory,
        error.TooDeep => in.fail("data nests deeper than {d} levels", .{value.max_data_depth}),
        error.TooLong => in.failSize(),
        error.NotSerializable => in.fail("Object of type {s} is not JSON serializable", .{w.bad_type}),
        error.BadKey => in.fail("keys must be str, int, float, bool or None, not {s}", .{w.bad_type}),
        error.Unorderable => in.fail("'<' not supported between dictionary keys of different types", .{}),
    };
    try in.checkSize(out.items.len);
    return Value.str(out.items);
}

fn titleFilter(in: *Interp, s: []const u8) Error![]const u8 {
    // jinja2 splits before runs of `-`, whitespace and opening brackets, then capitalizes
    // each piece's first character and lowercases the rest.
    var out: std.ArrayListUnmanaged(u8) = .{};
    var i: usize = 0;
    var at_start = true;
    while (i < s.len) {
        const d = pystr.decode(s, i);
        i += d.len;
        const sep = d.cp == '-' or d.cp == '(' or d.cp == '{' or d.cp == '[' or d.cp == '<' or pystr.isSpace(d.cp);
        if (sep) {
            at_start = true;
            try pystr.appendCodepoint(in.gpa, &out, d.cp);
            continue;
        }
        try pystr.appendCodepoint(in.gpa, &out, if (at_start) pystr.toUpper(d.cp) else pystr.toLower(d.cp));
        at_start = false;
    }
    return out.items;
}

fn join(in: *Interp, v: Value, args: Args) Error!Value {
    const sep = try in.toStr(args.get(0, "d") orelse Value.str(""));
    const attr = try optStr(in, args.get(1, "attribute"));
    var out: std.ArrayListUnmanaged(u8) = .{};
    for (try in.iterate(v), 0..) |item, i| {
        if (i > 0) try out.appendSlice(in.gpa, sep);
        const x = if (attr) |a| try attrPath(in, item, a) else item;
        try out.appendSlice(in.gpa, try in.toStr(x));
        try in.checkSize(out.items.len);
    }
    return Value.str(out.items);
}

fn replace(in: *Interp, s: []const u8, old: []const u8, new: []const u8, count: i64) Error![]const u8 {
    var out: std.ArrayListUnmanaged(u8) = .{};
    var done: i64 = 0;
    if (old.len == 0) { // Python inserts `new` around every character
        var i: usize = 0;
        while (true) {
            if (count < 0 or done < count) {
                try out.appendSlice(in.gpa, new);
                done += 1;
            }
            if (i >= s.len) break;
            const d = pystr.decode(s, i);
            try out.appendSlice(in.gpa, s[i .. i + d.len]);
            i += d.len;
            try in.checkSize(out.items.len);
        }
        return out.items;
    }
    var start: usize = 0;
    while (count < 0 or done < count) : (done += 1) {
        const at = std.mem.indexOfPos(u8, s, start, old) orelse break;
        try out.appendSlice(in.gpa, s[start..at]);
        try out.appendSlice(in.gpa, new);
        try in.checkSize(out.items.len);
        start = at + old.len;
    }
    try out.appendSlice(in.gpa, s[start..]);
    return out.items;
}

fn indent(in: *Interp, v: Value, args: Args) Error!Value {
    const width = args.get(0, "width") orelse Value{ .int = 4 };
    const prefix: []const u8 = switch (width) {
        .string => |s| s,
        else => blk: {
            const n = try in.sizeArg(value.asInt(width) orelse return in.fail("indent width must be an integer", .{}), .bytes);
            const p = try in.gpa.alloc(u8, n);
            @memset(p, ' ');
            break :blk p;
        },
    };
    if (v != .string) return in.fail("unsupported operand type(s) for +=: '{s}' and 'str'", .{value.typeName(v)});
    const first = value.truthy(args.get(1, "first") orelse .{ .boolean = false });
    const blank = value.truthy(args.get(2, "blank") orelse .{ .boolean = false });
    const s = try std.mem.concat(in.gpa, u8, &.{ try in.toStr(v), "\n" });
    const lines = try pystr.splitLines(in.gpa, s);
    var out: std.ArrayListUnmanaged(u8) = .{};
    if (first) try out.appendSlice(in.gpa, prefix);
    for (lines, 0..) |line, i| {
        if (i > 0) {
            try out.append(in.gpa, '\n');
            if (blank or line.len > 0) try out.appendSlice(in.gpa, prefix);
        }
        try out.appendSlice(in.gpa, line);
        try in.checkSize(out.items.len);
    }
    return Value.str(out.items);
}

/// jinja2's attribute getter: dotted path, integer parts index, each step an item lookup.
fn attrPath(in: *Interp, item: Value, path: []const u8) Error!Value {
    var v = item;
    var parts = std.mem.splitScalar(u8, path, '.');
    while (parts.next()) |part| {
        const key: Value = if (std.fmt.parseInt(i64, part, 10)) |n| .{ .int = n } else |_| Value.str(part);
        v = try in.getItem(v, key);
    }
    return v;
}

fn select(in: *Interp, name: []const u8, v: Value, args: Args) Error!Value {
    const by_attr = std.mem.endsWith(u8, name, "attr");
    const keep_if = std.mem.startsWith(u8, name, "select");
    var test_index: usize = 0;
    var attr: ?[]const u8 = null;
    if (by_attr) {
        attr = try in.toStr(args.get(0, "attr") orelse return in.fail("missing parameter for attribute name", .{}));
        test_index = 1;
    }
    const test_name: ?[]const u8 = if (test_index < args.positional.len) try in.toStr(args.positional[test_index]) else null;
    const test_args = args.rest(test_index + 1);
    var out: std.ArrayListUnmanaged(Value) = .{};
    if (!value.truthy(v)) return in.newLazy(&.{}, .generator); // jinja2 checks `if value:` first
    for (try in.iterate(v)) |item| {
        const x = if (attr) |a| try attrPath(in, item, a) else item;
        const ok = if (test_name) |t| try testValue(in, t, x, test_args) else value.truthy(x);
        if (ok == keep_if) try out.append(in.gpa, item);
    }
    return in.newLazy(out.items, .generator);
}

fn map(in: *Interp, v: Value, args: Args) Error!Value {
    if (!value.truthy(v)) return in.newLazy(&.{}, .generator); // jinja2 checks `if value:` first
    const items = try in.iterate(v);
    const out = try in.gpa.alloc(Value, items.len);
    if (args.positional.len == 0) {
        for (args.keyword) |k| if (eq(k.name, "attribute")) {
            const attr = try in.toStr(k.value);
            const default = args.get(99, "default");
            for (items, out) |item, *o| {
                o.* = try attrPath(in, item, attr);
                if (o.* == .undefined) if (default) |d| {
                    o.* = d;
                };
            }
            return in.newLazy(out, .generator);
        };
        return in.fail("map requires a filter or attribute argument", .{});
    }
    const fname = try in.toStr(args.positional[0]);
    const fargs = args.rest(1);
    for (items, out) |item, *o| o.* = try filter(in, fname, item, fargs);
    return in.newLazy(out, .generator);
}

fn parseIntText(text: []const u8, base: u8) ?i64 {
    const t = pystr.strip(text, null, true, true);
    var digits = t;
    var neg = false;
    if (digits.len > 0 and (digits[0] == '-' or digits[0] == '+')) {
        neg = digits[0] == '-';
        digits = digits[1..];
    }
    var b = base;
    if (digits.len > 2 and digits[0] == '0') {
        const p = std.ascii.toLower(digits[1]);
        const pb: u8 = switch (p) {
            'x' => 16,
            'o' => 8,
            'b' => 2,
            else => 0,
        };
        if (pb != 0 and (b == pb or b == 0)) {
            b = pb;
            digits = digits[2..];
        }
    }
    if (b == 0) b = 10;
    if (digits.len == 0 or digits[0] == '_' or digits[digits.len - 1] == '_') return null;
    var clean: [64]u8 = undefined;
    var n: usize = 0;
    for (digits) |c| {
        if (c == '_') continue;
        if (n >= clean.len) return null;
        clean[n] = c;
        n += 1;
    }
    const x = std.fmt.parseInt(i64, clean[0..n], b) catch return null;
    return if (neg) -x else x;
}

fn parseFloatText(text: []const u8) ?f64 {
    const t = pystr.strip(text, null, true, true);
    if (t.len == 0) return null;
    const lower_buf = std.ascii.allocLowerString(std.heap.page_allocator, t) catch return null;
    defer std.heap.page_allocator.free(lower_buf);
    const body = if (lower_buf[0] == '-' or lower_buf[0] == '+') lower_buf[1..] else lower_buf;
    if (eq(body, "inf") or eq(body, "infinity") or eq(body, "nan")) {
        const x: f64 = if (body[0] == 'n') std.math.nan(f64) else std.math.inf(f64);
        return if (lower_buf[0] == '-') -x else x;
    }
    for (t) |c| if (!(std.ascii.isDigit(c) or c == '.' or c == 'e' or c == 'E' or c == '-' or c == '+' or c == '_')) return null;
    return std.fmt.parseFloat(f64, t) catch null;
}

fn toInt(in: *Interp, v: Value, args: Args) Error!Value {
    const default = args.get(0, "default") orelse Value{ .int = 0 };
    const base: u8 = @intCast(std.math.clamp(value.asInt(args.get(1, "base") orelse .{ .int = 10 }) orelse 10, 0, 36));
    _ = in;
    switch (v) {
        .int => return v,
        .boolean => |b| return .{ .int = @intFromBool(b) },
        .float => |f| return if (std.math.isFinite(f) and @abs(f) < 9.2e18) .{ .int = @intFromFloat(f) } else default,
        .string => |s| {
            if (parseIntText(s, base)) |x| return .{ .int = x };
            if (parseFloatText(s)) |f| if (std.math.isFinite(f) and @abs(f) < 9.2e18) return .{ .int = @intFromFloat(f) };
            return default;
        },
        else => return default,
    }
}

fn toFloat(v: Value, default: Value) Value {
    return switch (v) {
        .int => |i| .{ .float = @floatFromInt(i) },
        .boolean => |b| .{ .float = @floatFromInt(@intFromBool(b)) },
        .float => v,
        .string => |s| if (parseFloatText(s)) |f| .{ .float = f } else default,
        else => default,
    };
}

fn roundHalfEven(x: f64) f64 {
    const r = @round(x);
    if (@abs(x - @trunc(x)) == 0.5) return 2 * @round(x / 2);
    return r;
}

fn round(in: *Interp, v: Value, args: Args) Error!Value {
    const precision = value.asInt(args.get(0, "precision") orelse .{ .int = 0 }) orelse 0;
    const method = try in.toStr(args.get(1, "method") orelse Value.str("common"));
    const x = value.asNumber(v) orelse return in.fail("type {s} doesn't define __round__ method", .{value.typeName(v)});
    const scale = std.math.pow(f64, 10, @floatFromInt(precision));
    if (eq(method, "common")) {
        if (v != .float) return .{ .int = value.asInt(v).? }; // round(int, n) stays an int
        return .{ .float = roundHalfEven(x * scale) / scale };
    }
    if (eq(method, "floor")) return .{ .float = @floor(x * scale) / scale };
    if (eq(method, "ceil")) return .{ .float = @ceil(x * scale) / scale };
    return in.fail("method must be common, ceil or floor", .{});
}

const SortContext = struct {
    in: *Interp,
    case_sensitive: bool,
    failed: bool = false,

    fn key(c: *SortContext, v: Value) Value {
        if (!c.case_sensitive and v == .string) {
            return Value.str(pystr.changeCase(c.in.gpa, v.string, .lower) catch {
                c.failed = true;
                return v;
            });
        }
        return v;
    }

    fn lessThan(c: *SortContext, a: Value, b: Value) bool {
        const o = value.compare(a, b, 0) catch {
            c.failed = true;
            return false;
        };
        return o == .lt;
    }
};

const Keyed = struct { key: Value, item: Value };

fn sortKeyed(in: *Interp, items: []Keyed, reverse: bool) Error!void {
    var ctx = SortContext{ .in = in, .case_sensitive = true };
    const Cmp = struct {
        fn lt(c: *SortContext, a: Keyed, b: Keyed) bool {
            return c.lessThan(a.key, b.key);
        }
        fn gt(c: *SortContext, a: Keyed, b: Keyed) bool {
            return c.lessThan(b.key, a.key);
        }
    };
    if (reverse) std.sort.block(Keyed, items, &ctx, Cmp.gt) else std.sort.block(Keyed, items, &ctx, Cmp.lt);
    if (ctx.failed) return in.fail("'<' not supported between these values", .{});
}

fn sortLike(in: *Interp, name: []const u8, v: Value, args: Args) Error!Value {
    const is_sort = eq(name, "sort");
    const reverse = is_sort and value.truthy(args.get(0, "reverse") orelse .{ .boolean = false });
    const cs_index: usize = if (is_sort) 1 else 0;
    const case_sensitive = value.truthy(args.get(cs_index, "case_sensitive") orelse .{ .boolean = false });
    const attr = try optStr(in, args.get(cs_index + 1, "attribute"));
    const items = try in.iterate(v);
    var ctx = SortContext{ .in = in, .case_sensitive = case_sensitive };
    const keyed = try in.gpa.alloc(Keyed, items.len);
    for (items, keyed) |item, *k| k.* = .{ .key = ctx.key(if (attr) |a| try attrPath(in, item, a) else item), .item = item };
    if (eq(name, "unique")) {
        var out: std.ArrayListUnmanaged(Value) = .{};
        var seen: std.ArrayListUnmanaged(Value) = .{};
        outer: for (keyed) |k| {
            for (seen.items) |s| if (value.eql(s, k.key, 0) catch false) continue :outer;
            try seen.append(in.gpa, k.key);
            try out.append(in.gpa, k.item);
        }
        return in.newLazy(out.items, .generator);
    }
    if (!is_sort) {
        if (keyed.len == 0) return .{ .undefined = .{ .name = name } };
        var best = keyed[0];
        for (keyed[1..]) |k| {
            const better = if (eq(name, "min")) ctx.lessThan(k.key, best.key) else ctx.lessThan(best.key, k.key);
            if (better) best = k;
        }
        if (ctx.failed) return in.fail("'<' not supported between these values", .{});
        return best.item;
    }
    try sortKeyed(in, keyed, reverse);
    const out = try in.gpa.alloc(Value, keyed.len);
    for (keyed, out) |k, *o| o.* = k.item;
    return in.newList(out, false);
}

fn dictsort(in: *Interp, v: Value, args: Args) Error!Value {
    if (v != .dict) return in.fail("dictsort expects a mapping", .{});
    const case_sensitive = value.truthy(args.get(0, "case_sensitive") orelse .{ .boolean = false });
    const by = try in.toStr(args.get(1, "by") orelse Value.str("key"));
    const reverse = value.truthy(args.get(2, "reverse") orelse .{ .boolean = false });
    const by_value = eq(by, "value");
    if (!by_value and !eq(by, "key")) return in.fail("You can only sort by either \"key\" or \"value\"", .{});
    var ctx = SortContext{ .in = in, .case_sensitive = case_sensitive };
    const pairs = (try itemsOf(in, v.dict)).list.items;
    const keyed = try in.gpa.alloc(Keyed, pairs.len);
    for (pairs, keyed) |p, *k| k.* = .{ .key = ctx.key(p.list.items[@intFromBool(by_value)]), .item = p };
    try sortKeyed(in, keyed, reverse);
    const out = try in.gpa.alloc(Value, keyed.len);
    for (keyed, out) |k, *o| o.* = k.item;
    return in.newList(out, false);
}

pub fn escape(in: *Interp, s: []const u8) Error![]const u8 {
    var out: std.ArrayListUnmanaged(u8) = .{};
    for (s) |c| switch (c) {
        '&' => try out.appendSlice(in.gpa, "&amp;"),
        '<' => try out.appendSlice(in.gpa, "&lt;"),
        '>' => try out.appendSlice(in.gpa, "&gt;"),
        '\'' => try out.appendSlice(in.gpa, "&#39;"),
        '"' => try out.appendSlice(in.gpa, "&#34;"),
        else => try out.append(in.gpa, c),
    };
    return out.items;
}

fn striptags(in: *Interp, s: []const u8) Error![]const u8 {
    var text: std.ArrayListUnmanaged(u8) = .{};
    var i: usize = 0;
    while (i < s.len) {
        if (std.mem.startsWith(u8, s[i..], "<!--")) {
            i = if (std.mem.indexOfPos(u8, s, i, "-->")) |e| e + 3 else s.len;
        } else if (s[i] == '<') {
            i = if (std.mem.indexOfScalarPos(u8, s, i, '>')) |e| e + 1 else s.len;
        } else {
            try text.append(in.gpa, s[i]);
            i += 1;
        }
    }
    const words = try pystr.split(in.gpa, text.items, null, -1);
    return std.mem.join(in.gpa, " ", words);
}

const Align = enum { left, right, center };

fn pad(in: *Interp, s: []const u8, width: usize, how: Align) Error![]const u8 {
    return padWith(in, s, width, how, ' ');
}

fn padWith(in: *Interp, s: []const u8, width: usize, how: Align, fill: u8) Error![]const u8 {
    const n = pystr.length(s);
    if (n >= width) return s;
    try in.checkSize(width);
    const total = width - n;
    const left = switch (how) {
        .left => 0,
        .right => total,
        .center => total / 2 + (total & width & 1),
    };
    var out: std.ArrayListUnmanaged(u8) = .{};
    try out.appendNTimes(in.gpa, fill, left);
    try out.appendSlice(in.gpa, s);
    try out.appendNTimes(in.gpa, fill, total - left);
    return out.items;
}

// --- tests --------------------------------------------------------------------------------

const test_names = [_][]const u8{
    "odd",      "even",     "divisibleby", "defined", "undefined",   "filter", "test",   "none",    "boolean",
    "false",    "true",     "integer",     "float",   "lower",       "upper",  "string", "mapping", "number",
    "sequence", "iterable", "callable",    "sameas",  "escaped",     "in",     "==",     "eq",      "equalto",
    "!=",       "ne",       ">",           "gt",      "greaterthan", "ge",     ">=",     "<",       "lt",
    "lessthan", "<=",       "le",
};

pub fn isTest(name: []const u8) bool {
    for (test_names) |n| if (eq(n, name)) return true;
    return false;
}

pub fn testValue(in: *Interp, name: []const u8, v_in: Value, args: Args) Error!bool {
    if (eq(name, "escaped")) return v_in == .markup;
    const v = v_in.plain();
    const arg = args.get(0, "other") orelse args.get(0, "value") orelse args.get(0, "num") orelse args.get(0, "seq");
    if (eq(name, "defined")) return v != .undefined;
    if (eq(name, "undefined")) return v == .undefined;
    if (eq(name, "none")) return v == .none;
    if (eq(name, "string")) return v == .string;
    if (eq(name, "mapping")) return v == .dict;
    if (eq(name, "boolean")) return v == .boolean;
    if (eq(name, "true")) return v == .boolean and v.boolean;
    if (eq(name, "false")) return v == .boolean and !v.boolean;
    if (eq(name, "integer")) return v == .int;
    if (eq(name, "float")) return v == .float;
    if (eq(name, "number")) return v == .int or v == .float or v == .boolean;
    if (eq(name, "sequence")) return v == .string or (v == .list and v.list.lazy == .none) or v == .dict or v == .undefined;
    if (eq(name, "iterable")) return v == .string or v == .list or v == .dict or v == .undefined;
    if (eq(name, "callable")) return v == .macro or v == .function or v == .method or v == .undefined;
    if (eq(name, "escaped")) return false;
    if (eq(name, "lower") or eq(name, "upper")) {
        const s = try in.toStr(v);
        const changed = try pystr.changeCase(in.gpa, s, if (eq(name, "lower")) .lower else .upper);
        var cased = false;
        for (s) |c| if (std.ascii.isAlphabetic(c)) {
            cased = true;
        };
        return cased and eq(changed, s);
    }
    if (eq(name, "filter")) return isFilter(try in.toStr(v));
    if (eq(name, "test")) return isTest(try in.toStr(v));
    if (eq(name, "odd") or eq(name, "even")) {
        const r = try in.binary(.mod, v, .{ .int = 2 });
        return value.eql(r, .{ .int = if (eq(name, "odd")) 1 else 0 }, 0) catch false;
    }
    if (eq(name, "divisibleby")) {
        const r = try in.binary(.mod, v, arg orelse return in.fail("divisibleby() missing argument", .{}));
        return value.eql(r, .{ .int = 0 }, 0) catch false;
    }
    if (eq(name, "sameas")) {
        const o = arg orelse return in.fail("sameas() missing argument", .{});
        return switch (v) {
            .none, .boolean, .undefined => value.eql(v, o, 0) catch false and std.meta.activeTag(v) == std.meta.activeTag(o),
            else => value.eql(v, o, 0) catch false,
        };
    }
    if (eq(name, "in")) return in.contains(arg orelse return in.fail("in() missing argument", .{}), v);
    const o = arg orelse return in.fail("test '{s}' requires an argument", .{name});
    if (oneOf(name, &.{ "==", "eq", "equalto" })) return in.compareOp(.eq, v, o);
    if (oneOf(name, &.{ "!=", "ne" })) return in.compareOp(.ne, v, o);
    if (oneOf(name, &.{ ">", "gt", "greaterthan" })) return in.compareOp(.gt, v, o);
    if (oneOf(name, &.{ ">=", "ge" })) return in.compareOp(.ge, v, o);
    if (oneOf(name, &.{ "<", "lt", "lessthan" })) return in.compareOp(.lt, v, o);
    if (oneOf(name, &.{ "<=", "le" })) return in.compareOp(.le, v, o);
    return in.fail("No test named '{s}'.", .{name});
}

// --- methods ------------------------------------------------------------------------------

pub const MethodKind = enum { safe, unsafe };

const str_methods = [_][]const u8{
    "strip",     "lstrip",  "rstrip",     "split",      "rsplit",    "startswith", "endswith",     "replace",      "upper",
    "lower",     "title",   "capitalize", "swapcase",   "find",      "rfind",      "index",        "rindex",       "count",
    "format",    "join",    "isdigit",    "isalpha",    "isalnum",   "isspace",    "isupper",      "islower",      "splitlines",
    "center",    "ljust",   "rjust",      "zfill",      "partition", "rpartition", "removeprefix", "removesuffix", "isnumeric",
    "isdecimal", "istitle", "casefold",   "expandtabs", "encode",    "format_map",
};
const dict_methods = [_][]const u8{ "items", "keys", "values", "get", "copy" };
const dict_unsafe = [_][]const u8{ "pop", "popitem", "setdefault", "update", "clear" };
const list_methods = [_][]const u8{ "index", "count", "copy" };
const list_unsafe = [_][]const u8{ "append", "extend", "insert", "pop", "remove", "reverse", "sort", "clear" };

fn inList(name: []const u8, list: []const []const u8) bool {
    for (list) |n| if (eq(n, name)) return true;
    return false;
}

/// Whether `name` is a method of `v`'s Python type, and whether the sandbox allows it.
pub fn methodKind(v_in: Value, name: []const u8) ?MethodKind {
    const v = v_in.plain();
    if (name.len > 0 and name[0] == '_') return null;
    switch (v) {
        .string => if (inList(name, &str_methods)) return .safe,
        .dict => {
            if (inList(name, &dict_methods)) return .safe;
            if (inList(name, &dict_unsafe)) return .unsafe;
        },
        .list => {
            if (v.list.lazy != .none) return null;
            if (inList(name, &list_methods)) return .safe;
            if (!v.list.is_tuple and inList(name, &list_unsafe)) return .unsafe;
        },
        .loop => if (eq(name, "cycle")) return .safe,
        else => {},
    }
    return null;
}

pub fn hasMethod(v: Value, name: []const u8) bool {
    return methodKind(v, name) == .safe;
}

fn strArg(in: *Interp, args: Args, index: usize, name: []const u8) Error![]const u8 {
    const v = args.get(index, name) orelse return in.fail("missing argument '{s}'", .{name});
    if (v != .string) return in.fail("argument '{s}' must be str, not {s}", .{ name, value.typeName(v) });
    return v.string;
}

fn affix(in: *Interp, s: []const u8, args: Args, ends: bool) Error!bool {
    const arg = args.get(0, "prefix") orelse return in.fail("{s}() takes at least 1 argument", .{if (ends) "endswith" else "startswith"});
    const choices: []const Value = switch (arg) {
        .string => &.{arg},
        .list => |l| l.items,
        else => return in.fail("argument must be str or a tuple of str, not {s}", .{value.typeName(arg)}),
    };
    for (choices) |c| {
        if (c != .string) return in.fail("tuple for startswith must only contain str", .{});
        if (if (ends) std.mem.endsWith(u8, s, c.string) else std.mem.startsWith(u8, s, c.string)) return true;
    }
    return false;
}

pub noinline fn callMethod(in: *Interp, recv_in: Value, name: []const u8, args: Args) Error!Value {
    const recv = recv_in.plain();
    const gpa = in.gpa;
    switch (recv) {
        .string => |s| {
            if (oneOf(name, &.{ "strip", "lstrip", "rstrip" })) {
                const chars = try optStr(in, args.get(0, "chars"));
                return Value.str(pystr.strip(s, chars, name[0] != 'r', name[0] != 'l'));
            }
            if (eq(name, "split") or eq(name, "rsplit")) {
                const sep = try optStr(in, args.get(0, "sep"));
                if (sep != null and sep.?.len == 0) return in.fail("empty separator", .{});
                const maxsplit = value.asInt(args.get(1, "maxsplit") orelse .{ .int = -1 }) orelse -1;
                var parts: [][]const u8 = undefined;
                if (eq(name, "rsplit") and maxsplit >= 0) {
                    parts = try rsplit(gpa, s, sep, maxsplit);
                } else parts = try pystr.split(gpa, s, sep, maxsplit);
                const out = try gpa.alloc(Value, parts.len);
                for (parts, out) |p, *o| o.* = Value.str(p);
                return in.newList(out, false);
            }
            if (eq(name, "splitlines")) {
                const parts = try pystr.splitLines(gpa, s);
                const out = try gpa.alloc(Value, parts.len);
                for (parts, out) |p, *o| o.* = Value.str(p);
                return in.newList(out, false);
            }
            if (eq(name, "startswith")) return .{ .boolean = try affix(in, s, args, false) };
            if (eq(name, "endswith")) return .{ .boolean = try affix(in, s, args, true) };
            if (eq(name, "replace")) {
                const count = if (args.get(2, "count")) |c| value.asInt(c) orelse -1 else -1;
                return Value.str(try replace(in, s, try strArg(in, args, 0, "old"), try strArg(in, args, 1, "new"), count));
            }
            if (eq(name, "upper")) return Value.str(try pystr.changeCase(gpa, s, .upper));
            if (eq(name, "lower") or eq(name, "casefold")) return Value.str(try pystr.changeCase(gpa, s, .lower));
            if (eq(name, "title")) return Value.str(try pystr.changeCase(gpa, s, .title));
            if (eq(name, "capitalize")) return Value.str(try pystr.changeCase(gpa, s, .capitalize));
            if (eq(name, "swapcase")) return Value.str(try pystr.changeCase(gpa, s, .swap));
            if (oneOf(name, &.{ "find", "rfind", "index", "rindex" })) {
                const sub = try strArg(in, args, 0, "sub");
                const at = if (name[0] == 'r') std.mem.lastIndexOf(u8, s, sub) else std.mem.indexOf(u8, s, sub);
                if (at) |b| return .{ .int = @intCast(pystr.length(s[0..b])) };
                if (name[name.len - 1] == 'x') return in.fail("substring not found", .{});
                return .{ .int = -1 };
            }
            if (eq(name, "count")) {
                const sub = try strArg(in, args, 0, "sub");
                if (sub.len == 0) return .{ .int = @intCast(pystr.length(s) + 1) };
                return .{ .int = @intCast(std.mem.count(u8, s, sub)) };
            }
            if (eq(name, "join")) {
                var out: std.ArrayListUnmanaged(u8) = .{};
                const items = try in.iterate(args.get(0, "iterable") orelse return in.fail("join() takes exactly one argument", .{}));
                for (items, 0..) |item, i| {
                    if (item != .string) return in.fail("sequence item {d}: expected str instance, {s} found", .{ i, value.typeName(item) });
                    if (i > 0) try out.appendSlice(gpa, s);
                    try out.appendSlice(gpa, item.string);
                    try in.checkSize(out.items.len);
                }
                return Value.str(out.items);
            }
            if (eq(name, "format")) return Value.str(try strFormat(in, s, args));
            if (oneOf(name, &.{ "isdigit", "isdecimal", "isnumeric", "isalpha", "isalnum", "isspace" })) {
                if (s.len == 0) return .{ .boolean = false };
                var i: usize = 0;
                while (i < s.len) {
                    const d = pystr.decode(s, i);
                    i += d.len;
                    const c = d.cp;
                    const ok = switch (name[2]) {
                        'd', 'n' => c >= '0' and c <= '9',
                        's' => pystr.isSpace(c),
                        else => blk: {
                            const alpha = pystr.isCased(c) or c >= 0x80;
                            break :blk if (eq(name, "isalnum")) alpha or (c >= '0' and c <= '9') else alpha;
                        },
                    };
                    if (!ok) return .{ .boolean = false };
                }
                return .{ .boolean = true };
            }
            if (eq(name, "isupper") or eq(name, "islower")) {
                const want_upper = eq(name, "isupper");
                var cased = false;
                var i: usize = 0;
                while (i < s.len) {
                    const d = pystr.decode(s, i);
                    i += d.len;
                    if (!pystr.isCased(d.cp)) continue;
                    cased = true;
                    const is_upper = pystr.toLower(d.cp) != d.cp;
                    if (is_upper != want_upper) return .{ .boolean = false };
                }
                return .{ .boolean = cased };
            }
            if (oneOf(name, &.{ "center", "ljust", "rjust" })) {
                const width = try in.sizeArg(value.asInt(args.get(0, "width") orelse .{ .int = 0 }) orelse 0, .bytes);
                const fill = try optStr(in, args.get(1, "fillchar"));
                const how: Align = if (eq(name, "ljust")) .left else if (eq(name, "rjust")) .right else .center;
                return Value.str(try padWith(in, s, width, how, if (fill) |f| (if (f.len > 0) f[0] else ' ') else ' '));
            }
            if (eq(name, "zfill")) {
                const width = try in.sizeArg(value.asInt(args.get(0, "width") orelse .{ .int = 0 }) orelse 0, .bytes);
                return Value.str(try padWith(in, s, width, .right, '0'));
            }
            if (eq(name, "removeprefix")) {
                const p = try strArg(in, args, 0, "prefix");
                return Value.str(if (std.mem.startsWith(u8, s, p)) s[p.len..] else s);
            }
            if (eq(name, "removesuffix")) {
                const p = try strArg(in, args, 0, "suffix");
                return Value.str(if (p.len > 0 and std.mem.endsWith(u8, s, p)) s[0 .. s.len - p.len] else s);
            }
            if (eq(name, "partition") or eq(name, "rpartition")) {
                const sep = try strArg(in, args, 0, "sep");
                const at = if (name[0] == 'r') std.mem.lastIndexOf(u8, s, sep) else std.mem.indexOf(u8, s, sep);
                const parts: [3]Value = if (at) |b|
                    .{ Value.str(s[0..b]), Value.str(sep), Value.str(s[b + sep.len ..]) }
                else if (name[0] == 'r')
                    .{ Value.str(""), Value.str(""), Value.str(s) }
                else
                    .{ Value.str(s), Value.str(""), Value.str("") };
                return in.newList(try gpa.dupe(Value, &parts), true);
            }
        },
        .dict => |d| {
            if (eq(name, "items")) return in.newLazy((try itemsOf(in, d)).list.items, .dict_items);
            if (eq(name, "keys")) return in.newLazy(try in.iterate(recv), .dict_keys);
            if (eq(name, "values")) {
                const out = try gpa.alloc(Value, d.entries.len);
                for (d.entries, out) |e, *o| o.* = e.value;
                return in.newLazy(out, .dict_values);
            }
            if (eq(name, "get")) {
                const key = args.get(0, "key") orelse return in.fail("get expected at least 1 argument, got 0", .{});
                return d.get(key) orelse (args.get(1, "default") orelse .none);
            }
            if (eq(name, "copy")) return recv;
        },
        .list => |l| {
            if (l.lazy != .none) return in.fail("'{s}' object has no attribute '{s}'", .{ value.typeName(recv), name });
            if (eq(name, "copy")) return in.newList(l.items, l.is_tuple);
            const x = args.get(0, "value") orelse return in.fail("{s}() takes exactly one argument", .{name});
            var n: i64 = 0;
            for (l.items, 0..) |item, i| if (value.eql(item, x, 0) catch false) {
                if (eq(name, "index")) return .{ .int = @intCast(i) };
                n += 1;
            };
            if (eq(name, "index")) return in.fail("value is not in list", .{});
            return .{ .int = n };
        },
        .loop => |l| {
            if (args.positional.len == 0) return in.fail("no items for cycling given", .{});
            return args.positional[l.index0 % args.positional.len];
        },
        else => {},
    }
    return in.fail("'{s}' object has no attribute '{s}'", .{ value.typeName(recv), name });
}

fn rsplit(gpa: Allocator, s: []const u8, sep: ?[]const u8, maxsplit: i64) Allocator.Error![][]const u8 {
    var parts: std.ArrayListUnmanaged([]const u8) = .{};
    var end = s.len;
    var splits: i64 = 0;
    if (sep) |delim| {
        while (splits < maxsplit) : (splits += 1) {
            const at = std.mem.lastIndexOf(u8, s[0..end], delim) orelse break;
            try parts.append(gpa, s[at + delim.len .. end]);
            end = at;
        }
        try parts.append(gpa, s[0..end]);
    } else {
        var rest = pystr.strip(s, null, false, true);
        while (rest.len > 0) {
            if (splits >= maxsplit) {
                try parts.append(gpa, rest);
                break;
            }
            var i = rest.len;
            while (i > 0 and !std.ascii.isWhitespace(rest[i - 1])) i -= 1;
            try parts.append(gpa, rest[i..]);
            rest = pystr.strip(rest[0..i], null, false, true);
            splits += 1;
        }
    }
    std.mem.reverse([]const u8, parts.items);
    return parts.items;
}

/// str.format with `{}`, `{0}`, `{name}`, `!r`/`!s` and simple format specs.
fn strFormat(in: *Interp, fmt: []const u8, args: Args) Error![]const u8 {
    var out: std.ArrayListUnmanaged(u8) = .{};
    var auto_index: usize = 0;
    var i: usize = 0;
    while (i < fmt.len) {
        const c = fmt[i];
        if (c == '}') {
            if (i + 1 < fmt.len and fmt[i + 1] == '}') {
                try out.append(in.gpa, '}');
                i += 2;
                continue;
            }
            return in.fail("Single '}}' encountered in format string", .{});
        }
        if (c != '{') {
            try out.append(in.gpa, c);
            i += 1;
            continue;
        }
        if (i + 1 < fmt.len and fmt[i + 1] == '{') {
            try out.append(in.gpa, '{');
            i += 2;
            continue;
        }
        const close = std.mem.indexOfScalarPos(u8, fmt, i, '}') orelse return in.fail("Single '{{' encountered in format string", .{});
        var field = fmt[i + 1 .. close];
        i = close + 1;
        var spec: []const u8 = "";
        if (std.mem.indexOfScalar(u8, field, ':')) |at| {
            spec = field[at + 1 ..];
            field = field[0..at];
        }
        var conversion: u8 = 0;
        if (std.mem.indexOfScalar(u8, field, '!')) |at| {
            if (at + 1 < field.len) conversion = field[at + 1];
            field = field[0..at];
        }
        var v: Value = undefined;
        if (field.len == 0) {
            if (auto_index >= args.positional.len) return in.fail("Replacement index {d} out of range for positional args tuple", .{auto_index});
            v = args.positional[auto_index];
            auto_index += 1;
        } else if (std.fmt.parseInt(usize, field, 10)) |n| {
            if (n >= args.positional.len) return in.fail("Replacement index {d} out of range for positional args tuple", .{n});
            v = args.positional[n];
        } else |_| {
            v = args.get(std.math.maxInt(usize), field) orelse return in.fail("'{s}'", .{field});
        }
        var text: []const u8 = undefined;
        if (conversion == 'r') {
            var buf: std.ArrayListUnmanaged(u8) = .{};
            value.writeRepr(in.gpa, &buf, v, 0) catch |err| return in.mapDataError(err);
            text = buf.items;
        } else text = try formatSpec(in, v, spec);
        try out.appendSlice(in.gpa, text);
        try in.checkSize(out.items.len);
    }
    return out.items;
}

/// A subset of Python's format-spec mini-language: [[fill]align][width][.precision][type].
fn formatSpec(in: *Interp, v: Value, spec: []const u8) Error![]const u8 {
    if (spec.len == 0) return in.toStr(v);
    var i: usize = 0;
    var fill: u8 = ' ';
    var how: ?Align = null;
    const alignOf = struct {
        fn f(c: u8) ?Align {
            return switch (c) {
                '<' => .left,
                '>' => .right,
                '^' => .center,
                else => null,
            };
        }
    }.f;
    if (spec.len >= 2 and alignOf(spec[1]) != null) {
        fill = spec[0];
        how = alignOf(spec[1]);
        i = 2;
    } else if (alignOf(spec[0])) |a| {
        how = a;
        i = 1;
    }
    const w_start = i;
    while (i < spec.len and std.ascii.isDigit(spec[i])) i += 1;
    const width = std.fmt.parseInt(usize, spec[w_start..i], 10) catch 0;
    var precision: ?usize = null;
    if (i < spec.len and spec[i] == '.') {
        const p_start = i + 1;
        i += 1;
        while (i < spec.len and std.ascii.isDigit(spec[i])) i += 1;
        precision = std.fmt.parseInt(usize, spec[p_start..i], 10) catch 0;
    }
    const kind: u8 = if (i < spec.len) spec[i] else 0;
    var text: []const u8 = undefined;
    switch (kind) {
        'f', 'F', 'e', '%' => {
            const x = value.asNumber(v) orelse return in.fail("Unknown format code '{c}' for object of type '{s}'", .{ kind, value.typeName(v) });
            text = try fixed(in, if (kind == '%') x * 100 else x, precision orelse 6);
            if (kind == '%') text = try std.mem.concat(in.gpa, u8, &.{ text, "%" });
        },
        'd' => {
            const x = value.asInt(v) orelse return in.fail("Unknown format code 'd' for object of type '{s}'", .{value.typeName(v)});
            text = try std.fmt.allocPrint(in.gpa, "{d}", .{x});
        },
        else => {
            text = try in.toStr(v);
            if (precision) |p| text = text[0..pystr.offsetOf(text, p)];
        },
    }
    const default_align: Align = if (v == .int or v == .float) .right else .left;
    return padWith(in, text, width, how orelse default_align, fill);
}

fn fixed(in: *Interp, x: f64, precision: usize) Error![]const u8 {
    if (std.math.isNan(x)) return "nan";
    if (std.math.isInf(x)) return if (x < 0) "-inf" else "inf";
    var buf: [512]u8 = undefined;
    const s = std.fmt.formatFloat(&buf, x, .{ .mode = .decimal, .precision = @min(precision, 100) }) catch return in.fail("number too large to format", .{});
    return in.gpa.dupe(u8, s);
}

/// Python's int(x) of a float, as digits: inf and nan fail as Python's do, and a float past
/// i64 is printed, not cast (@intFromFloat would trap).
fn truncatedFloat(in: *Interp, x: f64) Error![]const u8 {
    if (std.math.isNan(x)) return in.fail("cannot convert float NaN to integer", .{});
    if (std.math.isInf(x)) return in.fail("cannot convert float infinity to integer", .{});
    const t = @trunc(x);
    if (@abs(t) < 9.2e18) return std.fmt.allocPrint(in.gpa, "{d}", .{@as(i64, @intFromFloat(t))});
    return fixed(in, t, 0);
}

/// printf-style `"%s" % args` for %s %r %d %i %f %x %%.
pub fn percentFormat(in: *Interp, fmt: []const u8, args_v: Value) Error!Value {
    const args: []const Value = if (args_v == .list and args_v.list.is_tuple) args_v.list.items else &.{args_v};
    var out: std.ArrayListUnmanaged(u8) = .{};
    var next: usize = 0;
    var i: usize = 0;
    while (i < fmt.len) {
        if (fmt[i] != '%') {
            try out.append(in.gpa, fmt[i]);
            i += 1;
            continue;
        }
        i += 1;
        if (i >= fmt.len) return in.fail("incomplete format", .{});
        if (fmt[i] == '%') {
            try out.append(in.gpa, '%');
            i += 1;
            continue;
        }
        var left = false;
        var zero = false;
        while (i < fmt.len and (fmt[i] == '-' or fmt[i] == '0' or fmt[i] == ' ' or fmt[i] == '+')) : (i += 1) {
            if (fmt[i] == '-') left = true;
            if (fmt[i] == '0') zero = true;
        }
        const w_start = i;
        while (i < fmt.len and std.ascii.isDigit(fmt[i])) i += 1;
        const width = std.fmt.parseInt(usize, fmt[w_start..i], 10) catch 0;
        var precision: ?usize = null;
        if (i < fmt.len and fmt[i] == '.') {
            i += 1;
            const p_start = i;
            while (i < fmt.len and std.ascii.isDigit(fmt[i])) i += 1;
            precision = std.fmt.parseInt(usize, fmt[p_start..i], 10) catch 0;
        }
        if (i >= fmt.len) return in.fail("incomplete format", .{});
        const kind = fmt[i];
        i += 1;
        if (next >= args.len) return in.fail("not enough arguments for format string", .{});
        const v = args[next];
        next += 1;
        const text: []const u8 = switch (kind) {
            's' => try in.toStr(v),
            'r', 'a' => blk: {
                var buf: std.ArrayListUnmanaged(u8) = .{};
                value.writeRepr(in.gpa, &buf, v, 0) catch |err| return in.mapDataError(err);
                break :blk buf.items;
            },
            'd', 'i', 'u' => blk: {
                if (v == .float) break :blk try truncatedFloat(in, v.float);
                const n = value.asInt(v) orelse return in.fail("%{c} format: a real number is required, not {s}", .{ kind, value.typeName(v) });
                break :blk try std.fmt.allocPrint(in.gpa, "{d}", .{n});
            },
            'f', 'F' => try fixed(in, value.asNumber(v) orelse return in.fail("must be real number, not {s}", .{value.typeName(v)}), precision orelse 6),
            'x', 'X' => blk: {
                const n = value.asInt(v) orelse return in.fail("%x format: an integer is required, not {s}", .{value.typeName(v)});
                break :blk if (kind == 'x') try std.fmt.allocPrint(in.gpa, "{x}", .{n}) else try std.fmt.allocPrint(in.gpa, "{X}", .{n});
            },
            else => return in.fail("unsupported format character '{c}'", .{kind}),
        };
        try out.appendSlice(in.gpa, try padWith(in, text, width, if (left) .left else .right, if (zero and !left and kind != 's') '0' else ' '));
        try in.checkSize(out.items.len);
    }
    // Python takes a list or dict argument as a mapping: unused, it is no error.
    if (next < args.len and !(args_v == .dict or args_v == .undefined or (args_v == .list and !args_v.list.is_tuple))) return in.fail("not all arguments converted during string formatting", .{});
    return Value.str(out.items);
}

// --- globals ------------------------------------------------------------------------------

/// noinline, as callMethod: the evaluator recurses through eval(), and a callee inlined into it
/// makes every level's native frame bigger (wasmtime's stack holds about 1000 small ones; see
/// eval.max_eval_depth_per_limit).
pub noinline fn callFunction(in: *Interp, f: value.Function, args: Args) Error!Value {
    switch (f) {
        .raise_exception => {
            const msg = args.get(0, "message") orelse Value.str("");
            in.message = try in.toStr(msg);
            return error.TemplateError;
        },
        .strftime_now => {
            const fmt = try in.toStr(args.get(0, "format") orelse return in.fail("strftime_now() missing argument 'format'", .{}));
            return Value.str(try strftime.format(in.gpa, fmt, in.now));
        },
        .namespace => {
            const ns = try in.gpa.create(value.Namespace);
            ns.* = .{};
            for (args.positional) |p| if (p == .dict) for (p.dict.entries) |e| {
                if (e.key == .string) try ns.put(in.gpa, e.key.string, e.value);
            };
            for (args.keyword) |k| try ns.put(in.gpa, k.name, k.value);
            return .{ .namespace = ns };
        },
        .dict => {
            var entries: std.ArrayListUnmanaged(value.Entry) = .{};
            for (args.positional) |p| if (p == .dict) try entries.appendSlice(in.gpa, p.dict.entries);
            for (args.keyword) |k| try entries.append(in.gpa, .{ .key = Value.str(k.name), .value = k.value });
            return in.newDict(entries.items);
        },
        .range => {
            var nums: [3]i64 = .{ 0, 0, 1 };
            if (args.positional.len == 0 or args.positional.len > 3) return in.fail("range expected 1 to 3 arguments, got {d}", .{args.positional.len});
            for (args.positional, 0..) |p, i| nums[i] = value.asInt(p) orelse return in.fail("'{s}' object cannot be interpreted as an integer", .{value.typeName(p)});
            var start = nums[0];
            var stop = nums[1];
            if (args.positional.len == 1) {
                start = 0;
                stop = nums[0];
            }
            const step_v = nums[2];
            if (step_v == 0) return in.fail("range() arg 3 must not be zero", .{});
            // i128: stop - start and -step overflow i64 (range(-2**63, 2**63 - 1))
            const w_start: i128 = start;
            const w_stop: i128 = stop;
            const w_step: i128 = step_v;
            var count: i128 = 0;
            if (step_v > 0 and start < stop) count = @divFloor(w_stop - w_start - 1, w_step) + 1;
            if (step_v < 0 and start > stop) count = @divFloor(w_start - w_stop - 1, -w_step) + 1;
            if (count > in.limits.max_steps) return in.fail("range of {d} items exceeds the limit of {d} steps", .{ count, in.limits.max_steps });
            const out = try in.gpa.alloc(Value, @intCast(count));
            for (out, 0..) |*o, i| o.* = .{ .int = @intCast(w_start + @as(i128, i) * w_step) };
            return in.newList(out, false);
        },
        .joiner, .cycler, .lipsum => return in.fail("'{s}' is not supported", .{@tagName(f)}),
    }
}
