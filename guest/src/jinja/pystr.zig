//! Python `str` semantics over UTF-8 bytes: templates index, slice, strip and split by code
//! point, and print floats and strings as Python's repr() does.
const std = @import("std");
const Allocator = std.mem.Allocator;

/// Decodes the code point at `s[i]`; an invalid byte counts as one code point of its own value
/// (input is normally valid UTF-8, but a bad byte must not trap).
pub fn decode(s: []const u8, i: usize) struct { cp: u21, len: usize } {
    const n = std.unicode.utf8ByteSequenceLength(s[i]) catch return .{ .cp = s[i], .len = 1 };
    if (i + n > s.len) return .{ .cp = s[i], .len = 1 };
    const cp = std.unicode.utf8Decode(s[i .. i + n]) catch return .{ .cp = s[i], .len = 1 };
    return .{ .cp = cp, .len = n };
}

pub fn appendCodepoint(gpa: Allocator, out: *std.ArrayListUnmanaged(u8), cp: u21) Allocator.Error!void {
    var buf: [4]u8 = undefined;
    const n = std.unicode.utf8Encode(cp, &buf) catch {
        try out.append(gpa, '?');
        return;
    };
    try out.appendSlice(gpa, buf[0..n]);
}

/// Number of code points (Python's len()).
pub fn length(s: []const u8) usize {
    var i: usize = 0;
    var n: usize = 0;
    while (i < s.len) : (n += 1) i += decode(s, i).len;
    return n;
}

/// Byte offset of code point `index` (clamped to the end).
pub fn offsetOf(s: []const u8, index: usize) usize {
    var i: usize = 0;
    var n: usize = 0;
    while (i < s.len and n < index) : (n += 1) i += decode(s, i).len;
    return i;
}

/// Python's str.isspace() for one code point.
pub fn isSpace(cp: u21) bool {
    return switch (cp) {
        '\t', '\n', 0x0b, 0x0c, '\r', 0x1c...0x1f, ' ', 0x85, 0xa0, 0x1680, 0x2000...0x200a, 0x2028, 0x2029, 0x202f, 0x205f, 0x3000 => true,
        else => false,
    };
}

fn inSet(cp: u21, chars: ?[]const u8) bool {
    const set = chars orelse return isSpace(cp);
    var i: usize = 0;
    while (i < set.len) {
        const d = decode(set, i);
        if (d.cp == cp) return true;
        i += d.len;
    }
    return false;
}

/// str.strip / lstrip / rstrip: `chars` null strips whitespace. Returns a slice of `s`.
pub fn strip(s: []const u8, chars: ?[]const u8, left: bool, right: bool) []const u8 {
    var start: usize = 0;
    var end: usize = s.len;
    if (left) {
        while (start < end) {
            const d = decode(s, start);
            if (!inSet(d.cp, chars)) break;
            start += d.len;
        }
    }
    if (right) {
        while (end > start) {
            var b = end - 1;
            while (b > start and (s[b] & 0xc0) == 0x80) b -= 1;
            const d = decode(s, b);
            if (b + d.len != end) b = end - 1; // invalid tail byte: treat alone
            if (!inSet(decode(s, b).cp, chars)) break;
            end = b;
        }
    }
    return s[start..end];
}

/// str.split(sep, maxsplit): `sep` null splits on runs of whitespace and drops empty parts.
/// The returned parts are slices of `s`; the list is allocated in `gpa` (caller owns it).
pub fn split(gpa: Allocator, s: []const u8, sep: ?[]const u8, maxsplit: i64) Allocator.Error![][]const u8 {
    var parts: std.ArrayListUnmanaged([]const u8) = .{};
    var splits: i64 = 0;
    if (sep) |delim| {
        var start: usize = 0;
        while (maxsplit < 0 or splits < maxsplit) : (splits += 1) {
            const at = std.mem.indexOfPos(u8, s, start, delim) orelse break;
            try parts.append(gpa, s[start..at]);
            start = at + delim.len;
        }
        try parts.append(gpa, s[start..]);
        return parts.items;
    }
    var i: usize = 0;
    while (true) {
        while (i < s.len) {
            const d = decode(s, i);
            if (!isSpace(d.cp)) break;
            i += d.len;
        }
        if (i >= s.len) break;
        if (maxsplit >= 0 and splits >= maxsplit) {
            try parts.append(gpa, strip(s[i..], null, false, true));
            break;
        }
        const start = i;
        while (i < s.len) {
            const d = decode(s, i);
            if (isSpace(d.cp)) break;
            i += d.len;
        }
        try parts.append(gpa, s[start..i]);
        splits += 1;
    }
    return parts.items;
}

/// str.splitlines() (without keepends).
pub fn splitLines(gpa: Allocator, s: []const u8) Allocator.Error![][]const u8 {
    var parts: std.ArrayListUnmanaged([]const u8) = .{};
    var start: usize = 0;
    var i: usize = 0;
    while (i < s.len) {
        const d = decode(s, i);
        const brk: usize = switch (d.cp) {
            '\n', 0x0b, 0x0c, 0x1c, 0x1d, 0x1e, 0x85, 0x2028, 0x2029 => d.len,
            '\r' => if (i + 1 < s.len and s[i + 1] == '\n') 2 else 1,
            else => 0,
        };
        if (brk > 0) {
            try parts.append(gpa, s[start..i]);
            i += brk;
            start = i;
        } else i += d.len;
    }
    if (start < s.len) try parts.append(gpa, s[start..]);
    return parts.items;
}

pub fn toUpper(cp: u21) u21 {
    return switch (cp) {
        'a'...'z' => cp - 32,
        0xe0...0xf6, 0xf8...0xfe => cp - 32,
        0xff => 0x178,
        0x3b1...0x3c1, 0x3c3...0x3c9 => cp - 32,
        0x3c2 => 0x3a3,
        0x430...0x44f => cp - 32,
        0x450...0x45f => cp - 80,
        0x100...0x17f => if (cp & 1 == 1 and cp != 0x131 and cp != 0x138 and cp != 0x149 and cp != 0x17f) cp - 1 else cp,
        else => cp,
    };
}

pub fn toLower(cp: u21) u21 {
    return switch (cp) {
        'A'...'Z' => cp + 32,
        0xc0...0xd6, 0xd8...0xde => cp + 32,
        0x391...0x3a1, 0x3a3...0x3a9 => cp + 32,
        0x410...0x42f => cp + 32,
        0x400...0x40f => cp + 80,
        0x100...0x17f => if (cp & 1 == 0 and cp != 0x130 and cp != 0x138) cp + 1 else cp,
        else => cp,
    };
}

/// Whether a code point has case (approximation of Python's "cased" for title()).
pub fn isCased(cp: u21) bool {
    return toUpper(cp) != cp or toLower(cp) != cp;
}

pub const CaseMode = enum { upper, lower, title, capitalize, swap };

/// str.upper/lower/title/capitalize; the result is allocated in `gpa` (caller owns it).
pub fn changeCase(gpa: Allocator, s: []const u8, mode: CaseMode) Allocator.Error![]u8 {
    var out: std.ArrayListUnmanaged(u8) = .{};
    try out.ensureTotalCapacity(gpa, s.len);
    var i: usize = 0;
    var prev_cased = false;
    var first = true;
    while (i < s.len) {
        const d = decode(s, i);
        i += d.len;
        const cp: u21 = switch (mode) {
            .upper => toUpper(d.cp),
            .lower => toLower(d.cp),
            .title => if (prev_cased) toLower(d.cp) else toUpper(d.cp),
            .capitalize => if (first) toUpper(d.cp) else toLower(d.cp),
            .swap => if (toUpper(d.cp) != d.cp) toUpper(d.cp) else toLower(d.cp),
        };
        prev_cased = isCased(d.cp);
        first = false;
        try appendCodepoint(gpa, &out, cp);
    }
    return out.items;
}

/// Writes a float as Python's repr(): shortest round-trip digits, `1.0`, `1e-05`, `1e+16`, `inf`.
pub fn writeFloat(gpa: Allocator, out: *std.ArrayListUnmanaged(u8), f: f64) Allocator.Error!void {
    if (std.math.isNan(f)) return out.appendSlice(gpa, "nan");
    if (std.math.isInf(f)) return out.appendSlice(gpa, if (f < 0) "-inf" else "inf");
    var buf: [64]u8 = undefined;
    const sci = std.fmt.formatFloat(&buf, f, .{ .mode = .scientific }) catch unreachable;
    // sci looks like "-1.2345e5": split into sign, digits and exponent.
    var rest = sci;
    if (rest[0] == '-') {
        try out.append(gpa, '-');
        rest = rest[1..];
    }
    const e_at = std.mem.indexOfScalar(u8, rest, 'e').?;
    const exp = std.fmt.parseInt(i32, rest[e_at + 1 ..], 10) catch 0;
    var digits_buf: [32]u8 = undefined;
    var nd: usize = 0;
    for (rest[0..e_at]) |c| if (c != '.') {
        digits_buf[nd] = c;
        nd += 1;
    };
    var digits = digits_buf[0..nd];
    while (digits.len > 1 and digits[digits.len - 1] == '0') digits = digits[0 .. digits.len - 1];
    if (exp >= -4 and exp < 16) {
        if (exp >= 0) {
            const int_len: usize = @intCast(exp + 1);
            if (digits.len <= int_len) {
                try out.appendSlice(gpa, digits);
                try out.appendNTimes(gpa, '0', int_len - digits.len);
                try out.appendSlice(gpa, ".0");
            } else {
                try out.appendSlice(gpa, digits[0..int_len]);
                try out.append(gpa, '.');
                try out.appendSlice(gpa, digits[int_len..]);
            }
        } else {
            try out.appendSlice(gpa, "0.");
            try out.appendNTimes(gpa, '0', @intCast(-exp - 1));
            try out.appendSlice(gpa, digits);
        }
    } else {
        try out.append(gpa, digits[0]);
        if (digits.len > 1) {
            try out.append(gpa, '.');
            try out.appendSlice(gpa, digits[1..]);
        }
        try out.append(gpa, 'e');
        try out.append(gpa, if (exp < 0) '-' else '+');
        const mag: u32 = @abs(exp);
        if (mag < 10) try out.append(gpa, '0');
        var eb: [12]u8 = undefined;
        try out.appendSlice(gpa, std.fmt.bufPrint(&eb, "{d}", .{mag}) catch unreachable);
    }
}

fn isPrintable(cp: u21) bool {
    return switch (cp) {
        0...0x1f, 0x7f...0xa0, 0xad, 0x200b...0x200f, 0x2028...0x202e, 0x2060...0x2064, 0xfeff, 0xd800...0xdfff => false,
        else => true,
    };
}

/// Writes a string as Python's repr(): single quotes unless the text has ' and no ".
pub fn writeRepr(gpa: Allocator, out: *std.ArrayListUnmanaged(u8), s: []const u8) Allocator.Error!void {
    const quote: u8 = if (std.mem.indexOfScalar(u8, s, '\'') != null and std.mem.indexOfScalar(u8, s, '"') == null) '"' else '\'';
    try out.append(gpa, quote);
    var i: usize = 0;
    while (i < s.len) {
        const d = decode(s, i);
        i += d.len;
        switch (d.cp) {
            '\\' => try out.appendSlice(gpa, "\\\\"),
            '\n' => try out.appendSlice(gpa, "\\n"),
            '\r' => try out.appendSlice(gpa, "\\r"),
            '\t' => try out.appendSlice(gpa, "\\t"),
            else => |cp| {
                if (cp == quote) {
                    try out.append(gpa, '\\');
                    try out.append(gpa, quote);
                } else if (isPrintable(cp)) {
                    try appendCodepoint(gpa, out, cp);
                } else {
                    var b: [12]u8 = undefined;
                    const esc = if (cp < 0x100)
                        std.fmt.bufPrint(&b, "\\x{x:0>2}", .{cp}) catch unreachable
                    else
                        std.fmt.bufPrint(&b, "\\u{x:0>4}", .{cp}) catch unreachable;
                    try out.appendSlice(gpa, esc);
                }
            },
        }
    }
    try out.append(gpa, quote);
}

test "float repr" {
    const gpa = std.testing.allocator;
    const cases = [_]struct { f64, []const u8 }{
        .{ 1.0, "1.0" },           .{ 0.1, "0.1" },     .{ 1e-5, "1e-05" },              .{ 1e16, "1e+16" },
        .{ 123.456, "123.456" },   .{ -0.0, "-0.0" },   .{ 0.0001, "0.0001" },           .{ 1.2345678901234568e17, "1.2345678901234568e+17" },
        .{ 2.5e-300, "2.5e-300" }, .{ 100.0, "100.0" }, .{ 1e15, "1000000000000000.0" },
    };
    for (cases) |c| {
        var out: std.ArrayListUnmanaged(u8) = .{};
        defer out.deinit(gpa);
        try writeFloat(gpa, &out, c[0]);
        try std.testing.expectEqualStrings(c[1], out.items);
    }
}

test "split and strip" {
    var arena = std.heap.ArenaAllocator.init(std.testing.allocator);
    defer arena.deinit();
    const parts = try split(arena.allocator(), "  a  b c ", null, 1);
    try std.testing.expectEqual(@as(usize, 2), parts.len);
    try std.testing.expectEqualStrings("b c", parts[1]);
    try std.testing.expectEqualStrings("é", strip("xxéyx", "xy", true, true));
    try std.testing.expectEqual(@as(usize, 3), length("aé🦙"));
}
