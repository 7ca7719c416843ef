//! Walks the AST and renders text, with jinja2's scoping (loop bodies and macros get their own
//! scope; `if` does not), Undefined semantics and the sandbox's refusals. Every loop iteration
//! and macro call is a step; nesting and output size are bounded, so a hostile template ends
//! in error.TemplateError, never a trap.
const std = @import("std");
const ast = @import("ast.zig");
const value = @import("value.zig");
const builtins = @import("builtins.zig");
const pystr = @import("pystr.zig");
const Allocator = std.mem.Allocator;
const Value = value.Value;
const Scope = value.Scope;
const Expr = ast.Expr;
const Node = ast.Node;

pub const Error = error{ OutOfMemory, TemplateError };

pub const Limits = struct {
    max_output: usize,
    max_steps: usize,
    max_depth: usize,
    max_items: usize,
};

/// Evaluation recurses once per expression or statement level (a left-nested chain such as
/// `a + b + ... ` or `x|f|f|...` is as deep as it is long). wasmtime runs the guest on a native
/// stack of 512 KiB by default, about 1000 such levels, so the budget is 6 × max_depth levels
/// (384 by default), a macro call costing `macro_call_depth` of them.
const max_eval_depth_per_limit = 6;
const macro_call_depth = 4;

const Flow = enum { normal, brk, cont };

pub const Args = builtins.Args;

pub const Interp = struct {
    gpa: Allocator,
    limits: Limits,
    /// Seconds since the epoch for strftime_now.
    now: i64,
    /// Why the render failed (allocated in `gpa`).
    message: []const u8 = "",
    out: *std.ArrayListUnmanaged(u8),
    steps: usize = 0,
    depth: usize = 0,
    calls: usize = 0,

    pub fn fail(in: *Interp, comptime fmt: []const u8, args: anytype) Error {
        in.message = try std.fmt.allocPrint(in.gpa, fmt, args);
        return error.TemplateError;
    }

    /// Fails with the UndefinedError (or sandbox SecurityError) that using `u` raises in jinja2.
    pub fn failUndefined(in: *Interp, u: value.Undefined) Error {
        in.message = try u.message(in.gpa);
        return error.TemplateError;
    }

    pub fn step(in: *Interp) Error!void {
        in.steps += 1;
        if (in.steps > in.limits.max_steps) return in.fail("template exceeds the limit of {d} steps (loop iterations and macro calls)", .{in.limits.max_steps});
    }

    /// Rejects a string about to be built longer than the output limit.
    pub fn checkSize(in: *Interp, len: usize) Error!void {
        if (len > in.limits.max_output) return in.failSize();
    }

    pub fn failSize(in: *Interp) Error {
        return in.fail("template output exceeds the {d}-byte limit", .{in.limits.max_output});
    }

    /// Rejects a list about to be built with more items than the item limit.
    pub fn checkItems(in: *Interp, len: usize) Error!void {
        if (len > in.limits.max_items) return in.fail("template builds a list past the limit of {d} items", .{in.limits.max_items});
    }

    /// A width or count the template gives (an i64) as a usize: negative is 0, and past the byte
    /// (or item) limit it is a template error before any cast could trap (usize is 32 bits on wasm32).
    pub fn sizeArg(in: *Interp, n: i64, comptime what: enum { bytes, items }) Error!usize {
        if (n <= 0) return 0;
        const size = std.math.cast(usize, n) orelse std.math.maxInt(usize);
        if (what == .bytes) try in.checkSize(size) else try in.checkItems(size);
        return size;
    }

    fn enter(in: *Interp) Error!void {
        return in.enterBy(1);
    }

    fn enterBy(in: *Interp, n: usize) Error!void {
        in.depth += n;
        if (in.depth > in.limits.max_depth * max_eval_depth_per_limit) return in.fail("template nesting exceeds the depth limit of {d}", .{in.limits.max_depth});
    }

    pub fn mapDataError(in: *Interp, err: anyerror) Error {
        if (err == error.OutOfMemory) return error.OutOfMemory;
        if (err == error.TooDeep) return in.fail("data nests deeper than {d} levels", .{value.max_data_depth});
        return in.fail("unexpected error {s}", .{@errorName(err)});
    }

    /// Python's str(v), allocated in `gpa` (or `v` itself for a string).
    pub fn toStr(in: *Interp, v: Value) Error![]const u8 {
        if (v == .string) return v.string;
        if (v == .markup) return v.markup;
        var buf: std.ArrayListUnmanaged(u8) = .{};
        value.writeStr(in.gpa, &buf, v) catch |err| return in.mapDataError(err);
        return buf.items;
    }

    pub fn write(in: *Interp, text: []const u8) Error!void {
        try in.checkSize(in.out.items.len + text.len);
        try in.out.appendSlice(in.gpa, text);
    }

    pub fn newList(in: *Interp, items: []const Value, is_tuple: bool) Error!Value {
        const l = try in.gpa.create(value.List);
        l.* = .{ .items = items, .is_tuple = is_tuple };
        return .{ .list = l };
    }

    /// A generator or dict view over `items` (see value.List.lazy).
    pub fn newLazy(in: *Interp, items: []const Value, lazy: value.List.Lazy) Error!Value {
        const l = try in.gpa.create(value.List);
        l.* = .{ .items = items, .lazy = lazy };
        return .{ .list = l };
    }

    pub fn newDict(in: *Interp, entries: []const value.Entry) Error!Value {
        const d = try in.gpa.create(value.Dict);
        d.* = .{ .entries = entries };
        return .{ .dict = d };
    }

    // --- statements -----------------------------------------------------------------------

    pub fn renderNodes(in: *Interp, scope: *Scope, nodes: []const Node) Error!Flow {
        for (nodes) |*node| {
            const flow = try in.renderNode(scope, node);
            if (flow != .normal) return flow;
        }
        return .normal;
    }

    fn renderNode(in: *Interp, scope: *Scope, node: *const Node) Error!Flow {
        try in.enter();
        defer in.depth -= 1;
        switch (node.*) {
            .text => |t| try in.write(t),
            .print => |e| {
                const v = try in.eval(scope, e);
                if (v == .string) try in.write(v.string) else if (v != .undefined) try in.write(try in.toStr(v));
                // (Markup prints its text: toStr)
            },
            .@"if" => |n| {
                for (n.branches) |b| {
                    if (value.truthy(try in.eval(scope, b.cond))) return in.renderNodes(scope, b.body);
                }
                return in.renderNodes(scope, n.otherwise);
            },
            .@"for" => |f| return in.renderFor(scope, f),
            .set => |s| try in.assign(scope, s.target, try in.eval(scope, s.value)),
            .set_block => |s| {
                var v = Value.str(try in.capture(scope, s.body));
                if (s.filter) |f| v = try in.applyFilterChain(scope, f, v);
                try in.assign(scope, s.target, v);
            },
            .macro => |m| {
                const mv = try in.gpa.create(value.Macro);
                mv.* = .{ .node = m, .scope = scope };
                try scope.set(in.gpa, m.name, .{ .macro = mv });
            },
            .call_block => |c| {
                const caller = try in.gpa.create(value.Macro);
                caller.* = .{ .node = c.caller, .scope = scope };
                const v = try in.evalCall(scope, c.call, caller);
                try in.write(try in.toStr(v));
            },
            .filter_block => |fb| {
                const text = try in.capture(scope, fb.body);
                try in.write(try in.toStr(try in.applyFilterChain(scope, fb.filter, Value.str(text))));
            },
            .@"break" => return .brk,
            .@"continue" => return .cont,
        }
        return .normal;
    }

    /// Renders `nodes` into a fresh buffer and returns its text.
    fn capture(in: *Interp, scope: *Scope, nodes: []const Node) Error![]const u8 {
        var buf: std.ArrayListUnmanaged(u8) = .{};
        const saved = in.out;
        in.out = &buf;
        defer in.out = saved;
        _ = try in.renderNodes(scope, nodes);
        return buf.items;
    }

    fn applyFilterChain(in: *Interp, scope: *Scope, chain: *const Expr, base: Value) Error!Value {
        const f = chain.filter;
        const inner = if (f.value) |v| try in.applyFilterChain(scope, v, base) else base;
        return builtins.filter(in, f.name, inner, try in.evalArgs(scope, f.args));
    }

    fn assign(in: *Interp, scope: *Scope, target: ast.Target, v: Value) Error!void {
        switch (target) {
            .names => |names| {
                if (names.len == 1) return scope.set(in.gpa, names[0], v);
                const items = try in.unpack(v, names.len);
                for (names, items) |n, item| try scope.set(in.gpa, n, item);
            },
            .attr => |a| {
                const obj = scope.lookup(a.object) orelse return in.fail("'{s}' is undefined", .{a.object});
                if (obj != .namespace) return in.fail("cannot assign attribute on non-namespace object", .{});
                try obj.namespace.put(in.gpa, a.name, v);
            },
        }
    }

    fn unpack(in: *Interp, v: Value, n: usize) Error![]const Value {
        const items = try in.iterate(v);
        if (items.len > n) return in.fail("too many values to unpack (expected {d})", .{n});
        if (items.len < n) return in.fail("not enough values to unpack (expected {d}, got {d})", .{ n, items.len });
        return items;
    }

    /// What `for` iterates: list items, dict keys, string characters; Undefined is empty.
    pub fn iterate(in: *Interp, v_in: Value) Error![]const Value {
        const v = v_in.plain();
        switch (v) {
            .list => |l| return l.items,
            .dict => |d| {
                const keys = try in.gpa.alloc(Value, d.entries.len);
                for (d.entries, keys) |e, *k| k.* = e.key;
                return keys;
            },
            .namespace => return in.fail("'Namespace' object is not iterable", .{}),
            .string => |s| {
                try in.checkItems(pystr.length(s));
                var chars: std.ArrayListUnmanaged(Value) = .{};
                var i: usize = 0;
                while (i < s.len) {
                    const d = pystr.decode(s, i);
                    try chars.append(in.gpa, Value.str(s[i .. i + d.len]));
                    i += d.len;
                }
                return chars.items;
            },
            .undefined => return &.{},
            else => return in.fail("'{s}' object is not iterable", .{value.typeName(v)}),
        }
    }

    fn bindTargets(in: *Interp, scope: *Scope, targets: []const []const u8, item: Value) Error!void {
        if (targets.len == 1) return scope.set(in.gpa, targets[0], item);
        const items = try in.unpack(item, targets.len);
        for (targets, items) |n, v| try scope.set(in.gpa, n, v);
    }

    fn renderFor(in: *Interp, scope: *Scope, f: *const ast.For) Error!Flow {
        var items = try in.iterate(try in.eval(scope, f.iter));
        if (f.filter) |cond| {
            var kept: std.ArrayListUnmanaged(Value) = .{};
            var fscope = Scope{ .parent = scope };
            for (items) |item| {
                try in.step();
                fscope.names.clearRetainingCapacity();
                fscope.values.clearRetainingCapacity();
                try in.bindTargets(&fscope, f.targets, item);
                if (value.truthy(try in.eval(&fscope, cond))) try kept.append(in.gpa, item);
            }
            items = kept.items;
        }
        if (items.len == 0) {
            _ = try in.renderNodes(scope, f.otherwise);
            return .normal;
        }
        const loop = try in.gpa.create(value.Loop);
        loop.* = .{ .items = items };
        // One scope reused by every iteration: each starts empty, as in jinja2.
        const body_scope = try in.gpa.create(Scope);
        body_scope.* = .{ .parent = scope };
        for (items, 0..) |item, i| {
            try in.step();
            body_scope.names.clearRetainingCapacity();
            body_scope.values.clearRetainingCapacity();
            loop.index0 = i;
            try body_scope.set(in.gpa, "loop", .{ .loop = loop });
            try in.bindTargets(body_scope, f.targets, item);
            const flow = try in.renderNodes(body_scope, f.body);
            if (flow == .brk) break;
        }
        return .normal;
    }

    // --- expressions ----------------------------------------------------------------------

    pub fn eval(in: *Interp, scope: *Scope, e: *const Expr) Error!Value {
        try in.enter();
        defer in.depth -= 1;
        return switch (e.*) {
            .constant => |c| c,
            .name => |n| in.lookup(scope, n),
            .list => |items| in.newList(try in.evalList(scope, items), false),
            .tuple => |items| in.newList(try in.evalList(scope, items), true),
            .dict => |items| in.evalDict(scope, items),
            .getattr => |g| in.getAttr(try in.eval(scope, g.obj), g.name),
            .getitem => |g| in.getItem(try in.eval(scope, g.obj), try in.eval(scope, g.index)),
            .slice => |s| in.evalSlice(scope, s.obj, s.start, s.stop, s.step),
            .call => in.evalCall(scope, e, null),
            .filter => |f| builtins.filter(in, f.name, try in.eval(scope, f.value.?), try in.evalArgs(scope, f.args)),
            .@"test" => |t| .{ .boolean = try builtins.testValue(in, t.name, try in.eval(scope, t.value), try in.evalArgs(scope, t.args)) },
            .neg => |x| in.negate(try in.eval(scope, x), true),
            .pos => |x| in.negate(try in.eval(scope, x), false),
            .not_ => |x| .{ .boolean = !value.truthy(try in.eval(scope, x)) },
            .binary => |b| in.binary(b.op, try in.eval(scope, b.left), try in.eval(scope, b.right)),
            .and_ => |b| blk: {
                const left = try in.eval(scope, b.left);
                break :blk if (!value.truthy(left)) left else try in.eval(scope, b.right);
            },
            .or_ => |b| blk: {
                const left = try in.eval(scope, b.left);
                break :blk if (value.truthy(left)) left else try in.eval(scope, b.right);
            },
            .compare => |c| in.evalCompare(scope, c.first, c.ops),
            .cond => |c| blk: {
                if (value.truthy(try in.eval(scope, c.cond))) break :blk try in.eval(scope, c.then);
                break :blk if (c.otherwise) |o| try in.eval(scope, o) else Value{ .undefined = .{ .name = "inline if" } };
            },
        };
    }

    fn lookup(in: *Interp, scope: *Scope, name: []const u8) Value {
        _ = in;
        if (scope.lookup(name)) |v| return v;
        if (std.meta.stringToEnum(value.Function, name)) |f| return .{ .function = f };
        return .{ .undefined = .{ .name = name } };
    }

    fn evalList(in: *Interp, scope: *Scope, items: []const *const Expr) Error![]const Value {
        const out = try in.gpa.alloc(Value, items.len);
        for (items, out) |e, *v| v.* = try in.eval(scope, e);
        return out;
    }

    fn evalDict(in: *Interp, scope: *Scope, items: []const Expr.DictItem) Error!Value {
        var entries: std.ArrayListUnmanaged(value.Entry) = .{};
        outer: for (items) |item| {
            const k = try in.eval(scope, item.key);
            const v = try in.eval(scope, item.value);
            for (entries.items) |*existing| {
                if (value.eql(existing.key, k, 0) catch false) {
                    existing.value = v;
                    continue :outer;
                }
            }
            try entries.append(in.gpa, .{ .key = k, .value = v });
        }
        return in.newDict(entries.items);
    }

    pub fn evalArgs(in: *Interp, scope: *Scope, args: ast.Args) Error!Args {
        const positional = try in.evalList(scope, args.positional);
        const keyword = try in.gpa.alloc(Args.Keyword, args.keyword.len);
        for (args.keyword, keyword) |k, *out| out.* = .{ .name = k.name, .value = try in.eval(scope, k.value) };
        return .{ .positional = positional, .keyword = keyword };
    }

    fn evalCall(in: *Interp, scope: *Scope, e: *const Expr, caller: ?*const value.Macro) Error!Value {
        const call = e.call;
        var func: Value = undefined;
        if (call.func.* == .getattr) {
            const g = call.func.getattr;
            const receiver = try in.eval(scope, g.obj);
            if (builtins.hasMethod(receiver, g.name)) {
                return builtins.callMethod(in, receiver, g.name, try in.evalArgs(scope, call.args));
            }
            func = try in.getAttr(receiver, g.name);
        } else {
            func = try in.eval(scope, call.func);
        }
        const args = try in.evalArgs(scope, call.args);
        return switch (func) {
            .macro => |m| in.callMacro(m, args, caller),
            .function => |f| builtins.callFunction(in, f, args),
            .method => |m| builtins.callMethod(in, m.receiver, m.name, args),
            .undefined => |u| in.failUndefined(u),
            .loop => in.fail("recursive loops are not supported", .{}),
            else => in.fail("'{s}' object is not callable", .{value.typeName(func)}),
        };
    }

    pub fn callMacro(in: *Interp, m: *const value.Macro, args: Args, caller: ?*const value.Macro) Error!Value {
        try in.step();
        in.calls += 1;
        defer in.calls -= 1;
        try in.enterBy(macro_call_depth);
        defer in.depth -= macro_call_depth;
        if (in.calls > in.limits.max_depth) return in.fail("macro calls nest deeper than the depth limit of {d}", .{in.limits.max_depth});
        const node = m.node;
        const scope = try in.gpa.create(Scope);
        scope.* = .{ .parent = m.scope };
        var bound = try in.gpa.alloc(bool, node.params.len);
        @memset(bound, false);
        var varargs: std.ArrayListUnmanaged(Value) = .{};
        for (args.positional, 0..) |v, i| {
            if (i < node.params.len) {
                try scope.set(in.gpa, node.params[i].name, v);
                bound[i] = true;
            } else try varargs.append(in.gpa, v);
        }
        var kwargs: std.ArrayListUnmanaged(value.Entry) = .{};
        kw: for (args.keyword) |k| {
            for (node.params, 0..) |p, i| if (std.mem.eql(u8, p.name, k.name)) {
                if (bound[i]) return in.fail("macro '{s}' got multiple values for argument '{s}'", .{ node.name, k.name });
                try scope.set(in.gpa, p.name, k.value);
                bound[i] = true;
                continue :kw;
            };
            try kwargs.append(in.gpa, .{ .key = Value.str(k.name), .value = k.value });
        }
        for (node.params, 0..) |p, i| if (!bound[i]) {
            const v = if (p.default) |d| try in.eval(scope, d) else Value{ .undefined = .{ .name = p.name } };
            try scope.set(in.gpa, p.name, v);
        };
        try scope.set(in.gpa, "varargs", try in.newList(varargs.items, true));
        try scope.set(in.gpa, "kwargs", try in.newDict(kwargs.items));
        if (caller) |c| try scope.set(in.gpa, "caller", .{ .macro = c });
        return Value.str(try in.capture(scope, node.body));
    }

    pub fn getAttr(in: *Interp, obj_in: Value, name: []const u8) Error!Value {
        const obj = obj_in.plain();
        switch (obj) {
            .undefined => |u| return in.failUndefined(u),
            .dict => |d| {
                if (builtins.methodKind(obj, name)) |kind| return in.methodValue(obj, name, kind);
                return d.getStr(name) orelse .{ .undefined = .{ .name = name, .owner = "dict" } };
            },
            .namespace => |n| return n.getStr(name) orelse .{ .undefined = .{ .name = name, .owner = "Namespace" } },
            .loop => |l| return loopAttr(in, l, name),
            else => {
                if (builtins.methodKind(obj, name)) |kind| return in.methodValue(obj, name, kind);
                return .{ .undefined = .{ .name = name, .owner = value.typeName(obj) } };
            },
        }
    }

    fn methodValue(in: *Interp, obj: Value, name: []const u8, kind: builtins.MethodKind) Error!Value {
        if (kind == .unsafe) return .{ .undefined = .{ .name = name, .owner = value.typeName(obj), .unsafe = true } };
        const m = try in.gpa.create(value.Method);
        m.* = .{ .receiver = obj, .name = name };
        return .{ .method = m };
    }

    fn loopAttr(in: *Interp, l: *value.Loop, name: []const u8) Error!Value {
        const n = l.items.len;
        const i = l.index0;
        const int = struct {
            fn of(x: usize) Value {
                return .{ .int = @intCast(x) };
            }
        }.of;
        if (std.mem.eql(u8, name, "index")) return int(i + 1);
        if (std.mem.eql(u8, name, "index0")) return int(i);
        if (std.mem.eql(u8, name, "revindex")) return int(n - i);
        if (std.mem.eql(u8, name, "revindex0")) return int(n - i - 1);
        if (std.mem.eql(u8, name, "first")) return .{ .boolean = i == 0 };
        if (std.mem.eql(u8, name, "last")) return .{ .boolean = i + 1 == n };
        if (std.mem.eql(u8, name, "length")) return int(n);
        if (std.mem.eql(u8, name, "depth")) return int(l.depth0 + 1);
        if (std.mem.eql(u8, name, "depth0")) return int(l.depth0);
        if (std.mem.eql(u8, name, "previtem")) return if (i > 0) l.items[i - 1] else .{ .undefined = .{ .name = "previtem", .owner = "LoopContext" } };
        if (std.mem.eql(u8, name, "nextitem")) return if (i + 1 < n) l.items[i + 1] else .{ .undefined = .{ .name = "nextitem", .owner = "LoopContext" } };
        if (std.mem.eql(u8, name, "cycle")) return in.methodValue(.{ .loop = l }, "cycle", .safe);
        return .{ .undefined = .{ .name = name, .owner = "LoopContext" } };
    }

    pub fn getItem(in: *Interp, obj_in: Value, key_in: Value) Error!Value {
        const obj = obj_in.plain();
        const key = key_in.plain();
        switch (obj) {
            .undefined => |u| return in.failUndefined(u),
            .dict => |d| {
                if (d.get(key)) |v| return v;
                if (key == .string) return in.getAttr(obj, key.string);
                return .{ .undefined = .{ .name = "?", .owner = "dict" } };
            },
            .list => |l| {
                if (l.lazy != .none) return .{ .undefined = .{ .name = "?", .owner = value.typeName(obj) } };
                const idx = value.asInt(key) orelse {
                    if (key == .string) return in.getAttr(obj, key.string);
                    return .{ .undefined = .{ .name = "?", .owner = value.typeName(obj) } };
                };
                const n: i64 = @intCast(l.items.len);
                const i = if (idx < 0) idx + n else idx;
                if (i < 0 or i >= n) return .{ .undefined = .{ .owner = value.typeName(obj), .index = idx } };
                return l.items[@intCast(i)];
            },
            .string => |s| {
                const idx = value.asInt(key) orelse {
                    if (key == .string) return in.getAttr(obj, key.string);
                    return .{ .undefined = .{ .name = "?", .owner = "str" } };
                };
                const n: i64 = @intCast(pystr.length(s));
                const i = if (idx < 0) idx + n else idx;
                if (i < 0 or i >= n) return .{ .undefined = .{ .owner = "str", .index = idx } };
                const start = pystr.offsetOf(s, @intCast(i));
                return Value.str(s[start .. start + pystr.decode(s, start).len]);
            },
            else => {
                if (key == .string) return in.getAttr(obj, key.string);
                return .{ .undefined = .{ .name = "?", .owner = value.typeName(obj) } };
            },
        }
    }

    fn sliceIndex(in: *Interp, scope: *Scope, e: ?*const Expr) Error!?i64 {
        const x = e orelse return null;
        const v = try in.eval(scope, x);
        if (v == .none) return null;
        return value.asInt(v) orelse in.fail("slice indices must be integers or None", .{});
    }

    // noinline (as repeat): what is inlined into eval() enlarges every level of its recursion
    noinline fn evalSlice(in: *Interp, scope: *Scope, obj_e: *const Expr, start_e: ?*const Expr, stop_e: ?*const Expr, step_e: ?*const Expr) Error!Value {
        const obj = (try in.eval(scope, obj_e)).plain();
        const start = try in.sliceIndex(scope, start_e);
        const stop = try in.sliceIndex(scope, stop_e);
        const step_v = (try in.sliceIndex(scope, step_e)) orelse 1;
        if (step_v == 0) return in.fail("slice step cannot be zero", .{});
        var items: []const Value = undefined;
        switch (obj) {
            .undefined => |u| return in.failUndefined(u),
            .list => |l| {
                if (l.lazy != .none) return in.fail("'{s}' object is not subscriptable", .{value.typeName(obj)});
                items = l.items;
            },
            .string => |s| {
                if (step_v == 1) { // fast path: byte ranges of code points
                    const n: i64 = @intCast(pystr.length(s));
                    const r = sliceRange(n, start, stop, 1);
                    if (r.len == 0) return Value.str("");
                    const a = pystr.offsetOf(s, @intCast(r.first));
                    const b = a + pystr.offsetOf(s[a..], r.len);
                    return Value.str(s[a..b]);
                }
                items = try in.iterate(obj);
            },
            // jinja2 slices with Python's own subscript: no Undefined fallback here.
            .dict => return in.fail("unhashable type: 'slice'", .{}),
            else => return in.fail("'{s}' object is not subscriptable", .{value.typeName(obj)}),
        }
        const r = sliceRange(@intCast(items.len), start, stop, step_v);
        const out = try in.gpa.alloc(Value, r.len);
        // i128: the index after the last taken can be past i64 (x[1::9223372036854775807])
        for (out, 0..) |*v, k| v.* = items[@intCast(r.first + @as(i128, k) * step_v)];
        if (obj == .string) {
            var buf: std.ArrayListUnmanaged(u8) = .{};
            for (out) |c| try buf.appendSlice(in.gpa, c.string);
            return Value.str(buf.items);
        }
        return in.newList(out, obj.list.is_tuple);
    }

    /// Python's slice.indices(): the first index and the number of elements taken.
    fn sliceRange(n: i64, start_o: ?i64, stop_o: ?i64, step_v: i64) struct { first: i64, len: usize } {
        const neg = step_v < 0;
        const lower: i64 = if (neg) -1 else 0;
        const upper: i64 = if (neg) n - 1 else n;
        const clamp = struct {
            fn f(x: i64, nn: i64, lo: i64, hi: i64) i64 {
                const y = if (x < 0) x + nn else x;
                return std.math.clamp(y, lo, hi);
            }
        }.f;
        const start = if (start_o) |s| clamp(s, n, lower, upper) else if (neg) upper else lower;
        const stop = if (stop_o) |s| clamp(s, n, lower, upper) else if (neg) lower else upper;
        // i128: -step overflows i64 for a step of minInt(i64)
        const step_w: i128 = step_v;
        var len: i128 = 0;
        if (neg) {
            if (stop < start) len = @divFloor(@as(i128, start) - stop - 1, -step_w) + 1;
        } else {
            if (start < stop) len = @divFloor(@as(i128, stop) - start - 1, step_w) + 1;
        }
        return .{ .first = start, .len = @intCast(len) }; // at most n
    }

    fn negate(in: *Interp, v: Value, neg: bool) Error!Value {
        return switch (v) {
            .int => |i| .{ .int = if (neg) std.math.negate(i) catch return in.fail("integer overflow", .{}) else i },
            .boolean => |b| .{ .int = if (neg) -@as(i64, @intFromBool(b)) else @intFromBool(b) },
            .float => |f| .{ .float = if (neg) -f else f },
            .undefined => |u| in.failUndefined(u),
            else => in.fail("bad operand type for unary {s}: '{s}'", .{ if (neg) "-" else "+", value.typeName(v) }),
        };
    }

    fn opSymbol(op: ast.BinOp) []const u8 {
        return switch (op) {
            .add => "+",
            .sub => "-",
            .mul => "*",
            .div => "/",
            .floordiv => "//",
            .mod => "%",
            .pow => "**",
            .concat => "~",
        };
    }

    pub fn binary(in: *Interp, op: ast.BinOp, a_in: Value, b_in: Value) Error!Value {
        if (op == .add and (a_in == .markup or b_in == .markup) and (a_in == .string or a_in == .markup) and (b_in == .string or b_in == .markup)) {
            // Markup + str escapes the str (markupsafe), and the result stays Markup.
            const l = if (a_in == .markup) a_in.markup else try builtins.escape(in, a_in.string);
            const r = if (b_in == .markup) b_in.markup else try builtins.escape(in, b_in.string);
            try in.checkSize(l.len + r.len);
            return .{ .markup = try std.mem.concat(in.gpa, u8, &.{ l, r }) };
        }
        const a = a_in.plain();
        const b = b_in.plain();
        if (op == .mod and a == .string) return builtins.percentFormat(in, a.string, b); // str(Undefined) is ""
        if (op == .concat) {
            const l = try in.toStr(a);
            const r = try in.toStr(b);
            try in.checkSize(l.len + r.len);
            return Value.str(try std.mem.concat(in.gpa, u8, &.{ l, r }));
        }
        if (a == .undefined) return in.failUndefined(a.undefined);
        if (b == .undefined) return in.failUndefined(b.undefined);
        if (value.asInt(a)) |x| if (value.asInt(b)) |y| return in.intOp(op, x, y);
        if (value.asNumber(a)) |x| if (value.asNumber(b)) |y| return in.floatOp(op, x, y);
        switch (op) {
            .add => {
                if (a == .string and b == .string) {
                    try in.checkSize(a.string.len + b.string.len);
                    return Value.str(try std.mem.concat(in.gpa, u8, &.{ a.string, b.string }));
                }
                if (a == .list and b == .list and a.list.is_tuple == b.list.is_tuple and a.list.lazy == .none and b.list.lazy == .none) {
                    try in.checkItems(a.list.items.len + b.list.items.len);
                    return in.newList(try std.mem.concat(in.gpa, Value, &.{ a.list.items, b.list.items }), a.list.is_tuple);
                }
                if (a == .string) return in.fail("can only concatenate str (not \"{s}\") to str", .{value.typeName(b)});
                if (a == .list) return in.fail("can only concatenate list (not \"{s}\") to list", .{value.typeName(b)});
            },
            .mul => {
                if (value.asInt(b)) |n| if (a == .string or a == .list) return in.repeat(a, n);
                if (value.asInt(a)) |n| if (b == .string or b == .list) return in.repeat(b, n);
            },
            .mod => if (a == .string) return builtins.percentFormat(in, a.string, b),
            else => {},
        }
        return in.fail("unsupported operand type(s) for {s}: '{s}' and '{s}'", .{ opSymbol(op), value.typeName(a), value.typeName(b) });
    }

    /// `s * n`, `list * n`. `n` is checked in i64 before any cast (usize is 32 bits on wasm32),
    /// and an empty operand repeats to empty without looping `n` times.
    noinline fn repeat(in: *Interp, v: Value, n_signed: i64) Error!Value {
        const len = if (v == .string) v.string.len else v.list.items.len;
        const n: usize = if (n_signed <= 0 or len == 0) 0 else std.math.cast(usize, n_signed) orelse std.math.maxInt(usize);
        const total = std.math.mul(usize, len, n) catch std.math.maxInt(usize);
        if (v == .string) {
            try in.checkSize(total);
            const out = try in.gpa.alloc(u8, total);
            fillRepeated(u8, out, v.string);
            return Value.str(out);
        }
        try in.checkItems(total);
        const out = try in.gpa.alloc(Value, total);
        fillRepeated(Value, out, v.list.items);
        return in.newList(out, v.list.is_tuple);
    }

    /// Fills `out` (a multiple of `part` long) with copies of `part`, doubling what is already
    /// there: log(n) copies, where 'x' * 4000000 one by one takes seconds.
    fn fillRepeated(comptime T: type, out: []T, part: []const T) void {
        if (out.len == 0) return;
        @memcpy(out[0..part.len], part);
        var filled = part.len;
        while (filled < out.len) {
            const n = @min(filled, out.len - filled);
            @memcpy(out[filled..][0..n], out[0..n]);
            filled += n;
        }
    }

    fn intOp(in: *Interp, op: ast.BinOp, x: i64, y: i64) Error!Value {
        const overflow = "integer overflow";
        switch (op) {
            .add => return .{ .int = std.math.add(i64, x, y) catch return in.fail(overflow, .{}) },
            .sub => return .{ .int = std.math.sub(i64, x, y) catch return in.fail(overflow, .{}) },
            .mul => return .{ .int = std.math.mul(i64, x, y) catch return in.fail(overflow, .{}) },
            .div => {
                if (y == 0) return in.fail("division by zero", .{});
                return .{ .float = @as(f64, @floatFromInt(x)) / @as(f64, @floatFromInt(y)) };
            },
            .floordiv => {
                if (y == 0) return in.fail("integer division or modulo by zero", .{});
                return .{ .int = std.math.divFloor(i64, x, y) catch return in.fail(overflow, .{}) };
            },
            .mod => {
                if (y == 0) return in.fail("integer division or modulo by zero", .{});
                if (y == -1) return .{ .int = 0 }; // minInt(i64) % -1 would overflow the division
                // Python's sign-of-the-divisor modulo; wrapping is exact since the result fits
                return .{ .int = x -% @divFloor(x, y) *% y };
            },
            .pow => {
                if (y < 0) return .{ .float = std.math.pow(f64, @floatFromInt(x), @floatFromInt(y)) };
                var result: i64 = 1;
                var i: i64 = 0;
                while (i < y) : (i += 1) {
                    result = std.math.mul(i64, result, x) catch return in.fail(overflow, .{});
                    if (result == 0 or result == 1) break;
                }
                if (result == 1 and x == -1 and @mod(y, 2) == 1) result = -1;
                return .{ .int = result };
            },
            .concat => unreachable,
        }
    }

    fn floatOp(in: *Interp, op: ast.BinOp, x: f64, y: f64) Error!Value {
        return .{ .float = switch (op) {
            .add => x + y,
            .sub => x - y,
            .mul => x * y,
            .div => if (y == 0) return in.fail("float division by zero", .{}) else x / y,
            .floordiv => if (y == 0) return in.fail("float floor division by zero", .{}) else @floor(x / y),
            .mod => blk: {
                if (y == 0) return in.fail("float modulo", .{});
                const r = @rem(x, y);
                break :blk if (r != 0 and ((r < 0) != (y < 0))) r + y else r;
            },
            .pow => std.math.pow(f64, x, y),
            .concat => unreachable,
        } };
    }

    fn evalCompare(in: *Interp, scope: *Scope, first: *const Expr, ops: []const Expr.Operand) Error!Value {
        var left = try in.eval(scope, first);
        for (ops) |o| {
            const right = try in.eval(scope, o.expr);
            if (!try in.compareOp(o.op, left, right)) return .{ .boolean = false };
            left = right;
        }
        return .{ .boolean = true };
    }

    pub fn compareOp(in: *Interp, op: ast.CmpOp, a: Value, b: Value) Error!bool {
        switch (op) {
            .eq => return value.eql(a, b, 0) catch |err| in.mapDataError(err),
            .ne => return !(value.eql(a, b, 0) catch |err| return in.mapDataError(err)),
            .in => return in.contains(b, a),
            .not_in => return !try in.contains(b, a),
            else => {},
        }
        if (a == .undefined) return in.failUndefined(a.undefined);
        if (b == .undefined) return in.failUndefined(b.undefined);
        const order = value.compare(a, b, 0) catch |err| switch (err) {
            error.TooDeep => return in.mapDataError(err),
            error.Unorderable => {
                const sym = switch (op) {
                    .lt => "<",
                    .le => "<=",
                    .gt => ">",
                    else => ">=",
                };
                return in.fail("'{s}' not supported between instances of '{s}' and '{s}'", .{ sym, value.typeName(a), value.typeName(b) });
            },
        };
        return switch (op) {
            .lt => order == .lt,
            .le => order != .gt,
            .gt => order == .gt,
            .ge => order != .lt,
            else => unreachable,
        };
    }

    /// Python's `item in container`.
    pub fn contains(in: *Interp, container_in: Value, item_in: Value) Error!bool {
        const container = container_in.plain();
        const item = item_in.plain();
        switch (container) {
            .string => |s| {
                if (item == .undefined) return in.failUndefined(item.undefined);
                if (item != .string) return in.fail("'in <string>' requires string as left operand, not {s}", .{value.typeName(item)});
                return std.mem.indexOf(u8, s, item.string) != null;
            },
            .list => |l| {
                for (l.items) |x| if (value.eql(x, item, 0) catch |err| return in.mapDataError(err)) return true;
                return false;
            },
            .dict => |d| {
                if (item == .list or item == .dict or item == .namespace) return in.fail("unhashable type: '{s}'", .{value.typeName(item)});
                return d.get(item) != null;
            },
            .namespace => |n| return item == .string and n.getStr(item.string) != null,
            .undefined => return false,
            else => return in.fail("argument of type '{s}' is not iterable", .{value.typeName(container)}),
        }
    }
};

test {
    std.testing.refAllDecls(@This());
}
