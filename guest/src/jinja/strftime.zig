//! `strftime_now(format)` in UTC, as glibc's strftime formats it (the C locale), so dates in
//! system prompts match what Python prints.
const std = @import("std");
const Allocator = std.mem.Allocator;

const months = [_][]const u8{ "January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December" };
const days = [_][]const u8{ "Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday" };

const Civil = struct { year: i64, month: u32, day: u32, yday: u32, wday: u32, hour: u32, minute: u32, second: u32 };

fn civil(t: i64) Civil {
    const secs = @mod(t, 86400);
    const z = @divFloor(t, 86400);
    // Howard Hinnant's days-to-civil algorithm.
    const zz = z + 719468;
    const era = @divFloor(zz, 146097);
    const doe: i64 = zz - era * 146097;
    const yoe = @divFloor(doe - @divFloor(doe, 1460) + @divFloor(doe, 36524) - @divFloor(doe, 146096), 365);
    const doy = doe - (365 * yoe + @divFloor(yoe, 4) - @divFloor(yoe, 100));
    const mp = @divFloor(5 * doy + 2, 153);
    const d: u32 = @intCast(doy - @divFloor(153 * mp + 2, 5) + 1);
    const m: u32 = @intCast(if (mp < 10) mp + 3 else mp - 9);
    const y = yoe + era * 400 + @as(i64, if (m <= 2) 1 else 0);
    const leap = (@mod(y, 4) == 0 and @mod(y, 100) != 0) or @mod(y, 400) == 0;
    const cum = [_]u32{ 0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334 };
    const yday = cum[m - 1] + d - 1 + @as(u32, if (leap and m > 2) 1 else 0);
    return .{
        .year = y,
        .month = m,
        .day = d,
        .yday = yday,
        .wday = @intCast(@mod(z + 4, 7)), // 1970-01-01 was a Thursday
        .hour = @intCast(@divFloor(secs, 3600)),
        .minute = @intCast(@divFloor(@mod(secs, 3600), 60)),
        .second = @intCast(@mod(secs, 60)),
    };
}

/// Formats `t` (seconds since the epoch, UTC); the text is allocated in `gpa` (caller owns it).
pub fn format(gpa: Allocator, fmt: []const u8, t: i64) Allocator.Error![]u8 {
    const c = civil(t);
    var out: std.ArrayListUnmanaged(u8) = .{};
    const w = out.writer(gpa);
    var i: usize = 0;
    while (i < fmt.len) : (i += 1) {
        if (fmt[i] != '%' or i + 1 >= fmt.len) {
            try out.append(gpa, fmt[i]);
            continue;
        }
        i += 1;
        var pad = true;
        if (fmt[i] == '-' and i + 1 < fmt.len) { // glibc: no padding
            pad = false;
            i += 1;
        }
        const hour12 = if (c.hour % 12 == 0) 12 else c.hour % 12;
        switch (fmt[i]) {
            'Y' => try w.print("{d}", .{c.year}),
            'y' => try num(w, @intCast(@mod(c.year, 100)), 2, pad),
            'm' => try num(w, c.month, 2, pad),
            'd' => try num(w, c.day, 2, pad),
            'e' => if (pad) try w.print("{d: >2}", .{c.day}) else try w.print("{d}", .{c.day}),
            'H' => try num(w, c.hour, 2, pad),
            'I' => try num(w, hour12, 2, pad),
            'M' => try num(w, c.minute, 2, pad),
            'S' => try num(w, c.second, 2, pad),
            'j' => try num(w, c.yday + 1, 3, pad),
            'p' => try out.appendSlice(gpa, if (c.hour < 12) "AM" else "PM"),
            'B' => try out.appendSlice(gpa, months[c.month - 1]),
            'b', 'h' => try out.appendSlice(gpa, months[c.month - 1][0..3]),
            'A' => try out.appendSlice(gpa, days[c.wday]),
            'a' => try out.appendSlice(gpa, days[c.wday][0..3]),
            'w' => try w.print("{d}", .{c.wday}),
            'u' => try w.print("{d}", .{if (c.wday == 0) 7 else c.wday}),
            'Z' => try out.appendSlice(gpa, "UTC"),
            'z' => try out.appendSlice(gpa, "+0000"),
            'F' => try w.print("{d}-{d:0>2}-{d:0>2}", .{ c.year, c.month, c.day }),
            'T' => try w.print("{d:0>2}:{d:0>2}:{d:0>2}", .{ c.hour, c.minute, c.second }),
            'D' => try w.print("{d:0>2}/{d:0>2}/{d:0>2}", .{ c.month, c.day, @as(u32, @intCast(@mod(c.year, 100))) }),
            'R' => try w.print("{d:0>2}:{d:0>2}", .{ c.hour, c.minute }),
            'c' => try w.print("{s} {s} {d: >2} {d:0>2}:{d:0>2}:{d:0>2} {d}", .{ days[c.wday][0..3], months[c.month - 1][0..3], c.day, c.hour, c.minute, c.second, c.year }),
            'x' => try w.print("{d:0>2}/{d:0>2}/{d:0>2}", .{ c.month, c.day, @as(u32, @intCast(@mod(c.year, 100))) }),
            'X' => try w.print("{d:0>2}:{d:0>2}:{d:0>2}", .{ c.hour, c.minute, c.second }),
            's' => try w.print("{d}", .{t}),
            'n' => try out.append(gpa, '\n'),
            't' => try out.append(gpa, '\t'),
            '%' => try out.append(gpa, '%'),
            else => {
                try out.append(gpa, '%');
                if (!pad) try out.append(gpa, '-');
                try out.append(gpa, fmt[i]);
            },
        }
    }
    return out.items;
}

fn num(w: anytype, v: u32, width: usize, pad: bool) !void {
    if (!pad) return w.print("{d}", .{v});
    if (width == 3) return w.print("{d:0>3}", .{v});
    return w.print("{d:0>2}", .{v});
}

test "formats the fixed clock" {
    var arena = std.heap.ArenaAllocator.init(std.testing.allocator);
    defer arena.deinit();
    const s = try format(arena.allocator(), "%Y-%m-%d %H:%M:%S %A %B %-d %j %p %I", 1_700_000_000);
    try std.testing.expectEqualStrings("2023-11-14 22:13:20 Tuesday November 14 318 PM 10", s);
}
