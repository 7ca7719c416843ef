//! The response, as frames handed to the host one `emit` call each (guest/ABI.md):
//!   'B' + body       the whole JSON body of a 200 response
//!   'S' + payload    one server-sent event's data (the host writes `data: ` and the blank line)
//!   'E' + JSON       an error {"kind", "message", "param"}; the host maps `kind` to the OpenAI
//!                    error type and HTTP status (host/llama_host/errors.py), or, once a stream
//!                    has started, sends it as a final event
const std = @import("std");
const abi = @import("abi.zig");

/// Error kinds, named as in the host's table (errors.py, ErrorKind lower-cased).
pub const Kind = enum {
    invalid_request,
    context_length,
    invalid_grammar,
    model_not_found,
    template_error,
    queue_full,
    unavailable,
    internal,
};

/// The first byte of a frame.
const Tag = enum(u8) { body = 'B', event = 'S', failure = 'E' };

/// Serializes `value` as JSON into one frame. Frames are built in `gpa` and freed after emit.
pub const EmitError = error{ OutOfMemory, ReceiverGone };

pub fn json(gpa: std.mem.Allocator, tag: enum { body, event }, value: anytype) EmitError!void {
    var frame = std.ArrayList(u8).init(gpa);
    defer frame.deinit();
    try frame.append(@intFromEnum(if (tag == .body) Tag.body else Tag.event));
    try std.json.stringify(value, .{}, frame.writer());
    try abi.emit(frame.items);
}

/// A frame of raw bytes (a rendered prompt, `[DONE]`).
pub fn raw(gpa: std.mem.Allocator, tag: enum { body, event }, bytes: []const u8) EmitError!void {
    var frame = try std.ArrayList(u8).initCapacity(gpa, bytes.len + 1);
    defer frame.deinit();
    frame.appendAssumeCapacity(@intFromEnum(if (tag == .body) Tag.body else Tag.event));
    frame.appendSliceAssumeCapacity(bytes);
    try abi.emit(frame.items);
}

/// Messages longer than this many bytes are cut at a character boundary, with an ellipsis: a
/// message may quote a template's or the host's text, and must stay small.
pub const max_message = 4096;

/// Where a failure frame is built when `gpa` has no memory left (a template that ran out of
/// it): big enough for a whole clipped message, every byte escaped.
var fallback: [6 * max_message + 1024]u8 = undefined;

/// Reports a failure. Never fails itself: without memory it builds the frame in a static
/// buffer. The message is cut to `max_message` bytes and made valid UTF-8 (U+FFFD for bad
/// bytes), so the frame is always one JSON object with a string message.
pub fn fail(gpa: std.mem.Allocator, kind: Kind, message: []const u8, param: ?[]const u8) void {
    var frame = std.ArrayList(u8).init(gpa);
    defer frame.deinit();
    if (writeFailure(frame.writer(), kind, message, param)) {
        abi.emit(frame.items) catch {}; // nobody to tell
        return;
    } else |_| {}
    var stream = std.io.fixedBufferStream(&fallback);
    writeFailure(stream.writer(), kind, message, param) catch return emitOutOfMemory();
    abi.emit(stream.getWritten()) catch {};
}

fn writeFailure(w: anytype, kind: Kind, message: []const u8, param: ?[]const u8) !void {
    try w.writeAll("E{\"kind\":\"");
    try w.writeAll(@tagName(kind));
    try w.writeAll("\",\"message\":");
    try writeText(w, message);
    try w.writeAll(",\"param\":");
    if (param) |p| try writeText(w, p) else try w.writeAll("null");
    try w.writeByte('}');
}

/// A JSON string of `text`, clipped to `max_message` bytes, invalid UTF-8 as U+FFFD.
fn writeText(w: anytype, text: []const u8) !void {
    try w.writeByte('"');
    var i: usize = 0;
    while (i < text.len) {
        const n = charLength(text, i);
        if (i + @max(n, 1) > max_message) {
            try w.writeAll("\\u2026"); // …
            break;
        }
        const c = text[i];
        if (n == 0) {
            try w.writeAll("\\ufffd"); // one bad byte
            i += 1;
            continue;
        }
        if (c == '"' or c == '\\') {
            try w.writeByte('\\');
            try w.writeByte(c);
        } else if (c < 0x20) {
            try w.print("\\u{x:0>4}", .{c});
        } else try w.writeAll(text[i .. i + n]);
        i += n;
    }
    try w.writeByte('"');
}

/// Bytes of the UTF-8 character at `text[i]`; 0 when the bytes there are not one.
fn charLength(text: []const u8, i: usize) usize {
    const n = std.unicode.utf8ByteSequenceLength(text[i]) catch return 0;
    if (i + n > text.len) return 0;
    if (n > 1) _ = std.unicode.utf8Decode(text[i .. i + n]) catch return 0;
    return n;
}

fn emitOutOfMemory() void {
    abi.emit("E{\"kind\":\"internal\",\"message\":\"the guest ran out of memory\",\"param\":null}") catch {};
}
