//! The parsed template: statements (`Node`) and expressions (`Expr`). All of it lives in the
//! render's arena.
const std = @import("std");
const Value = @import("value.zig").Value;

pub const BinOp = enum { add, sub, mul, div, floordiv, mod, pow, concat };
pub const CmpOp = enum { eq, ne, lt, le, gt, ge, in, not_in };

pub const Kwarg = struct { name: []const u8, value: *const Expr };

pub const Args = struct {
    positional: []const *const Expr = &.{},
    keyword: []const Kwarg = &.{},
};

pub const Expr = union(enum) {
    constant: Value,
    name: []const u8,
    list: []const *const Expr,
    tuple: []const *const Expr,
    dict: []const DictItem,
    getattr: struct { obj: *const Expr, name: []const u8 },
    getitem: struct { obj: *const Expr, index: *const Expr },
    slice: struct { obj: *const Expr, start: ?*const Expr, stop: ?*const Expr, step: ?*const Expr },
    call: struct { func: *const Expr, args: Args },
    /// `value` is null in a `{% filter %}` block head (the body is the value).
    filter: struct { value: ?*const Expr, name: []const u8, args: Args },
    @"test": struct { value: *const Expr, name: []const u8, args: Args },
    neg: *const Expr,
    pos: *const Expr,
    not_: *const Expr,
    binary: struct { op: BinOp, left: *const Expr, right: *const Expr },
    and_: struct { left: *const Expr, right: *const Expr },
    or_: struct { left: *const Expr, right: *const Expr },
    compare: struct { first: *const Expr, ops: []const Operand },
    cond: struct { cond: *const Expr, then: *const Expr, otherwise: ?*const Expr },

    pub const DictItem = struct { key: *const Expr, value: *const Expr };
    pub const Operand = struct { op: CmpOp, expr: *const Expr };
};

pub const Param = struct { name: []const u8, default: ?*const Expr };

pub const Macro = struct {
    name: []const u8,
    params: []const Param,
    body: []const Node,
};

/// Where `{% set %}` stores: plain names (several unpack a sequence) or `ns.attr`.
pub const Target = union(enum) {
    names: []const []const u8,
    attr: struct { object: []const u8, name: []const u8 },
};

pub const Node = union(enum) {
    text: []const u8,
    print: *const Expr,
    @"if": struct { branches: []const Branch, otherwise: []const Node },
    @"for": *const For,
    set: struct { target: Target, value: *const Expr },
    /// `{% set x %}body{% endset %}`, optionally `{% set x | filter %}`.
    set_block: struct { target: Target, filter: ?*const Expr, body: []const Node },
    macro: *const Macro,
    /// `{% call(params) macro(args) %}body{% endcall %}`: `caller` is the body as a macro.
    call_block: struct { call: *const Expr, caller: *const Macro },
    /// `{% filter f %}body{% endfilter %}`: `filter` is a filter chain whose innermost value is null.
    filter_block: struct { filter: *const Expr, body: []const Node },
    @"break",
    @"continue",

    pub const Branch = struct { cond: *const Expr, body: []const Node };
};

pub const For = struct {
    targets: []const []const u8,
    iter: *const Expr,
    filter: ?*const Expr,
    body: []const Node,
    otherwise: []const Node,
    recursive: bool,
};

test {
    std.testing.refAllDecls(@This());
}
