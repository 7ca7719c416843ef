//! Log-probabilities in OpenAI's two shapes. The host gives chat's shape, a list of
//! `{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}` (WASI-NN outputs 2 and 3,
//! llama-host's); legacy completions want parallel lists (`tokens`, `token_logprobs`,
//! `top_logprobs` as `{token: logprob}` objects, `text_offset`).
const std = @import("std");
const abi = @import("abi.zig");

const Value = std.json.Value;
const Allocator = std.mem.Allocator;

pub const Which = enum { generated, prompt };

/// The entries of the whole generation (after `compute`) or of the last token (after
/// `compute_single`), or of the prompt; memory in `gpa`.
pub fn read(gpa: Allocator, ctx: abi.Context, which: Which, single: bool) (abi.Error || error{OutOfMemory})![]const Value {
    const index: abi.Context.Output = if (which == .generated) .logprobs else .prompt_logprobs;
    var buf: [1024]u8 = undefined;
    const bytes = if (single) try ctx.outputSingle(gpa, index, &buf) else try ctx.output(gpa, index);
    const parsed = std.json.parseFromSliceLeaky(Value, gpa, bytes, .{ .allocate = .alloc_always }) catch |err| switch (err) {
        error.OutOfMemory => return error.OutOfMemory,
        else => return error.RuntimeError, // the host's JSON is always a list
    };
    return if (parsed == .array) parsed.array.items else error.RuntimeError;
}

/// Chat's `choices[].logprobs`.
pub fn chat(gpa: Allocator, entries: []const Value) error{OutOfMemory}!Value {
    var out = std.json.ObjectMap.init(gpa);
    try out.put("content", .{ .array = .{ .items = @constCast(entries), .capacity = entries.len, .allocator = gpa } });
    try out.put("refusal", .null);
    return .{ .object = out };
}

/// Legacy completions' `choices[].logprobs`, built from lists of entries.
pub const Legacy = struct {
    tokens: std.json.Array,
    token_logprobs: std.json.Array,
    top_logprobs: std.json.Array,
    text_offset: std.json.Array,

    pub fn init(gpa: Allocator) Legacy {
        return .{
            .tokens = std.json.Array.init(gpa),
            .token_logprobs = std.json.Array.init(gpa),
            .top_logprobs = std.json.Array.init(gpa),
            .text_offset = std.json.Array.init(gpa),
        };
    }

    /// `offset`: where the first entry's text starts in prompt and completion (characters);
    /// it moves past each entry's text.
    pub fn append(self: *Legacy, entries: []const Value, offset: *usize) error{OutOfMemory}!void {
        const gpa = self.tokens.allocator;
        for (entries) |entry| {
            const token = field(entry, "token");
            try self.tokens.append(token);
            try self.token_logprobs.append(field(entry, "logprob"));
            const top = field(entry, "top_logprobs");
            if (top == .array) {
                var alternatives = std.json.ObjectMap.init(gpa);
                for (top.array.items) |t| if (field(t, "token") == .string) try alternatives.put(field(t, "token").string, field(t, "logprob"));
                try self.top_logprobs.append(.{ .object = alternatives });
            } else try self.top_logprobs.append(.null); // the first prompt token: nothing predicts it
            try self.text_offset.append(.{ .integer = @intCast(offset.*) });
            if (token == .string) offset.* += characters(token.string);
        }
    }

    pub fn value(self: Legacy) error{OutOfMemory}!Value {
        var out = std.json.ObjectMap.init(self.tokens.allocator);
        try out.put("tokens", .{ .array = self.tokens });
        try out.put("token_logprobs", .{ .array = self.token_logprobs });
        try out.put("top_logprobs", .{ .array = self.top_logprobs });
        try out.put("text_offset", .{ .array = self.text_offset });
        return .{ .object = out };
    }
};

/// Characters of `text` as clients count them (code points; the host's text is valid UTF-8).
pub fn characters(text: []const u8) usize {
    return std.unicode.utf8CountCodepoints(text) catch text.len;
}

fn field(entry: Value, name: []const u8) Value {
    if (entry != .object) return .null;
    return entry.object.get(name) orelse .null;
}
