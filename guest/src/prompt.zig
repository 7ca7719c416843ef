//! The prompt of a chat request: its messages, normalised, rendered with the model's template.
const std = @import("std");
const abi = @import("abi.zig");
const config = @import("config.zig");
const fields = @import("fields.zig");
const jinja = @import("jinja.zig");
const toolcall = @import("toolcall.zig");

const Value = std.json.Value;
const Allocator = std.mem.Allocator;

/// What the host says about a model (llama_host_v1.model_info), the fields templates need.
pub const ModelInfo = struct {
    name: []const u8 = "",
    chat_template: ?[]const u8 = null,
    chat_template_tool_use: ?[]const u8 = null, // the GGUF's variant for requests with tools
    bos_token: ?[]const u8 = null,
    eos_token: ?[]const u8 = null,
    n_ctx: i64 = 0,
    n_parallel: i64 = 0, // sequences decoded at once (0: unknown)

    pub fn read(gpa: Allocator, graph: abi.Graph) error{OutOfMemory}!ModelInfo {
        const bytes = graph.info(gpa) catch |err| switch (err) {
            error.OutOfMemory => return error.OutOfMemory,
            else => return .{},
        };
        return std.json.parseFromSliceLeaky(ModelInfo, gpa, bytes, .{ .ignore_unknown_fields = true, .allocate = .alloc_always }) catch |err| switch (err) {
            error.OutOfMemory => return error.OutOfMemory,
            else => .{},
        };
    }
};

const roles = [_][]const u8{ "system", "user", "assistant", "tool", "developer" };

pub const RenderError = error{ Invalid, Template, OutOfMemory };

/// A chat request's prompt, and what its template says about the model's output.
pub const Rendered = struct {
    text: []const u8,
    format: toolcall.Format, // how the template writes tool calls
    in_reasoning: bool, // the prompt ends inside a think block the template opened
};

/// Validates `messages` and renders the model's template with them and the request's (already
/// validated) tools. On error.Invalid or error.Template, `problem` says why.
pub fn renderChat(gpa: Allocator, model: *const config.Model, info: ModelInfo, request: fields.Object, tools: toolcall.Request, problem: *fields.Problem) RenderError!Rendered {
    const messages = (try request.array("messages")) orelse return problem.fail("messages", "'messages' is required", .{});
    if (messages.len == 0) return problem.fail("messages", "'messages' must hold at least one message", .{});
    var normalized = std.json.Array.init(gpa);
    for (messages, 0..) |m, i| try normalized.append(try normalize(gpa, m, i, problem));
    const source = try templateSource(gpa, model, info, tools.active(), problem);
    const format = toolcall.Format.detect(source);
    if (tools.active() and format == .generic) try describeTools(gpa, &normalized, tools);

    // Prefill (vLLM's `continue_final_message`, llama-server's assistant prefill): a final
    // assistant message with text is continued rather than closed, unless the request asks for
    // a new turn (`add_generation_prompt: true` or `continue_final_message: false`).
    const continue_field = try request.boolean("continue_final_message");
    const generation_field = try request.boolean("add_generation_prompt");
    const final_text = assistantText(normalized.items[normalized.items.len - 1]);
    if (continue_field == true) {
        if (generation_field == true)
            return problem.fail("add_generation_prompt", "'add_generation_prompt' cannot be true with 'continue_final_message': a turn is either continued or a new one begun", .{});
        if (final_text == null)
            return problem.fail("continue_final_message", "'continue_final_message' needs the last message to be an assistant message with text to continue", .{});
    }
    const continued = if (continue_field orelse (generation_field != true)) final_text else null;

    var context = std.json.ObjectMap.init(gpa);
    try context.put("messages", .{ .array = normalized });
    try context.put("add_generation_prompt", .{ .bool = continued == null and (generation_field orelse true) });
    try context.put("bos_token", .{ .string = info.bos_token orelse "" });
    try context.put("eos_token", .{ .string = info.eos_token orelse "" });
    // As transformers and llama-server pass them: `tools` unless tool_choice is none, thinking
    // on unless turned off (`reasoning_effort: "none"`, or chat_template_kwargs), and every
    // chat_template_kwargs key.
    if (tools.active()) if (try request.array("tools")) |list| {
        try context.put("tools", .{ .array = .{ .items = list, .capacity = list.len, .allocator = gpa } });
    };
    const effort = try request.string("reasoning_effort");
    if (effort) |e| {
        for ([_][]const u8{ "none", "minimal", "low", "medium", "high" }) |known| {
            if (std.mem.eql(u8, e, known)) break;
        } else return problem.fail("reasoning_effort", "'reasoning_effort' must be none, minimal, low, medium or high, not '{}'", .{fields.echo(e)});
        if (!std.mem.eql(u8, e, "none")) try context.put("reasoning_effort", .{ .string = e });
    }
    try context.put("enable_thinking", .{ .bool = !(effort != null and std.mem.eql(u8, effort.?, "none")) });
    if (try request.object("chat_template_kwargs")) |kwargs| {
        var it = kwargs.map.iterator();
        while (it.next()) |e| {
            if (std.mem.eql(u8, e.key_ptr.*, "messages"))
                return problem.fail("chat_template_kwargs.messages", "'chat_template_kwargs' cannot replace 'messages'", .{});
            try context.put(e.key_ptr.*, e.value_ptr.*);
        }
    }

    var diag = jinja.Diagnostic{};
    const rendered = jinja.render(gpa, source, .{ .object = context }, .{ .now = std.time.timestamp() }, &diag) catch {
        const prefix = "the chat template failed: ";
        // after running out of memory, the message must not need any
        problem.message = if (diag.message.ptr == jinja.out_of_memory_message.ptr)
            prefix ++ jinja.out_of_memory_message
        else
            std.fmt.allocPrint(gpa, prefix ++ "{s}", .{diag.message}) catch diag.message;
        return error.Template;
    };
    const text = if (continued) |t| try cutAfter(rendered, t, problem) else rendered;
    const tail = std.mem.trimRight(u8, text, " \t\r\n");
    return .{ .text = text, .format = format, .in_reasoning = std.mem.endsWith(u8, tail, "<think>") };
}

/// A template with no tool format learns of the tools from the system message (llama.cpp's
/// generic format does the same): the instructions join the first system message, or come first.
fn describeTools(gpa: Allocator, messages: *std.json.Array, tools: toolcall.Request) error{OutOfMemory}!void {
    const text = try toolcall.genericInstructions(gpa, tools);
    if (messages.items.len > 0) {
        const first = &messages.items[0].object;
        const content = first.get("content") orelse Value.null;
        if (std.mem.eql(u8, first.get("role").?.string, "system") and content == .string) {
            try first.put("content", .{ .string = try std.mem.concat(gpa, u8, &.{ content.string, "\n\n", text }) });
            return;
        }
    }
    var system = std.json.ObjectMap.init(gpa);
    try system.put("role", .{ .string = "system" });
    try system.put("content", .{ .string = text });
    try messages.insert(0, .{ .object = system });
}

const whitespace = " \t\n\r\x0b\x0c";

/// The content of a final assistant message that can be continued: a string, not blank.
fn assistantText(message: Value) ?[]const u8 {
    const role = message.object.get("role").?; // normalize checked it
    const content = message.object.get("content") orelse return null;
    if (!std.mem.eql(u8, role.string, "assistant") or content != .string) return null;
    return if (std.mem.trim(u8, content.string, whitespace).len > 0) content.string else null;
}

/// The rendering cut right after the last occurrence of the final message's `content`, so the
/// end-of-turn markup after it goes. As transformers' continue_final_message (vLLM's): the
/// content is looked for with its outer whitespace trimmed, since templates often trim it, and
/// its trailing whitespace is kept where the template kept it.
fn cutAfter(rendered: []const u8, content: []const u8, problem: *fields.Problem) fields.Invalid![]const u8 {
    const core = std.mem.trim(u8, content, whitespace);
    const at = std.mem.lastIndexOf(u8, rendered, core) orelse return problem.fail("messages", "the chat template does not render the final assistant message's content verbatim, so it cannot be continued; set 'continue_final_message': false to begin a new turn after it", .{});
    const full = std.mem.trimLeft(u8, content, whitespace);
    return rendered[0 .. at + if (std.mem.startsWith(u8, rendered[at..], full)) full.len else core.len];
}

/// One message as templates expect it: `content` a string (text parts joined by newlines),
/// roles checked.
fn normalize(gpa: Allocator, message: Value, index: usize, problem: *fields.Problem) RenderError!Value {
    const path = try std.fmt.allocPrint(gpa, "messages[{d}]", .{index});
    if (message != .object) return problem.fail(path, "'{s}' must be an object, not {s}", .{ path, fields.typeName(message) });
    const m = fields.Object{ .map = message.object, .path = path, .problem = problem };
    const role = (try m.string("role")) orelse return problem.fail(try m.param("role"), "'{s}.role' is required", .{path});
    for (roles) |r| {
        if (std.mem.eql(u8, r, role)) break;
    } else return problem.fail(try m.param("role"), "'{s}.role' must be one of system, user, assistant, tool, developer; got '{}'", .{ path, fields.echo(role) });
    _ = try m.string("name");
    const has_tool_calls = (try m.array("tool_calls")) != null;

    var out = try message.object.clone();
    if (std.mem.eql(u8, role, "developer")) try out.put("role", .{ .string = "system" }); // OpenAI's newer name
    if (has_tool_calls) try out.put("tool_calls", try decodeArguments(gpa, m, path, problem));
    if (std.mem.eql(u8, role, "tool")) _ = try m.string("tool_call_id");
    const content = m.get("content") orelse {
        if (std.mem.eql(u8, role, "assistant") and has_tool_calls) {
            try out.put("content", .null);
            return .{ .object = out };
        }
        return problem.fail(try m.param("content"), "'{s}.content' is required", .{path});
    };
    switch (content) {
        .string => {},
        .array => |parts| {
            var text = std.ArrayList(u8).init(gpa);
            for (parts.items, 0..) |part, j| {
                const ppath = try std.fmt.allocPrint(gpa, "{s}.content[{d}]", .{ path, j });
                if (part != .object) return problem.fail(ppath, "'{s}' must be a content part object", .{ppath});
                const p = fields.Object{ .map = part.object, .path = ppath, .problem = problem };
                const kind = (try p.string("type")) orelse return problem.fail(try p.param("type"), "'{s}.type' is required", .{ppath});
                if (!std.mem.eql(u8, kind, "text"))
                    return problem.fail(try p.param("type"), "'{s}.type' is '{}'; only text parts are supported", .{ ppath, fields.echo(kind) });
                const t = (try p.string("text")) orelse return problem.fail(try p.param("text"), "'{s}.text' is required", .{ppath});
                if (j > 0) try text.append('\n'); // as llama-server joins text parts
                try text.appendSlice(t);
            }
            try out.put("content", .{ .string = text.items });
        },
        else => return problem.fail(try m.param("content"), "'{s}.content' must be a string or an array of text parts, not {s}", .{ path, fields.typeName(content) }),
    }
    return .{ .object = out };
}

/// An assistant message's `tool_calls` as templates want them: OpenAI sends each call's
/// `arguments` as a JSON string; templates (and llama-server) use the object. A string that is
/// not a JSON object stays a string.
fn decodeArguments(gpa: Allocator, m: fields.Object, path: []const u8, problem: *fields.Problem) RenderError!Value {
    const calls = (try m.array("tool_calls")).?;
    var out = std.json.Array.init(gpa);
    for (calls, 0..) |call, i| {
        const cpath = try std.fmt.allocPrint(gpa, "{s}.tool_calls[{d}]", .{ path, i });
        if (call != .object) return problem.fail(cpath, "'{s}' must be an object, not {s}", .{ cpath, fields.typeName(call) });
        const c = fields.Object{ .map = call.object, .path = cpath, .problem = problem };
        _ = try c.string("id");
        const function = (try c.object("function")) orelse return problem.fail(try c.param("function"), "'{s}.function' is required", .{cpath});
        _ = (try function.string("name")) orelse return problem.fail(try function.param("name"), "'{s}.function.name' is required", .{cpath});
        var fn_out = try function.map.clone();
        if (function.get("arguments")) |args| switch (args) {
            .string => |text| {
                const parsed = if (fields.nestingDepth(text) > fields.max_depth) null else std.json.parseFromSliceLeaky(Value, gpa, text, .{}) catch null;
                if (parsed != null and parsed.? == .object) try fn_out.put("arguments", parsed.?);
            },
            .object => {},
            else => return problem.fail(try function.param("arguments"), "'{s}.function.arguments' must be a JSON string, not {s}", .{ cpath, fields.typeName(args) }),
        };
        var call_out = try call.object.clone();
        try call_out.put("function", .{ .object = fn_out });
        try out.append(.{ .object = call_out });
    }
    return .{ .array = out };
}

/// The template a request renders with: the served model's, or with `auto` the GGUF's own (its
/// `tool_use` variant when the request has tools, as llama-server and transformers choose). A GGUF
/// without a template, or with a blank one, gets plain ChatML (templates/chatml.jinja), as
/// llama-server falls back to, and the log says so.
fn templateSource(gpa: Allocator, model: *const config.Model, info: ModelInfo, with_tools: bool, problem: *fields.Problem) RenderError![]const u8 {
    if (model.template_source) |s| return s;
    var name = model.template;
    if (std.mem.eql(u8, name, "auto")) {
        if (with_tools) if (info.chat_template_tool_use) |t| if (!blank(t)) return t;
        if (info.chat_template) |t| if (!blank(t)) return t;
        const why = if (info.chat_template == null) "has no chat template" else "has an empty chat template";
        std.log.warn("model '{s}': its GGUF {s} (tokenizer.chat_template), so 'auto' uses the template 'chatml' (plain ChatML, no system message added, as llama-server falls back to)", .{ model.id, why });
        name = "chatml";
    }
    return readTemplate(gpa, name) catch |err| switch (err) {
        error.OutOfMemory => error.OutOfMemory,
        else => {
            problem.message = try std.fmt.allocPrint(gpa, "cannot read the template '{s}' ({s})", .{ name, @errorName(err) });
            return error.Template;
        },
    };
}

fn blank(text: []const u8) bool {
    return std.mem.trim(u8, text, whitespace).len == 0;
}

/// /templates/<name>.jinja (the preopened, read-only templates folder is the guest's cwd).
pub fn readTemplate(gpa: Allocator, name: []const u8) ![]u8 {
    if (std.mem.indexOfAny(u8, name, "/\\") != null or std.mem.startsWith(u8, name, ".")) return error.BadTemplateName;
    const file = try std.fmt.allocPrint(gpa, "{s}.jinja", .{name});
    return std.fs.cwd().readFileAlloc(gpa, file, 1 << 20);
}
