//! llama-host's guest: answers one OpenAI request per run (guest/ABI.md).
//!
//!   llama-host-guest <command> [config JSON]
//!
//! commands: `chat` (/v1/chat/completions), `complete` (/v1/completions), `embed`
//! (/v1/embeddings), `apply-template`
//! (a chat request's rendered prompt), `jinja` (render a template given inline: tests, tools).
//! The request body comes from llama_host_v1.request_read; the answer goes out in frames
//! (reply.zig).
const std = @import("std");
const abi = @import("abi.zig");
const config = @import("config.zig");
const embed = @import("embed.zig");
const jinja = @import("jinja.zig");
const openai = @import("openai.zig");
const reply = @import("reply.zig");

pub const std_options: std.Options = .{ .log_level = .warn };

const Command = enum { chat, complete, embed, @"apply-template", jinja };

pub fn main() void {
    // One request per instance: allocate from an arena and let the instance's end free it.
    var arena = std.heap.ArenaAllocator.init(std.heap.wasm_allocator);
    const gpa = arena.allocator();
    run(gpa) catch |err| switch (err) {
        error.OutOfMemory => reply.fail(gpa, .internal, "the request needs more memory than the guest may use", null),
    };
}

fn run(gpa: std.mem.Allocator) error{OutOfMemory}!void {
    const args = std.process.argsAlloc(gpa) catch |err| switch (err) {
        error.OutOfMemory => return error.OutOfMemory,
        else => return reply.fail(gpa, .internal, "cannot read the guest's arguments", null),
    };
    const command = if (args.len > 1) std.meta.stringToEnum(Command, args[1]) else null;
    if (command == null) {
        reply.fail(gpa, .internal, "usage: llama-host-guest chat|complete|embed|apply-template|jinja [config JSON]", null);
        return;
    }
    const cfg = config.parse(gpa, if (args.len > 2) args[2] else "{}") catch |err| {
        const message = try std.fmt.allocPrint(gpa, "the guest's configuration is invalid ({s})", .{@errorName(err)});
        return reply.fail(gpa, .internal, message, null);
    };
    const body = abi.readRequest(gpa) catch |err| switch (err) {
        error.OutOfMemory => return error.OutOfMemory,
        else => return reply.fail(gpa, .internal, "cannot read the request", null),
    };
    if (command.? == .jinja) return renderInline(gpa, body);
    var failure = openai.Failure{ .kind = .internal, .message = "" };
    const served = switch (command.?) {
        .chat => openai.serve(gpa, .chat, cfg, body, &failure),
        .complete => openai.serve(gpa, .completion, cfg, body, &failure),
        .@"apply-template" => openai.serve(gpa, .template, cfg, body, &failure),
        .embed => embed.serve(gpa, cfg, body, &failure),
        .jinja => unreachable,
    };
    served catch |err| switch (err) {
        error.OutOfMemory => return error.OutOfMemory,
        error.ReceiverGone => {}, // the client left; its sequence was cancelled
        error.Failed => reply.fail(gpa, failure.kind, failure.message, failure.param),
    };
}

/// Renders {"template": source, "context": {...}, "now": seconds} and answers the raw text.
fn renderInline(gpa: std.mem.Allocator, body: []const u8) error{OutOfMemory}!void {
    const Request = struct { template: []const u8, context: std.json.Value, now: i64 = 0 };
    const request = std.json.parseFromSliceLeaky(Request, gpa, body, .{ .ignore_unknown_fields = true, .allocate = .alloc_always }) catch |err| switch (err) {
        error.OutOfMemory => return error.OutOfMemory,
        else => return reply.fail(gpa, .invalid_request, "expected {\"template\": string, \"context\": object, \"now\": integer}", null),
    };
    var diag = jinja.Diagnostic{};
    const text = jinja.render(gpa, request.template, request.context, .{ .now = request.now }, &diag) catch
        return reply.fail(gpa, .template_error, diag.message, null);
    reply.raw(gpa, .body, text) catch |err| switch (err) {
        error.OutOfMemory => return error.OutOfMemory,
        error.ReceiverGone => {},
    };
}
