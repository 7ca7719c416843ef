//! Template values with the Python semantics jinja2 gives them: truthiness, equality,
//! ordering, str() and repr(). Lists and dicts are immutable (the sandbox forbids mutation);
//! only a `namespace()` changes, through `{% set ns.attr = ... %}`.
const std = @import("std");
const ast = @import("ast.zig");
const pystr = @import("pystr.zig");
const Allocator = std.mem.Allocator;

/// Nesting beyond this in printed, compared or serialized data is an error, not a stack
/// overflow (Python raises RecursionError about there too).
pub const max_data_depth = 400;

pub const Value = union(enum) {
    undefined: Undefined,
    none,
    boolean: bool,
    int: i64,
    float: f64,
    string: []const u8,
    /// markupsafe.Markup (from `|safe`, `|escape`): a string that escapes what is added to it.
    markup: []const u8,
    list: *const List,
    dict: *const Dict,
    namespace: *Namespace,
    macro: *const Macro,
    function: Function,
    method: *const Method,
    loop: *Loop,

    pub fn str(s: []const u8) Value {
        return .{ .string = s };
    }

    /// Markup as the plain string it is everywhere but in `+`, `%` and escaping.
    pub fn plain(v: Value) Value {
        return if (v == .markup) .{ .string = v.markup } else v;
    }
};

/// jinja2's default Undefined: prints as "", is falsy and iterates as empty; other uses fail
/// with the message jinja2 gives.
pub const Undefined = struct {
    /// The variable, attribute or key that was missing.
    name: []const u8 = "",
    /// Python type name of the object it was looked up on (null: a plain variable).
    owner: ?[]const u8 = null,
    /// The name was an integer index ("has no element").
    index: ?i64 = null,
    /// An attribute the sandbox refuses (calling it is a security error).
    unsafe: bool = false,

    /// Message of the UndefinedError jinja2 raises on use; allocated in `gpa`.
    pub fn message(u: Undefined, gpa: Allocator) Allocator.Error![]const u8 {
        if (u.unsafe) return std.fmt.allocPrint(gpa, "access to attribute '{s}' of '{s}' object is unsafe.", .{ u.name, u.owner orelse "object" });
        if (u.owner) |owner| {
            const shown = if (std.mem.eql(u8, owner, "NoneType")) "None" else try std.fmt.allocPrint(gpa, "'{s} object'", .{owner});
            if (u.index) |i| return std.fmt.allocPrint(gpa, "{s} has no element {d}", .{ shown, i });
            return std.fmt.allocPrint(gpa, "{s} has no attribute '{s}'", .{ shown, u.name });
        }
        return std.fmt.allocPrint(gpa, "'{s}' is undefined", .{u.name});
    }
};

pub const List = struct {
    items: []const Value,
    is_tuple: bool = false,
    /// Not a list in Python but something iterable that jinja2 hands around: a generator (what
    /// map/select/... return) or a dict view. They iterate like lists, but tojson, len() and
    /// printing treat them as Python does.
    lazy: Lazy = .none,

    pub const Lazy = enum { none, generator, dict_items, dict_keys, dict_values };
};

pub const Entry = struct { key: Value, value: Value };

pub const Dict = struct {
    entries: []const Entry,

    /// Looks up a string key (the common case: JSON objects and attribute access).
    pub fn getStr(d: *const Dict, key: []const u8) ?Value {
        for (d.entries) |e| {
            if (e.key == .string and std.mem.eql(u8, e.key.string, key)) return e.value;
        }
        return null;
    }

    pub fn get(d: *const Dict, key: Value) ?Value {
        for (d.entries) |e| {
            if (eqlShallow(e.key, key)) return e.value;
        }
        return null;
    }
};

pub const Namespace = struct {
    entries: std.ArrayListUnmanaged(Entry) = .{},

    pub fn getStr(n: *const Namespace, key: []const u8) ?Value {
        for (n.entries.items) |e| {
            if (std.mem.eql(u8, e.key.string, key)) return e.value;
        }
        return null;
    }

    pub fn put(n: *Namespace, gpa: Allocator, key: []const u8, v: Value) Allocator.Error!void {
        for (n.entries.items) |*e| {
            if (std.mem.eql(u8, e.key.string, key)) {
                e.value = v;
                return;
            }
        }
        try n.entries.append(gpa, .{ .key = Value.str(key), .value = v });
    }
};

/// Variables of one block (template top level, a macro call, a for-loop iteration). Lookups
/// walk outwards; `set` writes to the innermost scope, so loop bodies do not leak, as in jinja2.
pub const Scope = struct {
    parent: ?*Scope,
    names: std.ArrayListUnmanaged([]const u8) = .{},
    values: std.ArrayListUnmanaged(Value) = .{},

    pub fn lookup(scope: *const Scope, name: []const u8) ?Value {
        var s: ?*const Scope = scope;
        while (s) |cur| : (s = cur.parent) {
            var i = cur.names.items.len;
            while (i > 0) {
                i -= 1;
                if (std.mem.eql(u8, cur.names.items[i], name)) return cur.values.items[i];
            }
        }
        return null;
    }

    pub fn set(scope: *Scope, gpa: Allocator, name: []const u8, v: Value) Allocator.Error!void {
        for (scope.names.items, 0..) |n, i| {
            if (std.mem.eql(u8, n, name)) {
                scope.values.items[i] = v;
                return;
            }
        }
        try scope.names.append(gpa, name);
        try scope.values.append(gpa, v);
    }
};

/// A macro (or a call block's `caller`) with the scope it was defined in: jinja2 macros see
/// the variables of their definition site as they are when called.
pub const Macro = struct {
    node: *const ast.Macro,
    scope: *Scope,
};

/// Global functions (HF's environment globals plus jinja2's defaults).
pub const Function = enum { raise_exception, strftime_now, namespace, range, dict, joiner, cycler, lipsum };

/// A method looked up but not yet called (`x.items` printed or passed along).
pub const Method = struct {
    receiver: Value,
    name: []const u8,
};

pub const Loop = struct {
    items: []const Value,
    index0: usize = 0,
    depth0: usize = 0,
};

pub fn typeName(v: Value) []const u8 {
    return switch (v) {
        .undefined => "Undefined",
        .none => "NoneType",
        .boolean => "bool",
        .int => "int",
        .float => "float",
        .string => "str",
        .markup => "Markup",
        .list => |l| switch (l.lazy) {
            .none => if (l.is_tuple) "tuple" else "list",
            else => @tagName(l.lazy),
        },
        .dict => "dict",
        .namespace => "Namespace",
        .macro => "Macro",
        .function => "function",
        .method => "builtin_function_or_method",
        .loop => "LoopContext",
    };
}

pub fn truthy(v: Value) bool {
    return switch (v) {
        .undefined, .none => false,
        .boolean => |b| b,
        .int => |i| i != 0,
        .float => |f| f != 0,
        .string, .markup => |s| s.len > 0,
        .list => |l| l.lazy == .generator or l.items.len > 0,
        .dict => |d| d.entries.len > 0,
        else => true,
    };
}

/// The numeric value of bool/int/float (Python treats bools as ints), or null.
pub fn asNumber(v: Value) ?f64 {
    return switch (v) {
        .boolean => |b| @floatFromInt(@intFromBool(b)),
        .int => |i| @floatFromInt(i),
        .float => |f| f,
        else => null,
    };
}

pub fn asInt(v: Value) ?i64 {
    return switch (v) {
        .boolean => |b| @intFromBool(b),
        .int => |i| i,
        else => null,
    };
}

fn eqlShallow(a: Value, b: Value) bool {
    return eql(a, b, 0) catch false;
}

pub const DepthError = error{TooDeep};

/// Python's `==`.
pub fn eql(a_in: Value, b_in: Value, depth: usize) DepthError!bool {
    if (depth > max_data_depth) return error.TooDeep;
    const a = a_in.plain();
    const b = b_in.plain();
    if (asInt(a)) |x| if (asInt(b)) |y| return x == y;
    if (asNumber(a)) |x| if (asNumber(b)) |y| return x == y;
    switch (a) {
        .undefined => return b == .undefined,
        .none => return b == .none,
        .string => |s| return b == .string and std.mem.eql(u8, s, b.string),
        .list => |l| {
            if (l.lazy != .none or (b == .list and b.list.lazy != .none)) return b == .list and b.list == l;
            if (b != .list or b.list.is_tuple != l.is_tuple or b.list.items.len != l.items.len) return false;
            for (l.items, b.list.items) |x, y| if (!try eql(x, y, depth + 1)) return false;
            return true;
        },
        .dict => |d| {
            if (b != .dict or b.dict.entries.len != d.entries.len) return false;
            for (d.entries) |e| {
                const other = b.dict.get(e.key) orelse return false;
                if (!try eql(e.value, other, depth + 1)) return false;
            }
            return true;
        },
        .namespace => |n| return b == .namespace and b.namespace == n,
        .macro => |m| return b == .macro and b.macro == m,
        .function => |f| return b == .function and b.function == f,
        .loop => |l| return b == .loop and b.loop == l,
        else => return false,
    }
}

pub const CompareError = error{ TooDeep, Unorderable };

/// Python's ordering for `<` and friends and for sorting; mixed types are unorderable.
pub fn compare(a_in: Value, b_in: Value, depth: usize) CompareError!std.math.Order {
    if (depth > max_data_depth) return error.TooDeep;
    const a = a_in.plain();
    const b = b_in.plain();
    if (asInt(a)) |x| if (asInt(b)) |y| return std.math.order(x, y);
    if (asNumber(a)) |x| if (asNumber(b)) |y| {
        if (std.math.isNan(x) or std.math.isNan(y)) return .gt;
        return std.math.order(x, y);
    };
    if (a == .string and b == .string) return std.mem.order(u8, a.string, b.string);
    if (a == .list and b == .list and a.list.is_tuple == b.list.is_tuple) {
        const n = @min(a.list.items.len, b.list.items.len);
        for (a.list.items[0..n], b.list.items[0..n]) |x, y| {
            if (!try eql(x, y, depth + 1)) return compare(x, y, depth + 1);
        }
        return std.math.order(a.list.items.len, b.list.items.len);
    }
    return error.Unorderable;
}

pub const WriteError = error{ OutOfMemory, TooDeep };

/// Appends Python's str(v) (what `{{ v }}` prints).
pub fn writeStr(gpa: Allocator, out: *std.ArrayListUnmanaged(u8), v: Value) WriteError!void {
    switch (v) {
        .undefined => {},
        .string, .markup => |s| try out.appendSlice(gpa, s),
        else => try writeRepr(gpa, out, v, 0),
    }
}

/// Appends Python's repr(v) (how values print inside lists and dicts).
pub fn writeRepr(gpa: Allocator, out: *std.ArrayListUnmanaged(u8), v: Value, depth: usize) WriteError!void {
    if (depth > max_data_depth) return error.TooDeep;
    switch (v) {
        .undefined => try out.appendSlice(gpa, "Undefined"),
        .none => try out.appendSlice(gpa, "None"),
        .boolean => |b| try out.appendSlice(gpa, if (b) "True" else "False"),
        .int => |i| try out.writer(gpa).print("{d}", .{i}),
        .float => |f| try pystr.writeFloat(gpa, out, f),
        .string => |s| try pystr.writeRepr(gpa, out, s),
        .markup => |s| {
            try out.appendSlice(gpa, "Markup(");
            try pystr.writeRepr(gpa, out, s);
            try out.append(gpa, ')');
        },
        .list => |l| {
            if (l.lazy == .generator) return out.appendSlice(gpa, "<generator object>");
            if (l.lazy != .none) {
                try out.appendSlice(gpa, @tagName(l.lazy));
                try out.append(gpa, '(');
            }
            try out.append(gpa, if (l.is_tuple) '(' else '[');
            for (l.items, 0..) |item, i| {
                if (i > 0) try out.appendSlice(gpa, ", ");
                try writeRepr(gpa, out, item, depth + 1);
            }
            if (l.is_tuple and l.items.len == 1) try out.append(gpa, ',');
            try out.append(gpa, if (l.is_tuple) ')' else ']');
            if (l.lazy != .none) try out.append(gpa, ')');
        },
        .dict => |d| try writeEntries(gpa, out, d.entries, depth),
        .namespace => |n| {
            try out.appendSlice(gpa, "<Namespace ");
            try writeEntries(gpa, out, n.entries.items, depth);
            try out.append(gpa, '>');
        },
        .macro => |m| try out.writer(gpa).print("<Macro '{s}'>", .{m.node.name}),
        .function => |f| try out.writer(gpa).print("<function {s}>", .{@tagName(f)}),
        .method => |m| try out.writer(gpa).print("<built-in method {s} of {s} object>", .{ m.name, typeName(m.receiver) }),
        .loop => |l| try out.writer(gpa).print("<LoopContext {d}/{d}>", .{ l.index0 + 1, l.items.len }),
    }
}

fn writeEntries(gpa: Allocator, out: *std.ArrayListUnmanaged(u8), entries: []const Entry, depth: usize) WriteError!void {
    try out.append(gpa, '{');
    for (entries, 0..) |e, i| {
        if (i > 0) try out.appendSlice(gpa, ", ");
        try writeRepr(gpa, out, e.key, depth + 1);
        try out.appendSlice(gpa, ": ");
        try writeRepr(gpa, out, e.value, depth + 1);
    }
    try out.append(gpa, '}');
}

/// Converts request JSON into template values (objects keep their key order).
pub fn fromJson(gpa: Allocator, j: std.json.Value, depth: usize) (Allocator.Error || DepthError)!Value {
    if (depth > max_data_depth) return error.TooDeep;
    return switch (j) {
        .null => .none,
        .bool => |b| .{ .boolean = b },
        .integer => |i| .{ .int = i },
        .float => |f| .{ .float = f },
        .number_string => |s| .{ .float = std.fmt.parseFloat(f64, s) catch std.math.inf(f64) },
        .string => |s| .{ .string = s },
        .array => |a| blk: {
            const items = try gpa.alloc(Value, a.items.len);
            for (a.items, items) |src, *dst| dst.* = try fromJson(gpa, src, depth + 1);
            const l = try gpa.create(List);
            l.* = .{ .items = items };
            break :blk .{ .list = l };
        },
        .object => |o| blk: {
            const entries = try gpa.alloc(Entry, o.count());
            var it = o.iterator();
            var i: usize = 0;
            while (it.next()) |kv| : (i += 1) {
                entries[i] = .{ .key = Value.str(kv.key_ptr.*), .value = try fromJson(gpa, kv.value_ptr.*, depth + 1) };
            }
            const d = try gpa.create(Dict);
            d.* = .{ .entries = entries };
            break :blk .{ .dict = d };
        },
    };
}

test "repr of nested values" {
    var arena = std.heap.ArenaAllocator.init(std.testing.allocator);
    defer arena.deinit();
    const gpa = arena.allocator();
    const items = [_]Value{ .{ .int = 1 }, Value.str("it's"), .none, .{ .boolean = true }, .{ .float = 1.5 } };
    const l = List{ .items = &items };
    var out: std.ArrayListUnmanaged(u8) = .{};
    try writeStr(gpa, &out, .{ .list = &l });
    try std.testing.expectEqualStrings("[1, \"it's\", None, True, 1.5]", out.items);
}
