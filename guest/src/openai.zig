//! OpenAI's chat completions and (legacy) completions: validate the request, map it to WASI-NN
//! metadata, run the model, and answer in OpenAI's exact shapes, streamed or not.
const std = @import("std");
const abi = @import("abi.zig");
const config = @import("config.zig");
const fields = @import("fields.zig");
const logprobs = @import("logprobs.zig");
const prompt = @import("prompt.zig");
const reply = @import("reply.zig");
const toolcall = @import("toolcall.zig");

const Value = std.json.Value;
const Allocator = std.mem.Allocator;
const Object = fields.Object;

/// `template`: a chat request answered with its rendered prompt (llama-server's /apply-template).
pub const Api = enum { chat, completion, template };

/// What a request failed on, before or while generating. `param` names the request field.
pub const Failure = struct {
    kind: reply.Kind,
    message: []const u8,
    param: ?[]const u8 = null,
};

pub const Error = error{ Failed, OutOfMemory, ReceiverGone };

/// A validated request, ready to run.
const Job = struct {
    model: *const config.Model,
    model_id: []const u8,
    metadata: std.json.ObjectMap,
    stream: bool = false,
    include_usage: bool = false,
    continuous_usage: bool = false, // every chunk carries the usage so far (vLLM's continuous_usage_stats)
    echo: bool = false, // completions: the prompt is prepended to the text
    grammar_param: ?[]const u8 = null, // the field a grammar the host refuses came from
    logprobs: bool = false, // the answer carries log-probabilities
    chat_logprobs: bool = false, // completions: in chat's shape (`logprobs_format`: "chat")
    token_ids: bool = false, // each choice carries its generated token ids (vLLM's return_token_ids)
    id_slot: ?i64 = null, // llama-server's: the sequence asked for (-1: any); the answer names the one that ran it
    n: usize = 1, // choices per prompt
    tools: toolcall.Request = .{},
    format: toolcall.Format = .generic, // chat: how the model's template writes tool calls
    in_reasoning: bool = false, // chat: the prompt ends inside a think block
    think: bool = true, // chat: split <think> blocks into reasoning_content (reasoning_format)
};

/// A prompt for the model: text (the host tokenizes it) or token ids.
pub const Prompt = union(enum) {
    text: []const u8,
    tokens: []const i32,

    pub fn set(self: Prompt, ctx: abi.Context) abi.Error!void {
        switch (self) {
            .text => |t| try ctx.setInput(.prompt, t),
            .tokens => |t| try ctx.setTokens(t),
        }
    }
};

/// Choices of one request at most (prompts × n).
const max_choices = 128;

/// Alternatives per token at most (OpenAI's chat limit; its legacy completions allow 5).
const max_top_logprobs = 20;

pub fn serve(gpa: Allocator, api: Api, cfg: config.Config, body: []const u8, failure: *Failure) Error!void {
    var problem = fields.Problem{ .gpa = gpa };
    serveChecked(gpa, api, cfg, body, &problem, failure) catch |err| switch (err) {
        error.Invalid => {
            failure.* = .{ .kind = .invalid_request, .message = problem.message, .param = problem.param };
            return error.Failed;
        },
        error.Failed, error.OutOfMemory, error.ReceiverGone => |e| return e,
    };
}

fn serveChecked(gpa: Allocator, api: Api, cfg: config.Config, body: []const u8, problem: *fields.Problem, failure: *Failure) (Error || fields.Invalid)!void {
    const request = try fields.parseBody(gpa, body, problem);
    var job = try validate(gpa, api, cfg, request, failure);
    const graph = abi.Graph.loadByName(job.model.preload) catch |err| return jobFailure(gpa, err, &job, api, failure);
    const info = try prompt.ModelInfo.read(gpa, graph);
    if (job.n > 1 and info.n_parallel > 0 and job.n > info.n_parallel)
        return problem.fail("n", "'n' is {d}, more than the {d} sequences the model '{s}' decodes at once (its --parallel)", .{ job.n, info.n_parallel, job.model_id });
    if (job.id_slot) |slot| if (info.n_parallel > 0 and slot >= info.n_parallel)
        return problem.fail("id_slot", "'id_slot' is {d}; the model '{s}' has sequences 0 to {d} (its --parallel)", .{ slot, job.model_id, info.n_parallel - 1 });
    const prompts: []const Prompt = switch (api) {
        .chat, .template => blk: {
            const rendered = prompt.renderChat(gpa, job.model, info, request, job.tools, problem) catch |err| switch (err) {
                error.Template => {
                    failure.* = .{ .kind = .template_error, .message = problem.message };
                    return error.Failed;
                },
                else => |e| return e,
            };
            if (api == .template) return reply.json(gpa, .body, .{ .prompt = rendered.text });
            job.format = rendered.format;
            job.in_reasoning = rendered.in_reasoning;
            try toolGrammar(gpa, &job);
            break :blk try gpa.dupe(Prompt, &.{.{ .text = rendered.text }});
        },
        .completion => try completionPrompts(gpa, request, &job),
    };
    if (prompts.len * job.n > max_choices)
        return problem.fail("n", "{d} prompts × 'n' {d} is more than {d} choices", .{ prompts.len, job.n, max_choices });
    if ((job.id_slot orelse -1) >= 0 and prompts.len * job.n > 1)
        return problem.fail("id_slot", "'id_slot' names one sequence: one prompt and 'n' 1 only", .{});

    // One execution context per choice; the host shares a prompt's KV cells among its choices.
    const choices = try gpa.alloc(Choice, prompts.len * job.n);
    var created: usize = 0;
    defer for (choices[0..created]) |c| c.ctx.finalize();
    for (choices, 0..) |*c, i| {
        const p = prompts[i / job.n];
        c.* = .{
            .ctx = graph.context() catch |err| return jobFailure(gpa, err, &job, api, failure),
            .index = i,
            .first_of_prompt = i % job.n == 0,
            .echo = if (job.echo and p == .text) p.text else null,
            .prompt_chars = if (p == .text) logprobs.characters(p.text) else 0,
            .text = std.ArrayList(u8).init(gpa),
            .entries = std.ArrayList(Value).init(gpa),
            .token_ids = std.ArrayList(i64).init(gpa),
            .reasoning = std.ArrayList(u8).init(gpa),
            .calls = std.ArrayList(toolcall.Call).init(gpa),
            .split = if (api == .chat) toolcall.Splitter.init(gpa, job.format, job.tools.tools, job.tools.active(), job.think, job.in_reasoning) else null,
        };
        created += 1;
        c.ctx.setInput(.metadata, try choiceMetadata(gpa, &job, i % job.n)) catch |err| return jobFailure(gpa, err, &job, api, failure);
        // (token ids outside the vocabulary: InvalidArgument, a 400 naming the prompt)
        p.set(c.ctx) catch |err| return hostFailure(gpa, err, if (api == .chat) "messages" else "prompt", failure);
    }

    const answer = Answer.init(gpa, api, cfg, job);
    if (job.stream or choices.len > 1) return runChoices(gpa, choices, &job, answer, failure);
    // One choice, not streamed: generated in one call, the host wakes the guest once.
    const c = &choices[0];
    c.ctx.compute() catch |err| switch (err) {
        error.ContextFull => {}, // the text so far is the answer, finish_reason "length"
        else => return jobFailure(gpa, err, &job, api, failure),
    };
    try c.gather(try c.take(c.ctx.output(gpa, .text) catch |err| return jobFailure(gpa, err, &job, api, failure)));
    try c.gather(try c.end());
    c.usage = try Usage.read(gpa, c.ctx);
    if (job.logprobs) {
        const generated = logprobs.read(gpa, c.ctx, .generated, false) catch |err| return jobFailure(gpa, err, &job, api, failure);
        try c.entries.appendSlice(generated);
        if (c.echo != null) c.prompt_entries = logprobs.read(gpa, c.ctx, .prompt, false) catch |err| return jobFailure(gpa, err, &job, api, failure);
    }
    if (job.token_ids) try c.token_ids.appendSlice(readTokenIds(gpa, c.ctx, false) catch |err| return jobFailure(gpa, err, &job, api, failure));
    try answer.whole(choices);
}

/// The grammar that makes the model's calls valid (toolcall.grammar), unless the request brings
/// its own (`grammar`, `response_format`), which then wins for `auto` (validate refuses it with
/// a required or named tool).
fn toolGrammar(gpa: Allocator, job: *Job) error{OutOfMemory}!void {
    const md = &job.metadata;
    if (md.get("grammar") != null or md.get("json-schema") != null) return;
    const g = (try toolcall.grammar(gpa, job.format, job.tools)) orelse return;
    try md.put("grammar", .{ .string = g.gbnf });
    try md.put("grammar-schemas", .{ .object = g.schemas });
    if (g.lazy) { // `auto`: free text until the model starts a call
        var triggers = std.json.Array.init(gpa);
        try triggers.append(.{ .string = g.trigger });
        try md.put("grammar-triggers", .{ .array = triggers });
    }
    job.grammar_param = "tools";
}

/// The metadata of the `j`th choice of a prompt: with a seed, choice j draws with seed + j, so
/// that choices differ and a request is reproducible.
fn choiceMetadata(gpa: Allocator, job: *const Job, j: usize) error{OutOfMemory}![]const u8 {
    var md = job.metadata;
    if (j > 0) if (job.metadata.get("seed")) |seed| {
        md = try job.metadata.clone();
        try md.put("seed", .{ .integer = seed.integer +% @as(i64, @intCast(j)) });
    };
    return std.json.stringifyAlloc(gpa, Value{ .object = md }, .{});
}

/// One choice of an answer while it is generated.
const Choice = struct {
    ctx: abi.Context,
    index: usize,
    first_of_prompt: bool, // usage counts each prompt once
    echo: ?[]const u8, // completions with echo: the prompt text
    prompt_chars: usize, // where the completion's text_offset starts
    text: std.ArrayList(u8), // not streamed: the text so far
    entries: std.ArrayList(Value), // not streamed: log-probabilities so far
    token_ids: std.ArrayList(i64), // the generated ids (return_token_ids); streamed: those not yet sent
    prompt_entries: []const Value = &.{},
    usage: Usage = .{},
    started: bool = false,
    done: bool = false,
    offset: usize = 0, // streamed completions: text_offset of the next token
    split: ?toolcall.Splitter, // chat: content, reasoning and tool calls
    reasoning: std.ArrayList(u8), // not streamed: reasoning_content so far
    calls: std.ArrayList(toolcall.Call), // not streamed: the tool calls

    /// What a piece of generated text releases (all of it, as content, but in chat).
    fn take(self: *Choice, piece: []const u8) error{OutOfMemory}!toolcall.Delta {
        return if (self.split) |*s| s.push(piece) else .{ .content = piece };
    }

    /// What the end of generation releases.
    fn end(self: *Choice) error{OutOfMemory}!toolcall.Delta {
        return if (self.split) |*s| s.finish() else .{};
    }

    fn gather(self: *Choice, d: toolcall.Delta) error{OutOfMemory}!void {
        try self.text.appendSlice(d.content);
        try self.reasoning.appendSlice(d.reasoning);
        try self.calls.appendSlice(d.calls);
    }

    fn finishReason(self: *const Choice) []const u8 {
        return if (self.calls.items.len > 0) "tool_calls" else self.usage.finish_reason;
    }

    fn stopWord(self: *const Choice) ?[]const u8 {
        return if (self.calls.items.len > 0) null else self.usage.stop_word;
    }

    /// How a streamed choice ended, for its last chunk.
    fn ending(self: *const Choice) Answer.End {
        return .{ .reason = self.finishReason(), .stop_word = self.stopWord(), .usage = self.usage };
    }
};

/// The generated token ids (output 4): all of them after `compute`, the last token's after
/// `compute_single`; memory in `gpa`.
fn readTokenIds(gpa: Allocator, ctx: abi.Context, single: bool) (abi.Error || error{OutOfMemory})![]const i64 {
    var buf: [64]u8 = undefined;
    const bytes = if (single) try ctx.outputSingle(gpa, .tokens, &buf) else try ctx.output(gpa, .tokens);
    return std.json.parseFromSliceLeaky([]const i64, gpa, bytes, .{ .allocate = .alloc_always }) catch |err| switch (err) {
        error.OutOfMemory => return error.OutOfMemory,
        else => return error.RuntimeError, // the host's JSON is always a list of integers
    };
}

/// Generates every choice a token at a time, round robin (the host runs them together, so a
/// choice waited on has usually produced its token already): streamed, each piece is a chunk as
/// it comes; otherwise the pieces gather into the answer.
fn runChoices(gpa: Allocator, choices: []Choice, job: *const Job, answer: Answer, failure: *Failure) Error!void {
    defer for (choices) |c| c.ctx.finiSingle();
    var buf: [256]u8 = undefined;
    var live = choices.len;
    while (live > 0) {
        for (choices) |*c| {
            if (c.done) continue;
            const more = if (c.ctx.computeSingle()) true else |err| switch (err) {
                error.EndOfSequence, error.ContextFull => false,
                else => return jobFailure(gpa, err, job, answer.api, failure),
            };
            if (!c.started) {
                // only now: a prompt that is too long or a full queue is still an HTTP error
                c.started = true;
                if (job.logprobs and c.echo != null)
                    c.prompt_entries = logprobs.read(gpa, c.ctx, .prompt, true) catch |err| return jobFailure(gpa, err, job, answer.api, failure);
                if (job.stream) {
                    if (job.continuous_usage) c.usage = try Usage.readSingle(gpa, c.ctx);
                    const lp = if (c.echo != null and job.logprobs) try answer.chunkLogprobs(c.prompt_entries, &c.offset) else null;
                    try answer.chunk(c, if (answer.api == .completion) (c.echo orelse "") else "", true, null, lp);
                }
                c.offset = c.prompt_chars;
            }
            if (more) {
                const piece = c.ctx.outputSingle(gpa, .text, &buf) catch |err| return jobFailure(gpa, err, job, answer.api, failure);
                const entries: []const Value = if (job.logprobs)
                    logprobs.read(gpa, c.ctx, .generated, true) catch |err| return jobFailure(gpa, err, job, answer.api, failure)
                else
                    &.{};
                if (job.token_ids) try c.token_ids.appendSlice(readTokenIds(gpa, c.ctx, true) catch |err| return jobFailure(gpa, err, job, answer.api, failure));
                if (job.continuous_usage) c.usage = try Usage.readSingle(gpa, c.ctx); // (the counts so far)
                const d = try c.take(piece);
                if (!job.stream) {
                    try c.gather(d);
                    try c.entries.appendSlice(entries);
                } else if (!d.empty() or entries.len > 0) {
                    const lp = if (job.logprobs) try answer.chunkLogprobs(entries, &c.offset) else null;
                    if (answer.api == .chat) try answer.delta(c, d, lp) else try answer.chunk(c, d.content, false, null, lp);
                }
                continue;
            }
            c.done = true;
            live -= 1;
            // (the ids whose text never came: tokens a stop string cut)
            if (job.token_ids) try c.token_ids.appendSlice(readTokenIds(gpa, c.ctx, true) catch |err| return jobFailure(gpa, err, job, answer.api, failure));
            c.usage = try Usage.readSingle(gpa, c.ctx);
            const d = try c.end();
            if (!job.stream) {
                try c.gather(d);
                continue;
            }
            if (!d.empty()) try answer.delta(c, d, null); // (chat only: other APIs release nothing at the end)
            try c.calls.appendSlice(d.calls);
            try answer.chunk(c, "", false, c.ending(), null);
        }
    }
    if (!job.stream) return answer.whole(choices);
    if (answer.include_usage) try answer.usageChunk(Usage.total(choices));
    try reply.raw(gpa, .event, "[DONE]");
}

// --- validation ---------------------------------------------------------------------------

/// The served model a request names (the first when it names none); a 404 naming the others.
pub fn findModel(gpa: Allocator, cfg: config.Config, id: ?[]const u8, failure: *Failure) Error!*const config.Model {
    return cfg.find(id) orelse {
        var names = std.ArrayList(u8).init(gpa);
        for (cfg.models, 0..) |m, i| {
            if (i > 0) try names.appendSlice(", ");
            try names.appendSlice(m.id);
        }
        failure.* = .{
            .kind = .model_not_found,
            .message = try std.fmt.allocPrint(gpa, "the model '{}' does not exist; available: {s}", .{ fields.echo(id orelse ""), names.items }),
            .param = "model",
        };
        return error.Failed;
    };
}

fn validate(gpa: Allocator, api: Api, cfg: config.Config, request: Object, failure: *Failure) (Error || fields.Invalid)!Job {
    const model_id = try request.string("model");
    const model = try findModel(gpa, cfg, model_id, failure);
    var job = Job{ .model = model, .model_id = model.id, .metadata = std.json.ObjectMap.init(gpa) };
    const md = &job.metadata;
    if (cfg.defaults) |defaults| if (defaults == .object) {
        var it = defaults.object.iterator();
        while (it.next()) |e| try md.put(e.key_ptr.*, e.value_ptr.*);
    };

    // Absent or null: the server's default (--n-predict). Chat takes both names (max_tokens is
    // the older), and the newer wins; at least 1 token, as OpenAI requires. Completions may ask
    // for 0: the prompt is evaluated (and cached) only, as scoring with echo + logprobs needs.
    const max_tokens = try request.integer("max_tokens", if (api == .completion) 0 else 1, std.math.maxInt(i32));
    const max_completion_tokens = if (api == .completion) null else try request.integer("max_completion_tokens", 1, std.math.maxInt(i32));
    if (max_completion_tokens orelse max_tokens) |n| try md.put("n-predict", .{ .integer = n });
    if (try request.number("temperature", 0, 2)) |x| try md.put("temp", .{ .float = x });
    if (try request.number("top_p", 0, 1)) |x| try md.put("top-p", .{ .float = x });
    if (try request.number("min_p", 0, 1)) |x| try md.put("min-p", .{ .float = x });
    if (try request.number("typical_p", 0, 1)) |x| try md.put("typical-p", .{ .float = x });
    try moreSamplers(request, md);
    if (try request.integer("top_k", 0, std.math.maxInt(i32))) |n| try md.put("top-k", .{ .integer = n });
    if (try request.number("presence_penalty", -2, 2)) |x| try md.put("presence-penalty", .{ .float = x });
    if (try request.number("frequency_penalty", -2, 2)) |x| try md.put("frequency-penalty", .{ .float = x });
    if (try request.number("repeat_penalty", 0, 10)) |x| try md.put("repeat-penalty", .{ .float = x });
    if (try request.integer("repeat_last_n", -1, std.math.maxInt(i32))) |n| try md.put("repeat-last-n", .{ .integer = n });
    if (try request.integer("seed", std.math.minInt(i64), std.math.maxInt(i64))) |n| try md.put("seed", .{ .integer = n });
    if (try request.boolean("ignore_eos")) |b| try md.put("ignore-eos", .{ .bool = b });
    if (try request.string("grammar")) |g| {
        try md.put("grammar", .{ .string = g });
        job.grammar_param = "grammar";
    }
    _ = try request.string("user");
    if (try request.integer("n", 1, max_choices)) |n| job.n = @intCast(n);
    try logprobRequest(api, request, &job);
    if ((try request.boolean("return_token_ids")) orelse false) {
        job.token_ids = true;
        try md.put("return-tokens", .{ .bool = true });
    }
    if (try request.integer("id_slot", -1, std.math.maxInt(i32))) |slot| {
        job.id_slot = slot;
        if (slot >= 0) try md.put("id-slot", .{ .integer = slot });
    }
    try stopStrings(request, md);
    try logitBias(gpa, request, md);
    // llama-server's top-level `json_schema`; `response_format` wins over it; `grammar` over both.
    if (try request.object("json_schema")) |schema| try putSchema(gpa, &job, "json_schema", schema.map);
    if (api != .completion) try responseFormat(gpa, request, &job);
    if (api != .completion) {
        // llama-server's reasoning_format, per request as well as per server
        const reasoning = (try request.string("reasoning_format")) orelse cfg.reasoning_format;
        if (!std.mem.eql(u8, reasoning, "deepseek") and !std.mem.eql(u8, reasoning, "none") and !std.mem.eql(u8, reasoning, "auto"))
            return request.problem.fail("reasoning_format", "'reasoning_format' must be deepseek, auto or none, not '{}'", .{fields.echo(reasoning)});
        job.think = !std.mem.eql(u8, reasoning, "none");
        job.tools = try toolcall.readRequest(gpa, request);
        const forced = job.tools.active() and job.tools.choice != .auto;
        if (forced and job.grammar_param != null)
            return request.problem.fail("tool_choice", "'tool_choice' that requires a call cannot be combined with '{s}': both constrain the answer", .{job.grammar_param.?});
    }

    job.stream = (try request.boolean("stream")) orelse false;
    if (try request.object("stream_options")) |opts| {
        job.continuous_usage = (try opts.boolean("continuous_usage_stats")) orelse false;
        job.include_usage = ((try opts.boolean("include_usage")) orelse false) or job.continuous_usage;
    }
    return job;
}

fn logprobRequest(api: Api, request: Object, job: *Job) fields.Invalid!void {
    if (api == .completion) { // legacy: `logprobs` is the number of alternatives per token
        if (try request.string("logprobs_format")) |shape| {
            job.chat_logprobs = std.mem.eql(u8, shape, "chat");
            if (!job.chat_logprobs and !std.mem.eql(u8, shape, "legacy"))
                return request.problem.fail("logprobs_format", "'logprobs_format' must be legacy or chat, not '{}'", .{fields.echo(shape)});
        }
        const n = (try request.integer("logprobs", 0, max_top_logprobs)) orelse return;
        try job.metadata.put("logprobs", .{ .integer = n });
        job.logprobs = true;
        return;
    }
    const top = try request.integer("top_logprobs", 0, max_top_logprobs);
    if (!((try request.boolean("logprobs")) orelse false)) {
        if (top orelse 0 > 0) return request.problem.fail("top_logprobs", "'top_logprobs' needs 'logprobs': true", .{});
        return;
    }
    try job.metadata.put("logprobs", .{ .integer = top orelse 0 });
    job.logprobs = true;
}

/// llama-server's other samplers: top-n-sigma, XTC, Mirostat, DRY (llama-host's metadata keys
/// are their names with `-`). Unbounded values that llama.cpp would take are bounded here.
fn moreSamplers(request: Object, md: *std.json.ObjectMap) fields.Invalid!void {
    const numbers = [_]struct { []const u8, []const u8, f64, f64 }{
        .{ "top_n_sigma", "top-n-sigma", -1e6, 1e6 },
        .{ "dynatemp_range", "dynatemp-range", 0, 1e6 },
        .{ "dynatemp_exponent", "dynatemp-exponent", 0, 1e6 },
        .{ "xtc_probability", "xtc-probability", 0, 1 },
        .{ "xtc_threshold", "xtc-threshold", 0, 1 },
        .{ "mirostat_tau", "mirostat-tau", 0, 1e6 },
        .{ "mirostat_eta", "mirostat-eta", 0, 1e6 },
        .{ "dry_multiplier", "dry-multiplier", 0, 1e6 },
        .{ "dry_base", "dry-base", 0, 1e6 },
    };
    inline for (numbers) |n| if (try request.number(n[0], n[2], n[3])) |x| try md.put(n[1], .{ .float = x });
    const integers = [_]struct { []const u8, []const u8, i64, i64 }{
        .{ "mirostat", "mirostat", 0, 2 },
        .{ "dry_allowed_length", "dry-allowed-length", 0, std.math.maxInt(i32) },
        .{ "dry_penalty_last_n", "dry-penalty-last-n", -1, std.math.maxInt(i32) },
    };
    inline for (integers) |n| if (try request.integer(n[0], n[2], n[3])) |x| try md.put(n[1], .{ .integer = x });
    const breakers = (try request.array("dry_sequence_breakers")) orelse return;
    if (breakers.len > max_breakers) return request.problem.fail("dry_sequence_breakers", "'dry_sequence_breakers' has {d} strings; at most {d}", .{ breakers.len, max_breakers });
    for (breakers) |b| if (b != .string or b.string.len > max_breaker_bytes)
        return request.problem.fail("dry_sequence_breakers", "'dry_sequence_breakers' must be a list of strings of at most {d} bytes", .{max_breaker_bytes});
    try md.put("dry-sequence-breakers", .{ .array = .{ .items = breakers, .capacity = breakers.len, .allocator = md.allocator } });
}

/// DRY's sequence breakers: each costs llama.cpp a pass over the vocabulary when a request starts.
const max_breakers = 32;
const max_breaker_bytes = 256;

fn stopStrings(request: Object, md: *std.json.ObjectMap) fields.Invalid!void {
    const v = request.get("stop") orelse return;
    switch (v) {
        .string => |s| {
            var list = std.json.Array.init(md.allocator);
            if (s.len > 0) try list.append(v);
            try md.put("stop", .{ .array = list });
        },
        .array => |a| {
            if (a.items.len > 16) return request.problem.fail("stop", "'stop' has {d} strings; at most 16", .{a.items.len});
            var list = std.json.Array.init(md.allocator);
            for (a.items) |item| {
                if (item != .string) return request.problem.fail("stop", "'stop' must be a string or a list of strings, and it holds {s}", .{fields.typeName(item)});
                if (item.string.len > 0) try list.append(item);
            }
            try md.put("stop", .{ .array = list });
        },
        else => return request.problem.fail("stop", "'stop' must be a string or a list of strings, not {s}", .{fields.typeName(v)}),
    }
}

fn logitBias(gpa: Allocator, request: Object, md: *std.json.ObjectMap) fields.Invalid!void {
    const bias = (try request.object("logit_bias")) orelse return;
    var out = std.json.ObjectMap.init(gpa);
    var it = bias.map.iterator();
    while (it.next()) |e| {
        // (at most 10 digits: the key is also the param of an error about its value)
        const key = e.key_ptr.*;
        _ = (if (key.len <= 10) std.fmt.parseInt(u31, key, 10) catch null else null) orelse
            return request.problem.fail("logit_bias", "'logit_bias' keys must be token ids, got '{}'", .{fields.echo(key)});
        const x = (try bias.number(e.key_ptr.*, -100, 100)).?;
        try out.put(e.key_ptr.*, .{ .float = x });
    }
    try md.put("logit-bias", .{ .object = out });
}

/// A JSON schema for the host to turn into a grammar; `param` names its field in errors.
fn putSchema(gpa: Allocator, job: *Job, param: []const u8, schema: std.json.ObjectMap) error{OutOfMemory}!void {
    const text = try std.json.stringifyAlloc(gpa, Value{ .object = schema }, .{});
    try putSchemaText(job, param, text);
}

fn putSchemaText(job: *Job, param: []const u8, text: []const u8) error{OutOfMemory}!void {
    try job.metadata.put("json-schema", .{ .string = text });
    if (job.metadata.get("grammar") == null) job.grammar_param = param; // (else the host uses the grammar)
}

fn responseFormat(gpa: Allocator, request: Object, job: *Job) fields.Invalid!void {
    const format = (try request.object("response_format")) orelse return;
    const kind = (try format.string("type")) orelse return request.problem.fail("response_format.type", "'response_format.type' is required", .{});
    if (std.mem.eql(u8, kind, "text")) return;
    if (std.mem.eql(u8, kind, "json_object")) {
        // llama-server's extension: a `schema` beside the type constrains the object further.
        const schema = try format.object("schema");
        if (schema) |s| return putSchema(gpa, job, "response_format.schema", s.map);
        return putSchemaText(job, "response_format", "{\"type\": \"object\"}");
    }
    if (std.mem.eql(u8, kind, "json_schema")) {
        const spec = (try format.object("json_schema")) orelse
            return request.problem.fail("response_format.json_schema", "'response_format.json_schema' is required for type json_schema", .{});
        const schema = (try spec.object("schema")) orelse
            return request.problem.fail("response_format.json_schema.schema", "'response_format.json_schema.schema' is required", .{});
        return putSchema(gpa, job, "response_format.json_schema.schema", schema.map);
    }
    return request.problem.fail("response_format.type", "'response_format.type' must be text, json_object or json_schema, not '{}'", .{fields.echo(kind)});
}

/// The prompts of a completions request: a string, a list of strings, a list of token ids, or
/// a list of lists of token ids (OpenAI's four forms); each gets `n` choices.
fn completionPrompts(gpa: Allocator, request: Object, job: *Job) fields.Invalid![]const Prompt {
    const v = request.get("prompt") orelse return request.problem.fail("prompt", "'prompt' is required", .{});
    job.echo = (try request.boolean("echo")) orelse false;
    if (job.echo and job.logprobs) try job.metadata.put("prompt-logprobs", .{ .bool = true });
    _ = try request.string("suffix");
    const prompts: []Prompt = switch (v) {
        .string => |text| try gpa.dupe(Prompt, &.{.{ .text = text }}),
        .array => |a| blk: {
            if (a.items.len == 0) return request.problem.fail("prompt", "'prompt' must not be an empty list", .{});
            if (a.items[0] == .integer) break :blk try gpa.dupe(Prompt, &.{.{ .tokens = try tokenIds(gpa, request.problem, a.items, "prompt") }});
            if (a.items.len > max_choices) return request.problem.fail("prompt", "'prompt' has {d} prompts; at most {d}", .{ a.items.len, max_choices });
            const list = try gpa.alloc(Prompt, a.items.len);
            for (a.items, list, 0..) |item, *out, i| out.* = switch (item) {
                .string => |text| .{ .text = text },
                .array => |ids| .{ .tokens = try tokenIds(gpa, request.problem, ids.items, try std.fmt.allocPrint(gpa, "prompt[{d}]", .{i})) },
                else => return request.problem.fail("prompt", "'prompt[{d}]' must be a string or a list of token ids, not {s}", .{ i, fields.typeName(item) }),
            };
            break :blk list;
        },
        else => return request.problem.fail("prompt", "'prompt' must be a string, a list of strings or token ids, not {s}", .{fields.typeName(v)}),
    };
    for (prompts) |p| if (p == .tokens and job.echo)
        return request.problem.fail("echo", "'echo' needs text prompts: a token-id prompt has no text to echo", .{});
    return prompts;
}

/// A non-empty list of token ids; the host checks them against the vocabulary. Errors name
/// `param` (the requests's field, as "prompt" or "input[2]") and report under its top-level name.
pub fn tokenIds(gpa: Allocator, problem: *fields.Problem, items: []const Value, param: []const u8) fields.Invalid![]const i32 {
    const field = param[0 .. std.mem.indexOfScalar(u8, param, '[') orelse param.len];
    if (items.len == 0) return problem.fail(field, "'{s}' must hold at least one token id", .{param});
    const ids = try gpa.alloc(i32, items.len);
    for (items, ids, 0..) |item, *id, i| {
        if (item != .integer or item.integer < 0 or item.integer > std.math.maxInt(i32))
            return problem.fail(field, "'{s}[{d}]' must be a token id (an integer from 0), not {s}", .{ param, i, if (item == .integer) "a negative or huge integer" else fields.typeName(item) });
        id.* = @intCast(item.integer);
    }
    return ids;
}

// --- host failures ------------------------------------------------------------------------

/// Turns a failed WASI-NN call into the OpenAI error, with the host's message (last_error).
/// `prompt_param` names the request field holding the prompt.
pub fn hostFailure(gpa: Allocator, err: anyerror, prompt_param: ?[]const u8, failure: *Failure) Error {
    return hostFailureFor(gpa, err, prompt_param, null, failure);
}

fn jobFailure(gpa: Allocator, err: anyerror, job: *const Job, api: Api, failure: *Failure) Error {
    return hostFailureFor(gpa, err, if (api == .chat) "messages" else "prompt", job.grammar_param, failure);
}

fn hostFailureFor(gpa: Allocator, err: anyerror, prompt_param: ?[]const u8, grammar_param: ?[]const u8, failure: *Failure) Error {
    if (err == error.OutOfMemory) return error.OutOfMemory;
    var buf: [1024]u8 = undefined;
    const said = gpa.dupe(u8, abi.lastError(&buf)) catch "";
    failure.* = switch (err) {
        error.PromptTooLong => .{ .kind = .context_length, .message = said, .param = prompt_param },
        error.Busy => .{ .kind = .queue_full, .message = said },
        error.InvalidArgument => if (grammar_param) |param|
            .{ .kind = .invalid_grammar, .message = said, .param = param }
        else
            .{ .kind = .invalid_request, .message = said, .param = prompt_param },
        else => .{ .kind = .internal, .message = if (said.len > 0) said else @errorName(err) },
    };
    return error.Failed;
}

pub fn internal(gpa: Allocator, message: []const u8, failure: *Failure) Error {
    _ = gpa;
    failure.* = .{ .kind = .internal, .message = message };
    return error.Failed;
}

// --- answers ------------------------------------------------------------------------------

const Usage = struct {
    prompt_tokens: i64 = 0,
    completion_tokens: i64 = 0,
    cached_tokens: i64 = 0,
    finish_reason: []const u8 = "stop",
    stop_word: ?[]const u8 = null, // the stop string that ended the text
    timings: ?Value = null, // llama-server's, from the host (milliseconds, tokens)
    id_slot: i64 = -1, // the sequence that ran it

    fn read(gpa: Allocator, ctx: abi.Context) error{OutOfMemory}!Usage {
        const bytes = ctx.output(gpa, .metadata) catch return .{};
        return parse(gpa, bytes);
    }

    /// (`buf` is on the stack: parse copies what it keeps, alloc_always)
    fn readSingle(gpa: Allocator, ctx: abi.Context) error{OutOfMemory}!Usage {
        var buf: [512]u8 = undefined;
        const bytes = ctx.outputSingle(gpa, .metadata, &buf) catch return .{};
        return parse(gpa, bytes);
    }

    fn parse(gpa: Allocator, bytes: []const u8) error{OutOfMemory}!Usage {
        const Meta = struct {
            input_tokens: i64 = 0,
            output_tokens: i64 = 0,
            cached_tokens: i64 = 0,
            finish_reason: ?[]const u8 = null,
            context_full: bool = false,
            stop_word: ?[]const u8 = null,
            timings: ?Value = null,
            id_slot: i64 = -1,
        };
        const m = std.json.parseFromSliceLeaky(Meta, gpa, bytes, .{ .ignore_unknown_fields = true, .allocate = .alloc_always }) catch |err| switch (err) {
            error.OutOfMemory => return error.OutOfMemory,
            else => return .{},
        };
        const length = m.context_full or (m.finish_reason != null and std.mem.eql(u8, m.finish_reason.?, "length"));
        return .{
            .prompt_tokens = m.input_tokens,
            .completion_tokens = m.output_tokens,
            .cached_tokens = m.cached_tokens,
            .finish_reason = if (length) "length" else "stop",
            .stop_word = if (length) null else m.stop_word,
            .timings = m.timings,
            .id_slot = m.id_slot,
        };
    }

    /// A request's: each prompt counted once, every choice's completion.
    fn total(choices: []const Choice) Usage {
        var sum = Usage{};
        for (choices) |c| {
            if (c.first_of_prompt) {
                sum.prompt_tokens += c.usage.prompt_tokens;
                sum.cached_tokens += c.usage.cached_tokens;
            }
            sum.completion_tokens += c.usage.completion_tokens;
        }
        return sum;
    }

    pub fn jsonStringify(self: Usage, jws: anytype) !void {
        try jws.write(.{
            .prompt_tokens = self.prompt_tokens,
            .completion_tokens = self.completion_tokens,
            .total_tokens = self.prompt_tokens + self.completion_tokens,
            .prompt_tokens_details = .{ .cached_tokens = self.cached_tokens },
        });
    }
};

/// Formats one request's answer: ids, `created`, the model, and the choice shapes of its API.
const Answer = struct {
    gpa: Allocator,
    api: Api,
    id: []const u8,
    created: i64,
    model: []const u8,
    fingerprint: []const u8,
    include_usage: bool,
    continuous_usage: bool,
    logprobs: bool,
    chat_logprobs: bool, // completions: log-probabilities in chat's shape
    token_ids: bool, // choices carry `token_ids`
    id_slot: bool, // the answer carries `id_slot`
    format: toolcall.Format, // for call ids

    fn init(gpa: Allocator, api: Api, cfg: config.Config, job: Job) Answer {
        return .{
            .gpa = gpa,
            .api = api,
            .id = newId(gpa, if (api == .chat) "chatcmpl-" else "cmpl-"),
            .created = std.time.timestamp(),
            .model = job.model_id,
            .fingerprint = cfg.system_fingerprint,
            .include_usage = job.include_usage,
            .continuous_usage = job.continuous_usage,
            .logprobs = job.logprobs,
            .chat_logprobs = job.chat_logprobs,
            .token_ids = job.token_ids,
            .id_slot = job.id_slot != null,
            .format = job.format,
        };
    }

    /// The log-probabilities of a chunk's tokens, in its API's shape; `offset` as Legacy.append.
    fn chunkLogprobs(self: Answer, entries: []const Value, offset: *usize) error{OutOfMemory}!Value {
        if (self.api == .chat or self.chat_logprobs) return logprobs.chat(self.gpa, entries);
        var shape = logprobs.Legacy.init(self.gpa);
        try shape.append(entries, offset);
        return shape.value();
    }

    /// A whole choice's log-probabilities (null when not asked for).
    fn choiceLogprobs(self: Answer, c: *const Choice) error{OutOfMemory}!?Value {
        if (!self.logprobs) return null;
        if (self.api == .chat) return try logprobs.chat(self.gpa, c.entries.items);
        if (self.chat_logprobs) return try logprobs.chat(self.gpa, try std.mem.concat(self.gpa, Value, &.{ c.prompt_entries, c.entries.items }));
        var shape = logprobs.Legacy.init(self.gpa);
        var offset: usize = 0;
        if (c.echo != null) try shape.append(c.prompt_entries, &offset);
        offset = c.prompt_chars;
        try shape.append(c.entries.items, &offset);
        return try shape.value();
    }

    const ChatChoice = struct {
        index: usize,
        message: Message,
        logprobs: ?Value,
        finish_reason: []const u8,
    };

    /// An assistant message: `content` null when there are only calls, `reasoning_content`
    /// and `tool_calls` when there are any.
    const Message = struct {
        content: []const u8,
        reasoning: []const u8,
        calls: []const ToolCall,

        pub fn jsonStringify(self: Message, jws: anytype) !void {
            try jws.beginObject();
            try jws.objectField("role");
            try jws.write("assistant");
            try jws.objectField("content");
            if (self.content.len == 0 and self.calls.len > 0) try jws.write(null) else try jws.write(self.content);
            if (self.reasoning.len > 0) {
                try jws.objectField("reasoning_content");
                try jws.write(self.reasoning);
            }
            if (self.calls.len > 0) {
                try jws.objectField("tool_calls");
                try jws.write(self.calls);
            }
            try jws.endObject();
        }
    };

    /// A call in a message, or (`index` set) in a stream: first with its id and name and empty
    /// arguments, then (`id` null) with its arguments.
    const ToolCall = struct {
        index: ?usize = null,
        id: ?[]const u8,
        name: []const u8,
        arguments: []const u8,

        pub fn jsonStringify(self: ToolCall, jws: anytype) !void {
            try jws.beginObject();
            if (self.index) |i| {
                try jws.objectField("index");
                try jws.write(i);
            }
            if (self.id) |id| {
                try jws.objectField("id");
                try jws.write(id);
                try jws.objectField("type");
                try jws.write("function");
            }
            try jws.objectField("function");
            try jws.beginObject();
            if (self.id != null) {
                try jws.objectField("name");
                try jws.write(self.name);
            }
            try jws.objectField("arguments");
            try jws.write(self.arguments);
            try jws.endObject();
            try jws.endObject();
        }
    };

    fn message(self: Answer, c: *const Choice) error{OutOfMemory}!Message {
        const calls = try self.gpa.alloc(ToolCall, c.calls.items.len);
        for (c.calls.items, calls) |call, *out|
            out.* = .{ .id = try toolcall.newId(self.gpa, self.format), .name = call.name, .arguments = call.arguments };
        return .{ .content = c.text.items, .reasoning = c.reasoning.items, .calls = calls };
    }

    /// A streamed chat step: content and reasoning as they come, a call in two chunks.
    fn delta(self: Answer, c: *Choice, d: toolcall.Delta, lp: ?Value) reply.EmitError!void {
        if (d.content.len > 0 or d.reasoning.len > 0 or lp != null) {
            try self.event("chat.completion.chunk", .{ended(.{
                .index = c.index,
                .delta = Delta{ .content = if (d.content.len > 0 or d.reasoning.len == 0) d.content else null, .reasoning = d.reasoning },
                .logprobs = lp,
                .finish_reason = null,
            }, .{ .token_ids = try self.takeIds(c) })}, self.liveUsage(c), .{});
        }
        for (d.calls, 0..) |call, k| {
            const index = c.calls.items.len + k;
            const id = try toolcall.newId(self.gpa, self.format);
            for ([_]ToolCall{
                .{ .index = index, .id = id, .name = call.name, .arguments = "" },
                .{ .index = index, .id = null, .name = call.name, .arguments = call.arguments },
            }) |part| try self.event("chat.completion.chunk", .{.{
                .index = c.index,
                .delta = Delta{ .content = null, .tool_calls = &.{part} },
                .logprobs = null,
                .finish_reason = null,
            }}, null, .{});
        }
    }
    const TextChoice = struct { text: []const u8, index: usize, logprobs: ?Value, finish_reason: []const u8 };

    /// An OpenAI object with fields more, each written only when it has a value.
    fn With(comptime T: type, comptime Extra: type) type {
        return struct {
            base: T,
            extra: Extra,

            pub fn jsonStringify(self: @This(), jws: anytype) !void {
                try jws.beginObject();
                inline for (std.meta.fields(T)) |f| {
                    try jws.objectField(f.name);
                    try jws.write(@field(self.base, f.name));
                }
                inline for (std.meta.fields(Extra)) |f| if (@field(self.extra, f.name)) |value| {
                    try jws.objectField(f.name);
                    try jws.write(value);
                };
                try jws.endObject();
            }
        };
    }

    /// A choice's `stop_word` (the stop string that ended its text, llama-server's
    /// `stopping_word`) and `token_ids` (vLLM's: with return_token_ids, those of this choice or chunk).
    const ChoiceExtra = struct { stop_word: ?[]const u8 = null, token_ids: ?[]const i64 = null };
    /// An answer's `timings` and `id_slot` (llama-server's; the latter when the request names one).
    const AnswerExtra = struct { timings: ?Value = null, id_slot: ?i64 = null };

    fn ended(choice: anytype, extra: ChoiceExtra) With(@TypeOf(choice), ChoiceExtra) {
        return .{ .base = choice, .extra = extra };
    }

    fn timed(answer: anytype, extra: AnswerExtra) With(@TypeOf(answer), AnswerExtra) {
        return .{ .base = answer, .extra = extra };
    }

    /// The answer's extras from a choice's usage.
    fn answerExtra(self: Answer, usage: Usage) AnswerExtra {
        return .{ .timings = usage.timings, .id_slot = if (self.id_slot) usage.id_slot else null };
    }

    /// A streamed choice's token ids not yet sent (null without return_token_ids); the choice
    /// forgets them, so the caller must send them.
    fn takeIds(self: Answer, c: *Choice) error{OutOfMemory}!?[]const i64 {
        if (!self.token_ids) return null;
        const ids = try self.gpa.dupe(i64, c.token_ids.items);
        c.token_ids.clearRetainingCapacity();
        return ids;
    }

    fn whole(self: Answer, choices: []const Choice) reply.EmitError!void {
        const usage = Usage.total(choices);
        switch (self.api) {
            .chat => {
                const out = try self.gpa.alloc(With(ChatChoice, ChoiceExtra), choices.len);
                for (choices, out) |*c, *o| o.* = ended(ChatChoice{
                    .index = c.index,
                    .message = try self.message(c),
                    .logprobs = try self.choiceLogprobs(c),
                    .finish_reason = c.finishReason(),
                }, self.choiceExtra(c));
                try reply.json(self.gpa, .body, timed(.{ .id = self.id, .object = "chat.completion", .created = self.created, .model = self.model, .system_fingerprint = self.fingerprint, .choices = out, .usage = usage }, self.answerExtra(choices[0].usage)));
            },
            .completion => {
                const out = try self.gpa.alloc(With(TextChoice, ChoiceExtra), choices.len);
                for (choices, out) |*c, *o| o.* = ended(TextChoice{
                    .text = if (c.echo) |p| try std.mem.concat(self.gpa, u8, &.{ p, c.text.items }) else c.text.items,
                    .index = c.index,
                    .logprobs = try self.choiceLogprobs(c),
                    .finish_reason = c.usage.finish_reason,
                }, self.choiceExtra(c));
                try reply.json(self.gpa, .body, timed(.{ .id = self.id, .object = "text_completion", .created = self.created, .model = self.model, .system_fingerprint = self.fingerprint, .choices = out, .usage = usage }, self.answerExtra(choices[0].usage)));
            },
            .template => unreachable, // answered with its prompt before any generation
        }
    }

    /// With continuous_usage_stats, the choice's usage so far for each of its chunks.
    fn liveUsage(self: Answer, c: *const Choice) ?Usage {
        return if (self.continuous_usage) c.usage else null;
    }

    /// A whole choice's extras.
    fn choiceExtra(self: Answer, c: *const Choice) ChoiceExtra {
        return .{ .stop_word = c.stopWord(), .token_ids = if (self.token_ids) c.token_ids.items else null };
    }

    /// The end of a streamed choice: its finish_reason, stop word and usage (timings, slot).
    const End = struct { reason: []const u8, stop_word: ?[]const u8 = null, usage: Usage };

    /// A chat delta chunk (`role` only in the first), a completion text chunk, or (`end`) a
    /// choice's last chunk, which carries llama-server's `timings` as its last chunk does.
    fn chunk(self: Answer, c: *Choice, text: []const u8, first: bool, end: ?End, lp: ?Value) reply.EmitError!void {
        const usage = self.liveUsage(c);
        const extra = ChoiceExtra{ .stop_word = if (end) |e| e.stop_word else null, .token_ids = try self.takeIds(c) };
        const answer_extra = if (end) |e| self.answerExtra(e.usage) else AnswerExtra{};
        switch (self.api) {
            .chat => if (end) |e|
                try self.event("chat.completion.chunk", .{ended(.{ .index = c.index, .delta = Empty{}, .logprobs = @as(?Value, null), .finish_reason = e.reason }, extra)}, usage, answer_extra)
            else
                try self.event("chat.completion.chunk", .{ended(.{
                    .index = c.index,
                    .delta = Delta{ .role = if (first) "assistant" else null, .content = text },
                    .logprobs = lp,
                    .finish_reason = null,
                }, extra)}, usage, .{}),
            .completion => try self.event("text_completion", .{ended(.{
                .text = text,
                .index = c.index,
                .logprobs = lp,
                .finish_reason = if (end) |e| e.reason else null,
            }, extra)}, usage, answer_extra),
            .template => unreachable,
        }
    }

    fn usageChunk(self: Answer, usage: Usage) reply.EmitError!void {
        try self.event(if (self.api == .chat) "chat.completion.chunk" else "text_completion", &[_]Empty{}, usage, .{});
    }

    fn event(self: Answer, object: []const u8, choices: anytype, usage: ?Usage, extra: AnswerExtra) reply.EmitError!void {
        if (self.include_usage) {
            try reply.json(self.gpa, .event, timed(.{ .id = self.id, .object = object, .created = self.created, .model = self.model, .system_fingerprint = self.fingerprint, .choices = choices, .usage = usage }, extra));
        } else {
            try reply.json(self.gpa, .event, timed(.{ .id = self.id, .object = object, .created = self.created, .model = self.model, .system_fingerprint = self.fingerprint, .choices = choices }, extra));
        }
    }

    const Delta = struct {
        role: ?[]const u8 = null,
        content: ?[]const u8,
        reasoning: []const u8 = "",
        tool_calls: []const ToolCall = &.{},

        pub fn jsonStringify(self: Delta, jws: anytype) !void {
            try jws.beginObject();
            if (self.role) |role| {
                try jws.objectField("role");
                try jws.write(role);
            }
            if (self.content) |content| {
                try jws.objectField("content");
                try jws.write(content);
            }
            if (self.reasoning.len > 0) {
                try jws.objectField("reasoning_content");
                try jws.write(self.reasoning);
            }
            if (self.tool_calls.len > 0) {
                try jws.objectField("tool_calls");
                try jws.write(self.tool_calls);
            }
            try jws.endObject();
        }
    };
    const Empty = struct {};
};

/// "chatcmpl-" followed by 24 random letters and digits (WASI random_get).
fn newId(gpa: Allocator, prefix: []const u8) []const u8 {
    const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    var random: [24]u8 = undefined;
    std.crypto.random.bytes(&random);
    const id = gpa.alloc(u8, prefix.len + random.len) catch return prefix;
    @memcpy(id[0..prefix.len], prefix);
    for (random, id[prefix.len..]) |r, *c| c.* = alphabet[r % alphabet.len];
    return id;
}
