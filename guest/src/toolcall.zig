//! Tool calls and reasoning: OpenAI's `tools` / `tool_choice` in, the model family's call
//! format (found in its chat template) for the grammar, and `tool_calls` / `reasoning_content`
//! parsed back out of the generated text, streamed or not. All memory comes from the caller's
//! allocator (the request's arena); returned slices live as long as it.
const std = @import("std");
const fields = @import("fields.zig");

const Value = std.json.Value;
const Allocator = std.mem.Allocator;
const Object = fields.Object;

/// How a model family writes a tool call.
pub const Format = enum {
    hermes, // <tool_call>{"name": ..., "arguments": {...}}</tool_call> (Hermes 2/3, Qwen 2.5/3, GLM, Granite 4)
    xml, // <tool_call><function=name><parameter=k>v</parameter></function></tool_call> (Qwen3-Coder, Nemotron 3)
    llama3, // {"name": ..., "parameters": {...}}, or after <|python_tag|> (Llama 3.1-3.3)
    mistral, // [TOOL_CALLS][{"name": ..., "arguments": {...}, "id": ...}] (Mistral Nemo)
    mistral_args, // [TOOL_CALLS]name[ARGS]{...} (Mistral Small 3.2, Devstral, Ministral)
    generic, // no native format: a JSON envelope, {"tool_calls": [...]} or {"content": "..."}

    /// The format a chat template renders tool calls in, from its distinctive markers.
    pub fn detect(template: []const u8) Format {
        const has = struct {
            fn f(t: []const u8, s: []const u8) bool {
                return std.mem.indexOf(u8, t, s) != null;
            }
        }.f;
        if (has(template, "<function=")) return .xml;
        if (has(template, "[ARGS]")) return .mistral_args;
        if (has(template, "[TOOL_CALLS]")) return .mistral;
        if (has(template, "<tool_call>")) return .hermes;
        if (has(template, "<|python_tag|>") or has(template, "\"parameters\": dictionary")) return .llama3;
        return .generic;
    }

    /// Where a call begins in the output (the grammar's lazy trigger, the parser's marker).
    fn marker(self: Format) []const u8 {
        return switch (self) {
            .hermes, .xml => "<tool_call>",
            .llama3 => "<|python_tag|>",
            .mistral, .mistral_args => "[TOOL_CALLS]",
            .generic => "",
        };
    }
};

pub const Tool = struct {
    name: []const u8,
    parameters: Value, // a JSON schema object
};

pub const Choice = union(enum) { none, auto, required, named: []const u8 };

/// What a request asks of tools; `tools` empty when it gives none.
pub const Request = struct {
    tools: []const Tool = &.{},
    choice: Choice = .auto,
    parallel: bool = true,

    pub fn active(self: Request) bool {
        return self.tools.len > 0 and self.choice != .none;
    }
};

/// `tools`, `tool_choice` and `parallel_tool_calls`, validated (errors name the param).
pub fn readRequest(gpa: Allocator, request: Object) fields.Invalid!Request {
    var out = Request{};
    if (try request.array("tools")) |items| {
        if (items.len > 128) return request.problem.fail("tools", "'tools' has {d} tools; at most 128", .{items.len});
        const tools = try gpa.alloc(Tool, items.len);
        for (items, tools, 0..) |item, *tool, i| tool.* = try readTool(gpa, request.problem, item, i);
        for (tools, 0..) |a, i| for (tools[0..i]) |b| if (std.mem.eql(u8, a.name, b.name))
            return request.problem.fail(try std.fmt.allocPrint(gpa, "tools[{d}].function.name", .{i}), "two tools are named '{s}'", .{a.name});
        out.tools = tools;
    }
    out.parallel = (try request.boolean("parallel_tool_calls")) orelse true;
    const v = request.get("tool_choice") orelse {
        out.choice = .auto;
        return out;
    };
    out.choice = switch (v) {
        .string => |s| if (std.mem.eql(u8, s, "none"))
            .none
        else if (std.mem.eql(u8, s, "auto"))
            .auto
        else if (std.mem.eql(u8, s, "required"))
            .required
        else
            return request.problem.fail("tool_choice", "'tool_choice' must be none, auto, required or {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}, not '{}'", .{fields.echo(s)}),
        .object => |map| blk: {
            const o = Object{ .map = map, .path = "tool_choice", .problem = request.problem };
            const kind = (try o.string("type")) orelse return request.problem.fail("tool_choice.type", "'tool_choice.type' is required", .{});
            if (!std.mem.eql(u8, kind, "function")) return request.problem.fail("tool_choice.type", "'tool_choice.type' must be function, not '{}'", .{fields.echo(kind)});
            const function = (try o.object("function")) orelse return request.problem.fail("tool_choice.function", "'tool_choice.function' is required", .{});
            const name = (try function.string("name")) orelse return request.problem.fail("tool_choice.function.name", "'tool_choice.function.name' is required", .{});
            for (out.tools) |t| {
                if (std.mem.eql(u8, t.name, name)) break :blk .{ .named = name };
            }
            return request.problem.fail("tool_choice.function.name", "'tool_choice' names the tool '{}', which is not in 'tools'", .{fields.echo(name)});
        },
        else => return request.problem.fail("tool_choice", "'tool_choice' must be a string or an object, not {s}", .{fields.typeName(v)}),
    };
    if (out.choice != .none and out.choice != .auto and out.tools.len == 0)
        return request.problem.fail("tool_choice", "'tool_choice' asks for a tool call, but the request has no 'tools'", .{});
    return out;
}

fn readTool(gpa: Allocator, problem: *fields.Problem, item: Value, i: usize) fields.Invalid!Tool {
    const path = try std.fmt.allocPrint(gpa, "tools[{d}]", .{i});
    if (item != .object) return problem.fail(path, "'{s}' must be an object, not {s}", .{ path, fields.typeName(item) });
    const t = Object{ .map = item.object, .path = path, .problem = problem };
    const kind = (try t.string("type")) orelse return problem.fail(try t.param("type"), "'{s}.type' is required", .{path});
    if (!std.mem.eql(u8, kind, "function")) return problem.fail(try t.param("type"), "'{s}.type' must be function, not '{}'", .{ path, fields.echo(kind) });
    const f = (try t.object("function")) orelse return problem.fail(try t.param("function"), "'{s}.function' is required", .{path});
    const name = (try f.string("name")) orelse return problem.fail(try f.param("name"), "'{s}.function.name' is required", .{path});
    // OpenAI's rule; it also keeps names safe inside grammars and markers
    const ok = name.len >= 1 and name.len <= 64 and for (name) |c| {
        if (!(std.ascii.isAlphanumeric(c) or c == '_' or c == '-' or c == '.')) break false;
    } else true;
    if (!ok) return problem.fail(try f.param("name"), "'{s}.function.name' must be 1 to 64 letters, digits, '_', '-' or '.', got '{}'", .{ path, fields.echo(name) });
    _ = try f.string("description");
    _ = try f.boolean("strict");
    const parameters: Value = if (try f.object("parameters")) |p| .{ .object = p.map } else blk: {
        var empty = std.json.ObjectMap.init(gpa);
        try empty.put("type", .{ .string = "object" });
        try empty.put("properties", .{ .object = std.json.ObjectMap.init(gpa) });
        break :blk .{ .object = empty };
    };
    return .{ .name = name, .parameters = parameters };
}

// --- grammar --------------------------------------------------------------------------------

/// What the host needs to constrain generation to calls (WASI-NN `grammar`, `grammar-schemas`,
/// `grammar-triggers`; guest/ABI.md).
pub const Grammar = struct {
    gbnf: []const u8,
    schemas: std.json.ObjectMap, // rule name -> JSON schema, converted by the host
    lazy: bool,
    trigger: []const u8, // a word: the grammar applies from where it appears (lazy only)
};

/// Calls one answer may make at most: a random or confused model that goes on calling forever
/// makes no call at all once it runs out of tokens.
pub const max_calls = 4;
const more = std.fmt.comptimePrint("{{0,{d}}}", .{max_calls - 1}); // the calls after the first

/// The grammar for a request's tools, or null where generation stays free (`auto` with the
/// generic format is constrained too: its calls have no marker to wait for).
pub fn grammar(gpa: Allocator, format: Format, req: Request) error{OutOfMemory}!?Grammar {
    if (!req.active()) return null;
    var schemas = std.json.ObjectMap.init(gpa);
    var alternatives = std.ArrayList(u8).init(gpa);
    var n: usize = 0;
    for (req.tools) |tool| {
        if (req.choice == .named and !std.mem.eql(u8, req.choice.named, tool.name)) continue;
        const rule = try std.fmt.allocPrint(gpa, "tool-{d}", .{n});
        if (n > 0) try alternatives.appendSlice(" | ");
        try alternatives.appendSlice(rule);
        n += 1;
        switch (format) {
            .hermes, .mistral, .generic => try schemas.put(rule, try callSchema(gpa, tool, "arguments", format == .mistral)),
            .llama3 => try schemas.put(rule, try callSchema(gpa, tool, "parameters", false)),
            // [TOOL_CALLS]name[ARGS]{...}: the name is literal (written below), the arguments a schema
            .mistral_args => try schemas.put(try std.fmt.allocPrint(gpa, "{s}-args", .{rule}), tool.parameters),
            .xml => {}, // free-text values: no schema

        }
    }
    var g = std.ArrayList(u8).init(gpa);
    const w = g.writer();
    const many = req.parallel;
    switch (format) {
        .hermes => try w.print("root ::= call{s}\ncall ::= \"<tool_call>\\n\" ({s}) \"\\n</tool_call>\"\n", .{ if (many) " (\"\\n\" call)" ++ more else "", alternatives.items }),
        .llama3 => try w.print("root ::= \"<|python_tag|>\"? {s}\ncall ::= {s}\n", .{ if (many) "call (\"; \" call)" ++ more else "call", alternatives.items }),
        .mistral => try w.print("root ::= \"[TOOL_CALLS][\" call{s} \"]\"\ncall ::= {s}\n", .{ if (many) " (\", \" call)" ++ more else "", alternatives.items }),
        .mistral_args => {
            try w.print("root ::= call{s}\ncall ::= ", .{if (many) " call" ++ more else ""});
            var k: usize = 0;
            for (req.tools) |tool| {
                if (req.choice == .named and !std.mem.eql(u8, req.choice.named, tool.name)) continue;
                if (k > 0) try w.writeAll(" | ");
                try w.print("\"[TOOL_CALLS]{s}[ARGS]\" tool-{d}-args", .{ tool.name, k });
                k += 1;
            }
            try w.writeAll("\n");
        },
        .xml => {
            try w.print("root ::= call{s}\ncall ::= \"<tool_call>\\n\" (", .{if (many) " (\"\\n\" call)" ++ more else ""});
            var k: usize = 0;
            var params = std.ArrayList(u8).init(gpa);
            for (req.tools) |tool| {
                if (req.choice == .named and !std.mem.eql(u8, req.choice.named, tool.name)) continue;
                if (k > 0) try w.writeAll(" | ");
                try w.print("\"<function={s}>\\n\"", .{tool.name});
                // the required parameters in order, then each optional one or not
                const props = objectField(tool.parameters, "properties");
                if (props == .object) for (props.object.keys(), props.object.values(), 0..) |key, prop, j| {
                    if (!validKey(key)) continue;
                    const rule = try std.fmt.allocPrint(gpa, "xml-{d}-{d}", .{ k, j });
                    try w.print(" {s}{s}", .{ rule, if (isRequired(tool.parameters, key)) "" else "?" });
                    try params.writer().print("{s} ::= \"<parameter={s}>\\n\" {s} \"\\n</parameter>\\n\"\n", .{ rule, key, try xmlValue(gpa, &schemas, rule, prop) });
                };
                k += 1;
            }
            try w.writeAll(") \"</function>\\n</tool_call>\"\n");
            try w.writeAll(params.items);
            try w.writeAll("xml-text ::= [^<]*\n");
        },
        .generic => {
            // the whole answer is the envelope: calls, or (unless a call is required) text
            var env = std.json.ObjectMap.init(gpa);
            var calls = std.json.ObjectMap.init(gpa);
            try calls.put("type", .{ .string = "array" });
            var items = std.json.ObjectMap.init(gpa);
            var any = std.json.Array.init(gpa);
            var it = schemas.iterator();
            while (it.next()) |e| try any.append(e.value_ptr.*);
            try items.put("anyOf", .{ .array = any });
            try calls.put("items", .{ .object = items });
            try calls.put("minItems", .{ .integer = 1 });
            try calls.put("maxItems", .{ .integer = if (many) max_calls else 1 });
            try env.put("tool_calls", .{ .object = calls });
            var alts = std.json.Array.init(gpa);
            try alts.append(try objectSchema(gpa, env));
            if (req.choice == .auto) {
                var text = std.json.ObjectMap.init(gpa);
                var string = std.json.ObjectMap.init(gpa);
                try string.put("type", .{ .string = "string" });
                try text.put("content", .{ .object = string });
                try alts.append(try objectSchema(gpa, text));
            }
            var root = std.json.ObjectMap.init(gpa);
            try root.put("anyOf", .{ .array = alts });
            schemas = std.json.ObjectMap.init(gpa);
            try schemas.put("envelope", .{ .object = root });
            try w.writeAll("root ::= envelope\n");
        },
    }
    const lazy = req.choice == .auto and format != .generic;
    // Llama 3 writes its calls as bare JSON at the start: the trigger is its first bytes
    const trigger = if (format == .llama3) "{\"name\"" else format.marker();
    if (lazy and format == .llama3) {
        // lazy from `{"name"`: the grammar then starts there, without the python tag
        var lz = std.ArrayList(u8).init(gpa);
        try lz.writer().print("root ::= {s}\ncall ::= {s}\n", .{ if (many) "call (\"; \" call)" ++ more else "call", alternatives.items });
        return .{ .gbnf = lz.items, .schemas = schemas, .lazy = true, .trigger = trigger };
    }
    return .{ .gbnf = g.items, .schemas = schemas, .lazy = lazy, .trigger = trigger };
}

/// The grammar of a parameter value written as text: a number or boolean as such, a string as
/// free text without '<' (an enum as its values), anything else JSON by its schema.
fn xmlValue(gpa: Allocator, schemas: *std.json.ObjectMap, rule: []const u8, prop: Value) error{OutOfMemory}![]const u8 {
    const kind = objectField(prop, "type");
    const name = if (kind == .string) kind.string else "";
    if (objectField(prop, "enum") == .array) {
        var alts = std.ArrayList(u8).init(gpa);
        for (objectField(prop, "enum").array.items) |v| if (v == .string and std.mem.indexOfAny(u8, v.string, "\"\\<\n") == null) {
            if (alts.items.len > 0) try alts.appendSlice(" | ");
            try alts.writer().print("\"{s}\"", .{v.string});
        };
        if (alts.items.len > 0) return std.fmt.allocPrint(gpa, "({s})", .{alts.items});
    }
    if (std.mem.eql(u8, name, "string")) {
        const most = objectField(prop, "maxLength");
        if (most == .integer and most.integer >= 0 and most.integer <= 500) return std.fmt.allocPrint(gpa, "[^<\\n]{{0,{d}}}", .{most.integer});
        return "xml-text";
    }
    if (std.mem.eql(u8, name, "integer")) return "\"-\"? [0-9]{1,15}";
    if (std.mem.eql(u8, name, "number")) return "\"-\"? [0-9]{1,15} (\".\" [0-9]{1,15})?";
    if (std.mem.eql(u8, name, "boolean")) return "(\"true\" | \"false\")";
    const json_rule = try std.fmt.allocPrint(gpa, "{s}-json", .{rule});
    try schemas.put(json_rule, prop);
    return json_rule;
}

fn schemaOf(tools: []const Tool, name: []const u8) Value {
    for (tools) |t| if (std.mem.eql(u8, t.name, name)) return t.parameters;
    return .null;
}

fn objectField(v: Value, name: []const u8) Value {
    if (v != .object) return .null;
    return v.object.get(name) orelse .null;
}

fn isRequired(schema: Value, key: []const u8) bool {
    const required = objectField(schema, "required");
    if (required != .array) return false;
    for (required.array.items) |r| if (r == .string and std.mem.eql(u8, r.string, key)) return true;
    return false;
}

/// A property name that can stand in a grammar literal and an XML tag as it is.
fn validKey(key: []const u8) bool {
    if (key.len == 0 or key.len > 64) return false;
    for (key) |c| if (!(std.ascii.isAlphanumeric(c) or c == '_' or c == '-' or c == '.')) return false;
    return true;
}

/// `{"name": <const>, <args_key>: <parameters>}` (and Mistral's 9-character `id`).
fn callSchema(gpa: Allocator, tool: Tool, args_key: []const u8, with_id: bool) error{OutOfMemory}!Value {
    var props = std.json.ObjectMap.init(gpa);
    var name = std.json.ObjectMap.init(gpa);
    try name.put("const", .{ .string = tool.name });
    try props.put("name", .{ .object = name });
    try props.put(args_key, tool.parameters);
    if (with_id) {
        var id = std.json.ObjectMap.init(gpa);
        try id.put("type", .{ .string = "string" });
        try id.put("pattern", .{ .string = "^[a-zA-Z0-9]{9}$" });
        try props.put("id", .{ .object = id });
    }
    return objectSchema(gpa, props);
}

/// `{"type": "object", "properties": props, "required": [every key], "additionalProperties": false}`
fn objectSchema(gpa: Allocator, props: std.json.ObjectMap) error{OutOfMemory}!Value {
    var out = std.json.ObjectMap.init(gpa);
    try out.put("type", .{ .string = "object" });
    var required = std.json.Array.init(gpa);
    for (props.keys()) |k| try required.append(.{ .string = k });
    try out.put("properties", .{ .object = props });
    try out.put("required", .{ .array = required });
    try out.put("additionalProperties", .{ .bool = false });
    return .{ .object = out };
}

/// The system text that describes the tools to a model whose template has no tool format.
pub fn genericInstructions(gpa: Allocator, req: Request) error{OutOfMemory}![]const u8 {
    var out = std.ArrayList(u8).init(gpa);
    const w = out.writer();
    try w.writeAll("You can call these tools (JSON schemas of their arguments):\n");
    for (req.tools) |t| {
        try w.print("- {s}: ", .{t.name});
        try std.json.stringify(t.parameters, .{}, w);
        try w.writeAll("\n");
    }
    try w.writeAll("Answer in JSON: {\"tool_calls\": [{\"name\": <tool>, \"arguments\": {...}}]} to call tools");
    if (req.choice == .auto) try w.writeAll(", or {\"content\": <your answer>} to answer directly");
    try w.writeAll(".");
    return out.items;
}

// --- parsing the output ---------------------------------------------------------------------

pub const Call = struct {
    name: []const u8,
    arguments: []const u8, // JSON text of an object, as OpenAI's `function.arguments`
};

/// What a stream step releases: text to show, reasoning, and calls completed.
pub const Delta = struct {
    content: []const u8 = "",
    reasoning: []const u8 = "",
    calls: []const Call = &.{},

    pub fn empty(self: Delta) bool {
        return self.content.len == 0 and self.reasoning.len == 0 and self.calls.len == 0;
    }
};

/// Splits generated text into content, reasoning (`<think>...</think>`) and calls, as pieces
/// arrive. Text that may be the start of a marker is held back until it is known not to be; a
/// call is parsed once the output ends, and a call that does not parse is content after all.
/// Any cut of the same text into pieces gives the same concatenated result.
pub const Splitter = struct {
    gpa: Allocator,
    format: Format,
    tools: []const Tool, // (their schemas type the values of XML calls)
    calls: bool, // look for tool calls
    think: bool, // split <think> blocks into reasoning
    mode: enum { content, reasoning, calls },
    pending: std.ArrayList(u8),
    started: bool = false, // content other than whitespace has been released
    trim: bool = false, // drop whitespace before the content that follows reasoning

    /// `in_reasoning`: the prompt ended inside a think block (templates that open it).
    pub fn init(gpa: Allocator, format: Format, tools: []const Tool, calls: bool, think: bool, in_reasoning: bool) Splitter {
        return .{
            .gpa = gpa,
            .format = format,
            .tools = tools,
            .calls = calls,
            .think = think,
            .mode = if (think and in_reasoning) .reasoning else if (calls and format == .generic) .calls else .content,
            .pending = std.ArrayList(u8).init(gpa),
        };
    }

    pub fn push(self: *Splitter, piece: []const u8) error{OutOfMemory}!Delta {
        try self.pending.appendSlice(piece);
        return self.step(false);
    }

    pub fn finish(self: *Splitter) error{OutOfMemory}!Delta {
        var delta = try self.step(true);
        if (self.mode == .calls) {
            const text = self.pending.items;
            if (try parseCalls(self.gpa, self.format, self.tools, text)) |parsed| {
                delta.calls = parsed.calls;
                delta.content = try std.mem.concat(self.gpa, u8, &.{ delta.content, parsed.rest });
            } else {
                delta.content = try std.mem.concat(self.gpa, u8, &.{ delta.content, self.release(text) });
            }
        }
        return delta;
    }

    fn step(self: *Splitter, final: bool) error{OutOfMemory}!Delta {
        var content = std.ArrayList(u8).init(self.gpa);
        var reasoning = std.ArrayList(u8).init(self.gpa);
        while (true) {
            const text = self.pending.items;
            switch (self.mode) {
                .reasoning => {
                    if (std.mem.indexOf(u8, text, "</think>")) |i| {
                        try reasoning.appendSlice(text[0..i]);
                        self.consume(i + "</think>".len);
                        self.mode = .content;
                        self.trim = true;
                        continue;
                    }
                    const keep = if (final) 0 else partialSuffix(text, "</think>");
                    try reasoning.appendSlice(text[0 .. text.len - keep]);
                    self.consume(text.len - keep);
                    break;
                },
                .content => {
                    if (self.trim) {
                        const start = std.mem.indexOfNone(u8, text, " \t\r\n") orelse {
                            if (final) self.consume(text.len);
                            break;
                        };
                        self.consume(start);
                        self.trim = false;
                        continue;
                    }
                    if (!self.started and self.think and std.mem.startsWith(u8, text, "<think>")) {
                        self.consume("<think>".len);
                        self.mode = .reasoning;
                        continue;
                    }
                    if (!self.started and self.think and !final and std.mem.startsWith(u8, "<think>", text)) break;
                    if (self.calls) {
                        if (!self.started and self.format == .llama3 and text.len > 0 and text[0] == '{') {
                            self.mode = .calls; // Llama 3's bare JSON call
                            break;
                        }
                        const m = self.format.marker();
                        if (std.mem.indexOf(u8, text, m)) |i| {
                            try content.appendSlice(self.release(text[0..i]));
                            self.consume(i);
                            self.mode = .calls;
                            break;
                        }
                        const keep = if (final) 0 else partialSuffix(text, m);
                        try content.appendSlice(self.release(text[0 .. text.len - keep]));
                        self.consume(text.len - keep);
                        break;
                    }
                    try content.appendSlice(self.release(text));
                    self.consume(text.len);
                    break;
                },
                .calls => break, // held whole until the end
            }
        }
        return .{ .content = content.items, .reasoning = reasoning.items };
    }

    fn release(self: *Splitter, text: []const u8) []const u8 {
        if (text.len > 0) self.started = true;
        return text;
    }

    fn consume(self: *Splitter, n: usize) void {
        const rest = self.pending.items[n..];
        std.mem.copyForwards(u8, self.pending.items[0..rest.len], rest);
        self.pending.shrinkRetainingCapacity(rest.len);
    }
};

/// Length of the longest suffix of `text` that is a proper prefix of `word`.
fn partialSuffix(text: []const u8, word: []const u8) usize {
    var n = @min(word.len - 1, text.len);
    while (n > 0) : (n -= 1) {
        if (std.mem.endsWith(u8, text, word[0..n])) return n;
    }
    return 0;
}

const Parsed = struct { calls: []const Call, rest: []const u8 };

/// The calls in `text` (which starts at a call marker, or is the generic envelope), and any text
/// after them; null when it is not a well-formed call (then it is content).
pub fn parseCalls(gpa: Allocator, format: Format, tools: []const Tool, text: []const u8) error{OutOfMemory}!?Parsed {
    var calls = std.ArrayList(Call).init(gpa);
    var at: usize = 0;
    switch (format) {
        .hermes => while (true) {
            at = skipSpace(text, at);
            if (!std.mem.startsWith(u8, text[at..], "<tool_call>")) break;
            at += "<tool_call>".len;
            const end = std.mem.indexOfPos(u8, text, at, "</tool_call>") orelse text.len;
            const call = (try jsonCall(gpa, std.mem.trim(u8, text[at..end], " \t\r\n"), "arguments")) orelse return null;
            try calls.append(call);
            at = @min(text.len, end + "</tool_call>".len);
        },
        .xml => while (true) {
            at = skipSpace(text, at);
            const wrapped = std.mem.startsWith(u8, text[at..], "<tool_call>");
            if (wrapped) at = skipSpace(text, at + "<tool_call>".len);
            if (!std.mem.startsWith(u8, text[at..], "<function=")) {
                if (wrapped) return null;
                break;
            }
            const call = (try xmlCall(gpa, tools, text, &at)) orelse return null;
            try calls.append(call);
            at = skipSpace(text, at);
            if (wrapped) {
                if (!std.mem.startsWith(u8, text[at..], "</tool_call>")) {
                    if (at < text.len) return null;
                } else at += "</tool_call>".len;
            }
        },
        .llama3 => {
            if (std.mem.startsWith(u8, text, "<|python_tag|>")) at = "<|python_tag|>".len;
            while (true) {
                at = skipSpace(text, at);
                if (at >= text.len or text[at] != '{') break;
                const end = jsonEnd(text, at) orelse return null;
                const call = (try jsonCall(gpa, text[at..end], "parameters")) orelse return null;
                try calls.append(call);
                at = skipSpace(text, end);
                if (at < text.len and text[at] == ';') at += 1;
            }
        },
        .mistral => while (true) {
            at = skipSpace(text, at);
            if (!std.mem.startsWith(u8, text[at..], "[TOOL_CALLS]")) break;
            at = skipSpace(text, at + "[TOOL_CALLS]".len);
            const end = jsonEnd(text, at) orelse return null;
            const list = parseJson(gpa, text[at..end]) orelse return null;
            const items: []const Value = switch (list) {
                .array => |a| a.items,
                .object => &.{list},
                else => return null,
            };
            for (items) |item| try calls.append((try valueCall(gpa, item, "arguments")) orelse return null);
            at = end;
        },
        .mistral_args => while (true) {
            at = skipSpace(text, at);
            if (!std.mem.startsWith(u8, text[at..], "[TOOL_CALLS]")) break;
            at += "[TOOL_CALLS]".len;
            const args = std.mem.indexOfPos(u8, text, at, "[ARGS]") orelse return null;
            const name = std.mem.trim(u8, text[at..args], " \t\r\n");
            at = skipSpace(text, args + "[ARGS]".len);
            const end = jsonEnd(text, at) orelse return null;
            const value = parseJson(gpa, text[at..end]) orelse return null;
            if (value != .object or name.len == 0) return null;
            try calls.append(.{ .name = name, .arguments = try std.json.stringifyAlloc(gpa, value, .{}) });
            at = end;
        },
        .generic => {
            const start = skipSpace(text, 0);
            const end = jsonEnd(text, start) orelse return null;
            const env = parseJson(gpa, text[start..end]) orelse return null;
            if (env != .object) return null;
            if (env.object.get("tool_calls")) |list| {
                if (list != .array) return null;
                for (list.array.items) |item| try calls.append((try valueCall(gpa, item, "arguments")) orelse return null);
            } else if (env.object.get("content")) |c| {
                if (c != .string) return null;
                return .{ .calls = &.{}, .rest = c.string };
            } else return null;
            at = end;
        },
    }
    if (calls.items.len == 0) return null;
    return .{ .calls = calls.items, .rest = std.mem.trim(u8, text[at..], " \t\r\n") };
}

/// JSON the model wrote, or null (also when nested deeper than a request may be).
fn parseJson(gpa: Allocator, text: []const u8) ?Value {
    if (fields.nestingDepth(text) > fields.max_depth) return null;
    return std.json.parseFromSliceLeaky(Value, gpa, text, .{}) catch null;
}

fn skipSpace(text: []const u8, at: usize) usize {
    var i = at;
    while (i < text.len and std.ascii.isWhitespace(text[i])) i += 1;
    return i;
}

/// The end of the JSON object or array starting at `start` (strings and escapes respected).
fn jsonEnd(text: []const u8, start: usize) ?usize {
    if (start >= text.len or (text[start] != '{' and text[start] != '[')) return null;
    var depth: usize = 0;
    var in_string = false;
    var i = start;
    while (i < text.len) : (i += 1) {
        const c = text[i];
        if (in_string) {
            if (c == '\\') i += 1 else if (c == '"') in_string = false;
            continue;
        }
        switch (c) {
            '"' => in_string = true,
            '{', '[' => depth += 1,
            '}', ']' => {
                depth -= 1;
                if (depth == 0) return i + 1;
            },
            else => {},
        }
    }
    return null;
}

fn jsonCall(gpa: Allocator, text: []const u8, args_key: []const u8) error{OutOfMemory}!?Call {
    return valueCall(gpa, parseJson(gpa, text) orelse return null, args_key);
}

/// `{"name": ..., <args_key> | "arguments": {...} or a JSON string}` as a Call.
fn valueCall(gpa: Allocator, value: Value, args_key: []const u8) error{OutOfMemory}!?Call {
    if (value != .object) return null;
    const name = value.object.get("name") orelse return null;
    if (name != .string or name.string.len == 0) return null;
    const args = value.object.get(args_key) orelse value.object.get("arguments") orelse value.object.get("parameters") orelse Value{ .object = std.json.ObjectMap.init(gpa) };
    const text = switch (args) {
        .object => try std.json.stringifyAlloc(gpa, args, .{}),
        .string => |s| blk: { // some models write the arguments as a JSON string, as the wire does
            const inner = parseJson(gpa, s) orelse return null;
            if (inner != .object) return null;
            break :blk s;
        },
        else => return null,
    };
    return .{ .name = name.string, .arguments = text };
}

/// `<function=name>` then `<parameter=key>\nvalue\n</parameter>`s and `</function>`; a value
/// that is JSON (a number, true, an object, ...) is that value, unless its schema says string;
/// anything else a string.
fn xmlCall(gpa: Allocator, tools: []const Tool, text: []const u8, at: *usize) error{OutOfMemory}!?Call {
    var i = at.* + "<function=".len;
    const close = std.mem.indexOfScalarPos(u8, text, i, '>') orelse return null;
    const name = text[i..close];
    if (name.len == 0) return null;
    i = close + 1;
    var args = std.json.ObjectMap.init(gpa);
    while (true) {
        i = skipSpace(text, i);
        if (std.mem.startsWith(u8, text[i..], "</function>")) {
            at.* = i + "</function>".len;
            break;
        }
        if (i >= text.len) { // cut off at the end of generation: what was written so far
            at.* = i;
            break;
        }
        if (!std.mem.startsWith(u8, text[i..], "<parameter=")) return null;
        i += "<parameter=".len;
        const key_end = std.mem.indexOfScalarPos(u8, text, i, '>') orelse return null;
        const key = text[i..key_end];
        const value_end = std.mem.indexOfPos(u8, text, key_end + 1, "</parameter>") orelse return null;
        var raw = text[key_end + 1 .. value_end];
        if (std.mem.startsWith(u8, raw, "\n")) raw = raw[1..];
        if (std.mem.endsWith(u8, raw, "\n")) raw = raw[0 .. raw.len - 1];
        const kind = objectField(objectField(objectField(schemaOf(tools, name), "properties"), key), "type");
        const text_kind = kind == .string and std.mem.eql(u8, kind.string, "string");
        const value = if (text_kind) null else parseJson(gpa, raw);
        try args.put(key, if (value == null or value.? == .string) .{ .string = raw } else value.?);
        i = value_end + "</parameter>".len;
    }
    return .{ .name = name, .arguments = try std.json.stringifyAlloc(gpa, Value{ .object = args }, .{}) };
}

/// An id for a call: Mistral's templates want 9 letters and digits; others OpenAI's `call_...`.
pub fn newId(gpa: Allocator, format: Format) error{OutOfMemory}![]const u8 {
    const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    const prefix = if (format == .mistral or format == .mistral_args) "" else "call_";
    const n: usize = if (prefix.len == 0) 9 else 24;
    const id = try gpa.alloc(u8, prefix.len + n);
    @memcpy(id[0..prefix.len], prefix);
    var random: [24]u8 = undefined;
    std.crypto.random.bytes(&random);
    for (id[prefix.len..], random[0..n]) |*c, r| c.* = alphabet[r % alphabet.len];
    return id;
}

// --- tests (zig test src/toolcall.zig) ------------------------------------------------------

fn splitAll(gpa: Allocator, format: Format, text: []const u8, cut: usize) !Delta {
    var s = Splitter.init(gpa, format, &.{}, true, true, false);
    var content = std.ArrayList(u8).init(gpa);
    var reasoning = std.ArrayList(u8).init(gpa);
    var calls = std.ArrayList(Call).init(gpa);
    var i: usize = 0;
    while (i < text.len) : (i += cut) {
        const d = try s.push(text[i..@min(text.len, i + cut)]);
        try content.appendSlice(d.content);
        try reasoning.appendSlice(d.reasoning);
    }
    const d = try s.finish();
    try content.appendSlice(d.content);
    try reasoning.appendSlice(d.reasoning);
    try calls.appendSlice(d.calls);
    return .{ .content = content.items, .reasoning = reasoning.items, .calls = calls.items };
}

test "every cut of an output gives the same split" {
    var arena = std.heap.ArenaAllocator.init(std.testing.allocator);
    defer arena.deinit();
    const gpa = arena.allocator();
    const cases = .{
        .{ Format.hermes, "<think>plan</think>\n\nLet me look.<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>{\"name\": \"b\", \"arguments\": {}}</tool_call>", "Let me look.", "plan", 2 },
        .{ Format.llama3, "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}", "", "", 1 },
        .{ Format.mistral, "[TOOL_CALLS][{\"name\": \"a\", \"arguments\": {\"x\": 1}, \"id\": \"abcdefghi\"}, {\"name\": \"b\", \"arguments\": {}}]", "", "", 2 },
        .{ Format.mistral_args, "[TOOL_CALLS]a[ARGS]{\"x\": \"}\"}[TOOL_CALLS]b[ARGS]{}", "", "", 2 },
        .{ Format.xml, "Sure.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>", "Sure.\n", "", 1 },
        .{ Format.generic, "{\"tool_calls\": [{\"name\": \"a\", \"arguments\": {\"q\": \"x\"}}]}", "", "", 1 },
        .{ Format.generic, "{\"content\": \"hello\"}", "hello", "", 0 },
        .{ Format.hermes, "<tool_call>{\"name\": \"a\", \"arguments\": {oops}}</tool_call>", "<tool_call>{\"name\": \"a\", \"arguments\": {oops}}</tool_call>", "", 0 },
        .{ Format.hermes, "just text with a < sign and <tool", "just text with a < sign and <tool", "", 0 },
    };
    inline for (cases) |case| {
        const whole = try splitAll(gpa, case[0], case[1], case[1].len);
        try std.testing.expectEqualStrings(case[2], whole.content);
        try std.testing.expectEqualStrings(case[3], whole.reasoning);
        try std.testing.expectEqual(@as(usize, case[4]), whole.calls.len);
        var cut: usize = 1;
        while (cut < case[1].len) : (cut += 1) {
            const parts = try splitAll(gpa, case[0], case[1], cut);
            try std.testing.expectEqualStrings(whole.content, parts.content);
            try std.testing.expectEqualStrings(whole.reasoning, parts.reasoning);
            try std.testing.expectEqual(whole.calls.len, parts.calls.len);
            for (whole.calls, parts.calls) |a, b| {
                try std.testing.expectEqualStrings(a.name, b.name);
                try std.testing.expectEqualStrings(a.arguments, b.arguments);
            }
        }
    }
}

test "xml values are JSON where they parse" {
    var arena = std.heap.ArenaAllocator.init(std.testing.allocator);
    defer arena.deinit();
    const parsed = (try parseCalls(arena.allocator(), .xml, &.{}, "<tool_call>\n<function=f>\n<parameter=n>\n3\n</parameter>\n<parameter=s>\nhi there\n</parameter>\n</function>\n</tool_call>")).?;
    try std.testing.expectEqualStrings("{\"n\":3,\"s\":\"hi there\"}", parsed.calls[0].arguments);
}

test "formats from templates" {
    try std.testing.expectEqual(Format.xml, Format.detect("<tool_call>\n<function=x>"));
    try std.testing.expectEqual(Format.hermes, Format.detect("<tool_call>"));
    try std.testing.expectEqual(Format.mistral_args, Format.detect("[TOOL_CALLS]x[ARGS]"));
    try std.testing.expectEqual(Format.llama3, Format.detect("<|python_tag|>"));
    try std.testing.expectEqual(Format.generic, Format.detect("{{ messages }}"));
}

test "an empty piece before anything else releases nothing" {
    var arena = std.heap.ArenaAllocator.init(std.testing.allocator);
    defer arena.deinit();
    inline for (.{ Format.llama3, Format.hermes, Format.generic }) |format| {
        var s = Splitter.init(arena.allocator(), format, &.{}, true, true, false);
        try std.testing.expect((try s.push("")).empty());
    }
}
