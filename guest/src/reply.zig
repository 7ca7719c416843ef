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

/// Reports a failure. Never fails itself: without memory for the message it sends a fixed one.
pub fn fail(gpa: std.mem.Allocator, kind: Kind, message: []const u8, param: ?[]const u8) void {
    var frame = std.ArrayList(u8).init(gpa);
    defer frame.deinit();
    frame.append(@intFromEnum(Tag.failure)) catch return emitOutOfMemory();
    std.json.stringify(.{ .kind = @tagName(kind), .message = message, .param = param }, .{}, frame.writer()) catch
        return emitOutOfMemory();
    abi.emit(frame.items) catch {}; // nobody to tell
}

fn emitOutOfMemory() void {
    abi.emit("E{\"kind\":\"internal\",\"message\":\"the guest ran out of memory\",\"param\":null}") catch {};
}
