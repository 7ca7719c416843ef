//! Builds the AST from tokens, following jinja2/parser.py's grammar and precedence (including
//! its quirks: `**` is left-associative, a test takes one bare argument, `{{ a, b }}` is a
//! tuple). Nesting is bounded by the depth limit so hostile input cannot overflow the stack.
const std = @import("std");
const ast = @import("ast.zig");
const lexer = @import("lexer.zig");
const builtins = @import("builtins.zig");
const Value = @import("value.zig").Value;
const Allocator = std.mem.Allocator;
const Token = lexer.Token;
const Expr = ast.Expr;
const Node = ast.Node;

pub const Error = lexer.Error;

/// Parses `source`; the AST is allocated in `gpa`. On error.TemplateError, `failure` holds the
/// message and line.
pub fn parse(gpa: Allocator, source: []const u8, max_depth: usize, failure: *lexer.Failure) Error![]const Node {
    const tokens = try lexer.tokenize(gpa, source, failure);
    var p = Parser{ .gpa = gpa, .tokens = tokens, .failure = failure, .max_depth = max_depth };
    return p.subparse(&.{});
}

const Parser = struct {
    gpa: Allocator,
    tokens: []const Token,
    failure: *lexer.Failure,
    max_depth: usize,
    pos: usize = 0,
    depth: usize = 0,
    loops: usize = 0,
    /// Inside an `if` (jinja2's soft frame): an unknown filter or test fails only when run.
    soft: bool = false,

    fn fail(p: *Parser, comptime fmt: []const u8, args: anytype) Error {
        p.failure.* = .{ .message = try std.fmt.allocPrint(p.gpa, fmt, args), .line = p.cur().line };
        return error.TemplateError;
    }

    fn cur(p: *Parser) Token {
        return p.tokens[p.pos];
    }

    fn peek(p: *Parser, n: usize) Token {
        return p.tokens[@min(p.pos + n, p.tokens.len - 1)];
    }

    fn next(p: *Parser) Token {
        const t = p.tokens[p.pos];
        if (t.kind != .eof) p.pos += 1;
        return t;
    }

    fn isOp(p: *Parser, op: []const u8) bool {
        const t = p.cur();
        return t.kind == .op and std.mem.eql(u8, t.text, op);
    }

    fn isName(p: *Parser, name: []const u8) bool {
        const t = p.cur();
        return t.kind == .name and std.mem.eql(u8, t.text, name);
    }

    fn skipOp(p: *Parser, op: []const u8) bool {
        if (!p.isOp(op)) return false;
        _ = p.next();
        return true;
    }

    fn skipName(p: *Parser, name: []const u8) bool {
        if (!p.isName(name)) return false;
        _ = p.next();
        return true;
    }

    fn describe(t: Token) []const u8 {
        return switch (t.kind) {
            .eof => "end of template",
            .var_end => "end of print statement",
            .block_end => "end of statement block",
            .var_begin => "begin of print statement",
            .block_begin => "begin of statement block",
            .string => "string",
            .data => "template data",
            else => t.text,
        };
    }

    fn expectOp(p: *Parser, op: []const u8) Error!void {
        if (!p.skipOp(op)) return p.fail("expected token '{s}', got '{s}'", .{ op, describe(p.cur()) });
    }

    fn expectKind(p: *Parser, kind: lexer.Kind) Error!void {
        if (p.cur().kind != kind) {
            const what = switch (kind) {
                .block_end => "end of statement block",
                .var_end => "end of print statement",
                else => @tagName(kind),
            };
            return p.fail("expected token '{s}', got '{s}'", .{ what, describe(p.cur()) });
        }
        _ = p.next();
    }

    fn expectName(p: *Parser) Error![]const u8 {
        const t = p.cur();
        if (t.kind != .name) return p.fail("expected token 'name', got '{s}'", .{describe(t)});
        _ = p.next();
        return t.text;
    }

    fn enter(p: *Parser) Error!void {
        p.depth += 1;
        if (p.depth > p.max_depth) return p.fail("template nesting exceeds the depth limit of {d}", .{p.max_depth});
    }

    fn leave(p: *Parser) void {
        p.depth -= 1;
    }

    fn new(p: *Parser, e: Expr) Error!*const Expr {
        const ptr = try p.gpa.create(Expr);
        ptr.* = e;
        return ptr;
    }

    // --- statements -----------------------------------------------------------------------

    /// Parses nodes until a `{% name %}` with a name in `end` (left unconsumed, after `{%`).
    fn subparse(p: *Parser, end: []const []const u8) Error![]const Node {
        try p.enter();
        defer p.leave();
        var nodes: std.ArrayListUnmanaged(Node) = .{};
        while (true) {
            const t = p.cur();
            switch (t.kind) {
                .data => {
                    try nodes.append(p.gpa, .{ .text = t.text });
                    _ = p.next();
                },
                .var_begin => {
                    _ = p.next();
                    const e = try p.parseTuple(true, false, &.{});
                    try p.expectKind(.var_end);
                    try nodes.append(p.gpa, .{ .print = e });
                },
                .block_begin => {
                    _ = p.next();
                    const name = p.cur();
                    if (name.kind == .name) for (end) |e| if (std.mem.eql(u8, e, name.text)) return nodes.items;
                    try nodes.append(p.gpa, try p.parseStatement(end));
                },
                .eof => {
                    if (end.len > 0) return p.fail("Unexpected end of template. Jinja was looking for the following tags: '{s}'.", .{end[0]});
                    return nodes.items;
                },
                else => return p.fail("unexpected '{s}'", .{describe(t)}),
            }
        }
    }

    /// Parses the body of a block up to one of `end`, consuming the end tag name.
    fn body(p: *Parser, end: []const []const u8) Error!struct { nodes: []const Node, tag: []const u8 } {
        const nodes = try p.subparse(end);
        return .{ .nodes = nodes, .tag = p.next().text };
    }

    fn parseStatement(p: *Parser, end: []const []const u8) Error!Node {
        const t = p.cur();
        if (t.kind != .name) return p.fail("tag name expected", .{});
        const name = t.text;
        _ = p.next();
        if (std.mem.eql(u8, name, "if")) return p.parseIf();
        if (std.mem.eql(u8, name, "for")) return p.parseFor();
        if (std.mem.eql(u8, name, "set")) return p.parseSet();
        if (std.mem.eql(u8, name, "macro")) return p.parseMacro();
        if (std.mem.eql(u8, name, "call")) return p.parseCallBlock();
        if (std.mem.eql(u8, name, "filter")) return p.parseFilterBlock();
        if (std.mem.eql(u8, name, "generation")) return p.parseGeneration();
        if (std.mem.eql(u8, name, "break") or std.mem.eql(u8, name, "continue")) {
            if (p.loops == 0) return p.fail("'{s}' outside loop", .{name});
            try p.expectKind(.block_end);
            return if (name[0] == 'b') .@"break" else .@"continue";
        }
        if (end.len > 0) return p.fail("Encountered unknown tag '{s}'. Jinja was looking for the following tags: '{s}'.", .{ name, end[0] });
        return p.fail("Encountered unknown tag '{s}'.", .{name});
    }

    fn parseIf(p: *Parser) Error!Node {
        const was_soft = p.soft;
        p.soft = true;
        defer p.soft = was_soft;
        var branches: std.ArrayListUnmanaged(Node.Branch) = .{};
        var otherwise: []const Node = &.{};
        while (true) {
            const cond = try p.parseTuple(false, false, &.{});
            try p.expectKind(.block_end);
            const b = try p.body(&.{ "elif", "else", "endif" });
            try branches.append(p.gpa, .{ .cond = cond, .body = b.nodes });
            if (std.mem.eql(u8, b.tag, "elif")) continue;
            if (std.mem.eql(u8, b.tag, "else")) {
                try p.expectKind(.block_end);
                otherwise = (try p.body(&.{"endif"})).nodes;
            }
            try p.expectKind(.block_end);
            break;
        }
        return .{ .@"if" = .{ .branches = branches.items, .otherwise = otherwise } };
    }

    fn parseTargets(p: *Parser, stop: []const u8) Error![]const []const u8 {
        var names: std.ArrayListUnmanaged([]const u8) = .{};
        const paren = p.skipOp("(");
        while (true) {
            try names.append(p.gpa, try p.expectName());
            if (!p.skipOp(",")) break;
            if (p.isName(stop) or p.isOp(")") or p.isOp("=")) break;
        }
        if (paren) try p.expectOp(")");
        return names.items;
    }

    fn parseFor(p: *Parser) Error!Node {
        const was_soft = p.soft;
        p.soft = false;
        defer p.soft = was_soft;
        const targets = try p.parseTargets("in");
        if (!p.skipName("in")) return p.fail("expected token 'in', got '{s}'", .{describe(p.cur())});
        const iter = try p.parseTuple(false, false, &.{"recursive"});
        var filter: ?*const Expr = null;
        if (p.skipName("if")) filter = try p.parseExpression(true);
        const recursive = p.skipName("recursive");
        try p.expectKind(.block_end);
        p.loops += 1;
        const b = try p.body(&.{ "endfor", "else" });
        p.loops -= 1;
        var otherwise: []const Node = &.{};
        if (std.mem.eql(u8, b.tag, "else")) {
            try p.expectKind(.block_end);
            otherwise = (try p.body(&.{"endfor"})).nodes;
        }
        try p.expectKind(.block_end);
        const f = try p.gpa.create(ast.For);
        f.* = .{ .targets = targets, .iter = iter, .filter = filter, .body = b.nodes, .otherwise = otherwise, .recursive = recursive };
        return .{ .@"for" = f };
    }

    fn parseSet(p: *Parser) Error!Node {
        var target: ast.Target = undefined;
        if (p.cur().kind == .name and p.peek(1).kind == .op and std.mem.eql(u8, p.peek(1).text, ".")) {
            const object = p.next().text;
            _ = p.next();
            target = .{ .attr = .{ .object = object, .name = try p.expectName() } };
        } else {
            target = .{ .names = try p.parseTargets("=") };
        }
        if (p.skipOp("=")) {
            const value = try p.parseTuple(true, false, &.{});
            try p.expectKind(.block_end);
            return .{ .set = .{ .target = target, .value = value } };
        }
        var filter: ?*const Expr = null;
        if (p.isOp("|")) filter = try p.parseFilterChain(null);
        try p.expectKind(.block_end);
        const was_soft = p.soft;
        p.soft = false;
        defer p.soft = was_soft;
        const b = try p.body(&.{"endset"});
        try p.expectKind(.block_end);
        return .{ .set_block = .{ .target = target, .filter = filter, .body = b.nodes } };
    }

    fn parseParams(p: *Parser) Error![]const ast.Param {
        var params: std.ArrayListUnmanaged(ast.Param) = .{};
        try p.expectOp("(");
        while (!p.isOp(")")) {
            if (params.items.len > 0) try p.expectOp(",");
            if (p.isOp(")")) break;
            const name = try p.expectName();
            const default = if (p.skipOp("=")) try p.parseExpression(true) else null;
            try params.append(p.gpa, .{ .name = name, .default = default });
        }
        _ = p.next();
        return params.items;
    }

    fn parseMacro(p: *Parser) Error!Node {
        const was_soft = p.soft;
        const loops = p.loops;
        p.soft = false;
        p.loops = 0;
        defer {
            p.soft = was_soft;
            p.loops = loops;
        }
        const name = try p.expectName();
        const params = try p.parseParams();
        try p.expectKind(.block_end);
        const b = try p.body(&.{"endmacro"});
        if (p.cur().kind == .name) _ = p.next(); // `{% endmacro name %}`
        try p.expectKind(.block_end);
        const m = try p.gpa.create(ast.Macro);
        m.* = .{ .name = name, .params = params, .body = b.nodes };
        return .{ .macro = m };
    }

    fn parseCallBlock(p: *Parser) Error!Node {
        const was_soft = p.soft;
        const loops = p.loops;
        p.soft = false;
        p.loops = 0;
        defer {
            p.soft = was_soft;
            p.loops = loops;
        }
        const params: []const ast.Param = if (p.isOp("(")) try p.parseParams() else &.{};
        const call = try p.parseExpression(true);
        if (call.* != .call) return p.fail("expected call", .{});
        try p.expectKind(.block_end);
        const b = try p.body(&.{"endcall"});
        try p.expectKind(.block_end);
        const m = try p.gpa.create(ast.Macro);
        m.* = .{ .name = "caller", .params = params, .body = b.nodes };
        return .{ .call_block = .{ .call = call, .caller = m } };
    }

    fn parseFilterBlock(p: *Parser) Error!Node {
        const was_soft = p.soft;
        p.soft = false;
        defer p.soft = was_soft;
        const filter = try p.parseFilterChain(null);
        try p.expectKind(.block_end);
        const b = try p.body(&.{"endfilter"});
        try p.expectKind(.block_end);
        return .{ .filter_block = .{ .filter = filter, .body = b.nodes } };
    }

    /// HF's AssistantTracker `{% generation %}`: renders its body unchanged.
    fn parseGeneration(p: *Parser) Error!Node {
        try p.expectKind(.block_end);
        const b = try p.body(&.{"endgeneration"});
        try p.expectKind(.block_end);
        return .{ .@"if" = .{ .branches = try p.gpa.dupe(Node.Branch, &.{.{ .cond = try p.new(.{ .constant = .{ .boolean = true } }), .body = b.nodes }}), .otherwise = &.{} } };
    }

    // --- expressions ----------------------------------------------------------------------

    fn isTupleEnd(p: *Parser, extra_end: []const []const u8) bool {
        const t = p.cur();
        if (t.kind == .var_end or t.kind == .block_end or t.kind == .eof) return true;
        if (t.kind == .op and std.mem.eql(u8, t.text, ")")) return true;
        if (t.kind == .name) for (extra_end) |e| if (std.mem.eql(u8, e, t.text)) return true;
        return false;
    }

    fn parseTuple(p: *Parser, with_condexpr: bool, explicit_parens: bool, extra_end: []const []const u8) Error!*const Expr {
        var items: std.ArrayListUnmanaged(*const Expr) = .{};
        var is_tuple = false;
        while (true) {
            if (items.items.len > 0) try p.expectOp(",");
            if (p.isTupleEnd(extra_end)) break;
            try items.append(p.gpa, try p.parseExpression(with_condexpr));
            if (p.isOp(",")) is_tuple = true else break;
        }
        if (!is_tuple) {
            if (items.items.len > 0) return items.items[0];
            if (!explicit_parens) return p.fail("Expected an expression, got '{s}'", .{describe(p.cur())});
        }
        return p.new(.{ .tuple = items.items });
    }

    fn parseExpression(p: *Parser, with_condexpr: bool) Error!*const Expr {
        try p.enter();
        defer p.leave();
        if (!with_condexpr) return p.parseOr();
        var e = try p.parseOr();
        while (p.skipName("if")) {
            const was_soft = p.soft;
            p.soft = true;
            defer p.soft = was_soft;
            const cond = try p.parseOr();
            const otherwise = if (p.skipName("else")) try p.parseExpression(true) else null;
            e = try p.new(.{ .cond = .{ .cond = cond, .then = e, .otherwise = otherwise } });
        }
        return e;
    }

    fn parseOr(p: *Parser) Error!*const Expr {
        var left = try p.parseAnd();
        while (p.skipName("or")) left = try p.new(.{ .or_ = .{ .left = left, .right = try p.parseAnd() } });
        return left;
    }

    fn parseAnd(p: *Parser) Error!*const Expr {
        var left = try p.parseNot();
        while (p.skipName("and")) left = try p.new(.{ .and_ = .{ .left = left, .right = try p.parseNot() } });
        return left;
    }

    fn parseNot(p: *Parser) Error!*const Expr {
        if (p.skipName("not")) {
            try p.enter();
            defer p.leave();
            return p.new(.{ .not_ = try p.parseNot() });
        }
        return p.parseCompare();
    }

    fn parseCompare(p: *Parser) Error!*const Expr {
        const first = try p.parseMath1();
        var ops: std.ArrayListUnmanaged(Expr.Operand) = .{};
        while (true) {
            const t = p.cur();
            var op: ?ast.CmpOp = null;
            if (t.kind == .op) {
                const map = [_]struct { []const u8, ast.CmpOp }{ .{ "==", .eq }, .{ "!=", .ne }, .{ "<", .lt }, .{ "<=", .le }, .{ ">", .gt }, .{ ">=", .ge } };
                for (map) |m| if (std.mem.eql(u8, t.text, m[0])) {
                    op = m[1];
                };
                if (op != null) _ = p.next();
            } else if (p.isName("in")) {
                _ = p.next();
                op = .in;
            } else if (p.isName("not") and p.peek(1).kind == .name and std.mem.eql(u8, p.peek(1).text, "in")) {
                _ = p.next();
                _ = p.next();
                op = .not_in;
            }
            const o = op orelse break;
            try ops.append(p.gpa, .{ .op = o, .expr = try p.parseMath1() });
        }
        if (ops.items.len == 0) return first;
        return p.new(.{ .compare = .{ .first = first, .ops = ops.items } });
    }

    fn binary(p: *Parser, op: ast.BinOp, left: *const Expr, right: *const Expr) Error!*const Expr {
        return p.new(.{ .binary = .{ .op = op, .left = left, .right = right } });
    }

    fn parseMath1(p: *Parser) Error!*const Expr {
        var left = try p.parseConcat();
        while (true) {
            if (p.skipOp("+")) {
                left = try p.binary(.add, left, try p.parseConcat());
            } else if (p.skipOp("-")) {
                left = try p.binary(.sub, left, try p.parseConcat());
            } else break;
        }
        return left;
    }

    fn parseConcat(p: *Parser) Error!*const Expr {
        var left = try p.parseMath2();
        while (p.skipOp("~")) left = try p.binary(.concat, left, try p.parseMath2());
        return left;
    }

    fn parseMath2(p: *Parser) Error!*const Expr {
        var left = try p.parsePow();
        while (true) {
            const op: ast.BinOp = if (p.isOp("*")) .mul else if (p.isOp("/")) .div else if (p.isOp("//")) .floordiv else if (p.isOp("%")) .mod else break;
            _ = p.next();
            left = try p.binary(op, left, try p.parsePow());
        }
        return left;
    }

    fn parsePow(p: *Parser) Error!*const Expr {
        var left = try p.parseUnary(true);
        while (p.skipOp("**")) left = try p.binary(.pow, left, try p.parseUnary(true));
        return left;
    }

    fn parseUnary(p: *Parser, with_filter: bool) Error!*const Expr {
        var e: *const Expr = undefined;
        if (p.isOp("-") or p.isOp("+")) {
            const neg = p.next().text[0] == '-';
            try p.enter();
            defer p.leave();
            const operand = try p.parseUnary(false);
            e = try p.new(if (neg) .{ .neg = operand } else .{ .pos = operand });
        } else {
            e = try p.parsePrimary();
        }
        e = try p.parsePostfix(e);
        if (with_filter) e = try p.parseFilterExpr(e);
        return e;
    }

    fn parsePrimary(p: *Parser) Error!*const Expr {
        const t = p.cur();
        switch (t.kind) {
            .name => {
                _ = p.next();
                const consts = [_]struct { []const u8, Value }{
                    .{ "true", .{ .boolean = true } },   .{ "True", .{ .boolean = true } },
                    .{ "false", .{ .boolean = false } }, .{ "False", .{ .boolean = false } },
                    .{ "none", .none },                  .{ "None", .none },
                };
                for (consts) |c| if (std.mem.eql(u8, t.text, c[0])) return p.new(.{ .constant = c[1] });
                return p.new(.{ .name = t.text });
            },
            .string => {
                _ = p.next();
                if (p.cur().kind != .string) return p.new(.{ .constant = Value.str(t.text) });
                var buf: std.ArrayListUnmanaged(u8) = .{};
                try buf.appendSlice(p.gpa, t.text);
                while (p.cur().kind == .string) try buf.appendSlice(p.gpa, p.next().text);
                return p.new(.{ .constant = Value.str(buf.items) });
            },
            .int => {
                _ = p.next();
                return p.new(.{ .constant = .{ .int = t.int } });
            },
            .float => {
                _ = p.next();
                return p.new(.{ .constant = .{ .float = t.float } });
            },
            .op => {
                if (p.skipOp("(")) {
                    const e = try p.parseTuple(true, true, &.{});
                    try p.expectOp(")");
                    return e;
                }
                if (p.skipOp("[")) {
                    var items: std.ArrayListUnmanaged(*const Expr) = .{};
                    while (!p.isOp("]")) {
                        if (items.items.len > 0) try p.expectOp(",");
                        if (p.isOp("]")) break;
                        try items.append(p.gpa, try p.parseExpression(true));
                    }
                    _ = p.next();
                    return p.new(.{ .list = items.items });
                }
                if (p.skipOp("{")) {
                    var items: std.ArrayListUnmanaged(Expr.DictItem) = .{};
                    while (!p.isOp("}")) {
                        if (items.items.len > 0) try p.expectOp(",");
                        if (p.isOp("}")) break;
                        const key = try p.parseExpression(true);
                        try p.expectOp(":");
                        try items.append(p.gpa, .{ .key = key, .value = try p.parseExpression(true) });
                    }
                    _ = p.next();
                    return p.new(.{ .dict = items.items });
                }
            },
            else => {},
        }
        return p.fail("unexpected '{s}'", .{describe(t)});
    }

    fn parsePostfix(p: *Parser, start: *const Expr) Error!*const Expr {
        var e = start;
        while (true) {
            if (p.isOp(".") or p.isOp("[")) {
                e = try p.parseSubscript(e);
            } else if (p.isOp("(")) {
                e = try p.new(.{ .call = .{ .func = e, .args = try p.parseArgs() } });
            } else break;
        }
        return e;
    }

    fn parseFilterExpr(p: *Parser, start: *const Expr) Error!*const Expr {
        var e = start;
        while (true) {
            if (p.isOp("|")) {
                e = try p.parseFilterChain(e);
            } else if (p.isName("is")) {
                e = try p.parseTest(e);
            } else if (p.isOp("(")) {
                e = try p.new(.{ .call = .{ .func = e, .args = try p.parseArgs() } });
            } else break;
        }
        return e;
    }

    fn parseSubscript(p: *Parser, obj: *const Expr) Error!*const Expr {
        if (p.skipOp(".")) {
            const t = p.next();
            if (t.kind == .name) return p.new(.{ .getattr = .{ .obj = obj, .name = t.text } });
            if (t.kind == .int) return p.new(.{ .getitem = .{ .obj = obj, .index = try p.new(.{ .constant = .{ .int = t.int } }) } });
            return p.fail("expected name or number", .{});
        }
        _ = p.next(); // '['
        try p.enter();
        defer p.leave();
        var start: ?*const Expr = null;
        if (!p.isOp(":")) {
            start = try p.parseExpression(true);
            if (!p.isOp(":")) {
                var index = start.?;
                if (p.isOp(",")) { // x[a, b]: a tuple key
                    var items: std.ArrayListUnmanaged(*const Expr) = .{};
                    try items.append(p.gpa, index);
                    while (p.skipOp(",")) {
                        if (p.isOp("]")) break;
                        try items.append(p.gpa, try p.parseExpression(true));
                    }
                    index = try p.new(.{ .tuple = items.items });
                }
                try p.expectOp("]");
                return p.new(.{ .getitem = .{ .obj = obj, .index = index } });
            }
        }
        _ = p.next(); // ':'
        var stop: ?*const Expr = null;
        var step: ?*const Expr = null;
        if (!p.isOp("]") and !p.isOp(":")) stop = try p.parseExpression(true);
        if (p.skipOp(":")) {
            if (!p.isOp("]")) step = try p.parseExpression(true);
        }
        try p.expectOp("]");
        return p.new(.{ .slice = .{ .obj = obj, .start = start, .stop = stop, .step = step } });
    }

    fn parseArgs(p: *Parser) Error!ast.Args {
        try p.enter();
        defer p.leave();
        try p.expectOp("(");
        var positional: std.ArrayListUnmanaged(*const Expr) = .{};
        var keyword: std.ArrayListUnmanaged(ast.Kwarg) = .{};
        var first = true;
        while (!p.isOp(")")) {
            if (!first) try p.expectOp(",");
            first = false;
            if (p.isOp(")")) break;
            if (p.isOp("*") or p.isOp("**")) return p.fail("*args and **kwargs are not supported", .{});
            if (p.cur().kind == .name and p.peek(1).kind == .op and std.mem.eql(u8, p.peek(1).text, "=")) {
                const name = p.next().text;
                _ = p.next();
                try keyword.append(p.gpa, .{ .name = name, .value = try p.parseExpression(true) });
            } else {
                if (keyword.items.len > 0) return p.fail("invalid syntax for function call expression", .{});
                try positional.append(p.gpa, try p.parseExpression(true));
            }
        }
        _ = p.next();
        return .{ .positional = positional.items, .keyword = keyword.items };
    }

    fn dottedName(p: *Parser) Error![]const u8 {
        var name = try p.expectName();
        while (p.isOp(".") and p.peek(1).kind == .name) {
            _ = p.next();
            name = try std.fmt.allocPrint(p.gpa, "{s}.{s}", .{ name, p.next().text });
        }
        return name;
    }

    /// `| f(args) | g ...` applied to `value` (null in a filter block or `set` block head).
    fn parseFilterChain(p: *Parser, value: ?*const Expr) Error!*const Expr {
        var e = value;
        var first = value == null and !p.isOp("|"); // `{% filter f %}` starts without a pipe
        while (first or p.skipOp("|")) {
            first = false;
            const name = try p.dottedName();
            if (!p.soft and !builtins.isFilter(name)) return p.fail("No filter named '{s}'.", .{name});
            const args: ast.Args = if (p.isOp("(")) try p.parseArgs() else .{};
            e = try p.new(.{ .filter = .{ .value = e, .name = name, .args = args } });
        }
        return e.?;
    }

    fn parseTest(p: *Parser, value: *const Expr) Error!*const Expr {
        _ = p.next(); // 'is'
        const negated = p.skipName("not");
        const name = try p.dottedName();
        if (!p.soft and !builtins.isTest(name)) return p.fail("No test named '{s}'.", .{name});
        var args: ast.Args = .{};
        const t = p.cur();
        if (p.isOp("(")) {
            args = try p.parseArgs();
        } else if ((t.kind == .name or t.kind == .string or t.kind == .int or t.kind == .float or p.isOp("[") or p.isOp("{")) and
            !(p.isName("else") or p.isName("or") or p.isName("and")))
        {
            if (p.isName("is")) return p.fail("You cannot chain multiple tests with is", .{});
            try p.enter();
            defer p.leave();
            const arg = try p.parsePostfix(try p.parsePrimary());
            args = .{ .positional = try p.gpa.dupe(*const Expr, &.{arg}) };
        }
        const e = try p.new(.{ .@"test" = .{ .value = value, .name = name, .args = args } });
        return if (negated) p.new(.{ .not_ = e }) else e;
    }
};

test "parses precedence and statements" {
    var arena = std.heap.ArenaAllocator.init(std.testing.allocator);
    defer arena.deinit();
    var failure: lexer.Failure = .{};
    const nodes = try parse(arena.allocator(), "{% for a, b in x if a %}{{ -a ** 2 | abs }}{% else %}no{% endfor %}", 64, &failure);
    try std.testing.expectEqual(@as(usize, 1), nodes.len);
    try std.testing.expectEqual(@as(usize, 2), nodes[0].@"for".targets.len);
    try std.testing.expectError(error.TemplateError, parse(arena.allocator(), "{{ (" ** 100 ++ "1" ++ ")" ** 100 ++ " }}", 64, &failure));
    try std.testing.expectError(error.TemplateError, parse(arena.allocator(), "{% if x %}", 64, &failure));
}
