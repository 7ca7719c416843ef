//! HF's `tojson` filter: Python's json.dumps(x, ensure_ascii, indent, separators, sort_keys),
//! reproduced byte for byte (float repr, escapes, indentation, separators).
const std = @import("std");
const value = @import("value.zig");
const pystr = @import("pystr.zig");
const Allocator = std.mem.Allocator;
const Value = value.Value;

pub const Options = struct {
    ensure_ascii: bool = false,
    /// Text of one indentation level; null writes everything on one line.
    indent: ?[]const u8 = null,
    item_separator: ?[]const u8 = null,
    key_separator: []const u8 = ": ",
    sort_keys: bool = false,
};

pub const Error = error{ OutOfMemory, TooDeep, TooLong, NotSerializable, BadKey, Unorderable };

pub const Writer = struct {
    gpa: Allocator,
    out: *std.ArrayListUnmanaged(u8),
    options: Options,
    /// Output past this many bytes stops with error.TooLong (checked at each value: the text can
    /// grow much faster than the data, as a list holding one long string many times does).
    max_len: usize = std.math.maxInt(usize),
    /// The Python type name that could not be serialized (for the error message).
    bad_type: []const u8 = "",

    fn itemSeparator(w: *const Writer) []const u8 {
        return w.options.item_separator orelse if (w.options.indent != null) "," else ", ";
    }

    fn newline(w: *Writer, level: usize) Allocator.Error!void {
        const indent = w.options.indent orelse return;
        try w.out.append(w.gpa, '\n');
        for (0..level) |_| try w.out.appendSlice(w.gpa, indent);
    }

    pub fn write(w: *Writer, v: Value, level: usize) Error!void {
        if (level > value.max_data_depth) return error.TooDeep;
        if (w.out.items.len > w.max_len) return error.TooLong;
        const gpa = w.gpa;
        switch (v) {
            .none => try w.out.appendSlice(gpa, "null"),
            .boolean => |b| try w.out.appendSlice(gpa, if (b) "true" else "false"),
            .int => |i| try w.out.writer(gpa).print("{d}", .{i}),
            .float => |f| try writeFloat(gpa, w.out, f),
            .string, .markup => |s| try w.writeString(s),
            .list => |l| {
                if (l.lazy != .none) {
                    w.bad_type = value.typeName(v);
                    return error.NotSerializable;
                }
                if (l.items.len == 0) return w.out.appendSlice(gpa, "[]");
                try w.out.append(gpa, '[');
                for (l.items, 0..) |item, i| {
                    if (i > 0) try w.out.appendSlice(gpa, w.itemSeparator());
                    try w.newline(level + 1);
                    try w.write(item, level + 1);
                }
                try w.newline(level);
                try w.out.append(gpa, ']');
            },
            .dict => |d| try w.writeObject(d.entries, level),
            else => {
                w.bad_type = value.typeName(v);
                return error.NotSerializable;
            },
        }
    }

    fn writeObject(w: *Writer, entries_in: []const value.Entry, level: usize) Error!void {
        const gpa = w.gpa;
        if (entries_in.len == 0) return w.out.appendSlice(gpa, "{}");
        var entries = entries_in;
        if (w.options.sort_keys) {
            const sorted = try gpa.dupe(value.Entry, entries);
            var failed = false;
            std.sort.block(value.Entry, sorted, &failed, struct {
                fn lt(flag: *bool, a: value.Entry, b: value.Entry) bool {
                    const o = value.compare(a.key, b.key, 0) catch {
                        flag.* = true;
                        return false;
                    };
                    return o == .lt;
                }
            }.lt);
            if (failed) return error.Unorderable;
            entries = sorted;
        }
        try w.out.append(gpa, '{');
        for (entries, 0..) |e, i| {
            if (i > 0) try w.out.appendSlice(gpa, w.itemSeparator());
            try w.newline(level + 1);
            switch (e.key) {
                .string => |s| try w.writeString(s),
                .none => try w.out.appendSlice(gpa, "\"null\""),
                .boolean => |b| try w.out.appendSlice(gpa, if (b) "\"true\"" else "\"false\""),
                .int => |n| try w.out.writer(gpa).print("\"{d}\"", .{n}),
                .float => |f| {
                    try w.out.append(gpa, '"');
                    try writeFloat(gpa, w.out, f);
                    try w.out.append(gpa, '"');
                },
                else => {
                    w.bad_type = value.typeName(e.key);
                    return error.BadKey;
                },
            }
            try w.out.appendSlice(gpa, w.options.key_separator);
            try w.write(e.value, level + 1);
        }
        try w.newline(level);
        try w.out.append(gpa, '}');
    }

    fn writeString(w: *Writer, s: []const u8) Allocator.Error!void {
        const gpa = w.gpa;
        try w.out.append(gpa, '"');
        var i: usize = 0;
        while (i < s.len) {
            const d = pystr.decode(s, i);
            switch (d.cp) {
                '"' => try w.out.appendSlice(gpa, "\\\""),
                '\\' => try w.out.appendSlice(gpa, "\\\\"),
                '\n' => try w.out.appendSlice(gpa, "\\n"),
                '\r' => try w.out.appendSlice(gpa, "\\r"),
                '\t' => try w.out.appendSlice(gpa, "\\t"),
                0x08 => try w.out.appendSlice(gpa, "\\b"),
                0x0c => try w.out.appendSlice(gpa, "\\f"),
                else => |cp| {
                    if (cp < 0x20 or (w.options.ensure_ascii and cp >= 0x7f)) {
                        if (cp >= 0x10000) {
                            const v = cp - 0x10000;
                            try w.out.writer(gpa).print("\\u{x:0>4}\\u{x:0>4}", .{ 0xd800 + (v >> 10), 0xdc00 + (v & 0x3ff) });
                        } else try w.out.writer(gpa).print("\\u{x:0>4}", .{cp});
                    } else try w.out.appendSlice(gpa, s[i .. i + d.len]);
                },
            }
            i += d.len;
        }
        try w.out.append(gpa, '"');
    }
};

/// json's float: repr(), with NaN/Infinity spelled as JavaScript does.
fn writeFloat(gpa: Allocator, out: *std.ArrayListUnmanaged(u8), f: f64) Allocator.Error!void {
    if (std.math.isNan(f)) return out.appendSlice(gpa, "NaN");
    if (std.math.isInf(f)) return out.appendSlice(gpa, if (f < 0) "-Infinity" else "Infinity");
    return pystr.writeFloat(gpa, out, f);
}

test "dumps like Python" {
    var arena = std.heap.ArenaAllocator.init(std.testing.allocator);
    defer arena.deinit();
    const gpa = arena.allocator();
    const inner = [_]Value{ .{ .int = 1 }, .{ .float = 2.5 }, Value.str("é\"\n") };
    const l = value.List{ .items = &inner };
    const entries = [_]value.Entry{ .{ .key = Value.str("b"), .value = .{ .list = &l } }, .{ .key = Value.str("a"), .value = .none } };
    const d = value.Dict{ .entries = &entries };
    var out: std.ArrayListUnmanaged(u8) = .{};
    var w = Writer{ .gpa = gpa, .out = &out, .options = .{} };
    try w.write(.{ .dict = &d }, 0);
    try std.testing.expectEqualStrings("{\"b\": [1, 2.5, \"é\\\"\\n\"], \"a\": null}", out.items);
    out.clearRetainingCapacity();
    w.options = .{ .indent = "  ", .sort_keys = true, .ensure_ascii = true };
    try w.write(.{ .dict = &d }, 0);
    try std.testing.expectEqualStrings("{\n  \"a\": null,\n  \"b\": [\n    1,\n    2.5,\n    \"\\u00e9\\\"\\n\"\n  ]\n}", out.items);
}
