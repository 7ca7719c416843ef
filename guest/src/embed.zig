//! OpenAI's /v1/embeddings: one mean-pooled, L2-normalised vector per input (WASI-NN
//! `embedding` metadata), as floats or as base64 of little-endian float32 (what the openai SDK
//! asks for by default).
const std = @import("std");
const abi = @import("abi.zig");
const config = @import("config.zig");
const fields = @import("fields.zig");
const openai = @import("openai.zig");
const reply = @import("reply.zig");

const Allocator = std.mem.Allocator;
const max_inputs = 2048;

pub fn serve(gpa: Allocator, cfg: config.Config, body: []const u8, failure: *openai.Failure) openai.Error!void {
    var problem = fields.Problem{ .gpa = gpa };
    serveChecked(gpa, cfg, body, &problem, failure) catch |err| switch (err) {
        error.Invalid => {
            failure.* = .{ .kind = .invalid_request, .message = problem.message, .param = problem.param };
            return error.Failed;
        },
        error.Failed, error.OutOfMemory, error.ReceiverGone => |e| return e,
    };
}

const Item = struct { object: []const u8 = "embedding", index: usize, embedding: Vector };

/// Written as a JSON array of numbers, or as one base64 string.
const Vector = struct {
    values: []const f64,
    base64: bool,

    pub fn jsonStringify(self: Vector, jws: anytype) !void {
        if (!self.base64) return jws.write(self.values);
        // std.json hands jsonStringify no allocator: the scratch bytes come from the wasm
        // allocator and are freed before returning.
        var bytes: [4]u8 = undefined;
        var raw = std.ArrayList(u8).init(std.heap.wasm_allocator);
        defer raw.deinit();
        for (self.values) |v| {
            std.mem.writeInt(u32, &bytes, @bitCast(@as(f32, @floatCast(v))), .little);
            raw.appendSlice(&bytes) catch return error.OutOfMemory;
        }
        const encoder = std.base64.standard.Encoder;
        const text = std.heap.wasm_allocator.alloc(u8, encoder.calcSize(raw.items.len)) catch return error.OutOfMemory;
        defer std.heap.wasm_allocator.free(text);
        try jws.write(encoder.encode(text, raw.items));
    }
};

fn serveChecked(gpa: Allocator, cfg: config.Config, body: []const u8, problem: *fields.Problem, failure: *openai.Failure) (openai.Error || fields.Invalid)!void {
    const request = try fields.parseBody(gpa, body, problem);
    const model = try openai.findModel(gpa, cfg, try request.string("model"), failure);
    const inputs = try readInputs(gpa, request);
    const format = (try request.string("encoding_format")) orelse "float";
    const base64 = std.mem.eql(u8, format, "base64");
    if (!base64 and !std.mem.eql(u8, format, "float"))
        return problem.fail("encoding_format", "'encoding_format' must be float or base64, not '{}'", .{fields.echo(format)});
    _ = try request.string("user");
    if (request.get("dimensions") != null) return problem.fail("dimensions", "'dimensions' is not supported: the model's size is used", .{});

    const graph = abi.Graph.loadByName(model.preload) catch |err| return openai.hostFailure(gpa, err, null, failure);
    const ctx = graph.context() catch |err| return openai.hostFailure(gpa, err, null, failure);
    defer ctx.finalize();
    ctx.setInput(.metadata, "{\"embedding\": true}") catch |err| return openai.hostFailure(gpa, err, null, failure);

    const Output = struct { embedding: []const f64 };
    const Meta = struct { input_tokens: i64 = 0 };
    var items = try gpa.alloc(Item, inputs.len);
    var tokens: i64 = 0;
    for (inputs, 0..) |input, i| {
        input.set(ctx) catch |err| return openai.hostFailure(gpa, err, "input", failure);
        ctx.compute() catch |err| return openai.hostFailure(gpa, err, "input", failure);
        const out = ctx.output(gpa, .text) catch |err| return openai.hostFailure(gpa, err, null, failure);
        const vector = std.json.parseFromSliceLeaky(Output, gpa, out, .{ .ignore_unknown_fields = true }) catch
            return openai.internal(gpa, "the host answered an embedding the guest cannot read", failure);
        const meta_bytes = ctx.output(gpa, .metadata) catch |err| return openai.hostFailure(gpa, err, null, failure);
        const meta = std.json.parseFromSliceLeaky(Meta, gpa, meta_bytes, .{ .ignore_unknown_fields = true }) catch Meta{};
        tokens += meta.input_tokens;
        items[i] = .{ .index = i, .embedding = .{ .values = vector.embedding, .base64 = base64 } };
    }
    try reply.json(gpa, .body, .{
        .object = "list",
        .data = items,
        .model = model.id,
        .usage = .{ .prompt_tokens = tokens, .total_tokens = tokens },
    });
}

/// `input`: a string, a list of strings, a list of token ids or a list of lists of token ids
/// (OpenAI's four forms), none empty.
fn readInputs(gpa: Allocator, request: fields.Object) fields.Invalid![]const openai.Prompt {
    const v = request.get("input") orelse return request.problem.fail("input", "'input' is required", .{});
    switch (v) {
        .string => |s| {
            if (s.len == 0) return request.problem.fail("input", "'input' must not be empty", .{});
            return gpa.dupe(openai.Prompt, &.{.{ .text = s }});
        },
        .array => |a| {
            if (a.items.len == 0) return request.problem.fail("input", "'input' must hold at least one string", .{});
            // (one input's token ids first: their count is the input's length, not a number of inputs)
            if (a.items[0] == .integer) return gpa.dupe(openai.Prompt, &.{.{ .tokens = try openai.tokenIds(gpa, request.problem, a.items, "input") }});
            if (a.items.len > max_inputs) return request.problem.fail("input", "'input' has {d} inputs; at most {d}", .{ a.items.len, max_inputs });
            const list = try gpa.alloc(openai.Prompt, a.items.len);
            for (a.items, list, 0..) |item, *out, i| out.* = switch (item) {
                .string => |text| if (text.len == 0)
                    return request.problem.fail("input", "'input[{d}]' must not be empty", .{i})
                else
                    .{ .text = text },
                .array => |ids| .{ .tokens = try openai.tokenIds(gpa, request.problem, ids.items, try std.fmt.allocPrint(gpa, "input[{d}]", .{i})) },
                else => return request.problem.fail("input", "'input[{d}]' must be a string or a list of token ids, not {s}", .{ i, fields.typeName(item) }),
            };
            return list;
        },
        else => return request.problem.fail("input", "'input' must be a string or a list of strings or token ids, not {s}", .{fields.typeName(v)}),
    }
}
